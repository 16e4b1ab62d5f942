"""A run on disk: weights, optimizer state, settings, history and sampling state in one file.

Written atomically (a temporary file in the same folder, then a rename) with `torch.save`, read with
`torch.load(weights_only=True)`, so loading never unpickles anything but tensors and plain data.
"""
from __future__ import annotations

import os
import tempfile
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import nn

from . import __version__

if TYPE_CHECKING:
    from .run import Run

FORMAT = "trainlab-run/1"


def state(run: Run) -> dict[str, Any]:
    """Everything a run needs to continue exactly, as tensors and plain data (call between two steps)."""
    return {
        "format": FORMAT,
        "version": __version__,
        "model_spec": list(run.model_spec) if run.model_spec else None,
        "data_spec": list(run.data.spec) if run.data.spec else None,
        "settings": {k: getattr(run, k) for k in run.SETTABLE},
        "optimizer_hparams": run.optimizer_settings(),
        "seed": run.seed,
        "model_state": run.model.state_dict(),
        "initial_state": run.initial_state,
        "optimizer_state": run.torch_optimizer.state_dict(),
        "history": run.history.columns(),
        "step": run.steps,
        "elapsed": run.elapsed,
        "generator": run.sampler_generator.get_state(),
        "noise_generator": run.noise.generator.get_state(),
        "batches": run.batches.state() if hasattr(run.batches, "state") else None,
        "schedule": list(run.schedule),
    }


def write(ckpt: dict[str, Any], path: str | os.PathLike) -> None:
    """`ckpt` to `path` atomically: a reader sees the old file or the new one, never half of one."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".trainlab-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(ckpt, f)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def read(path: str | os.PathLike) -> dict[str, Any]:
    """A checkpoint's contents, refused (ValueError naming the file) unless it is a trainlab run."""
    try:
        ckpt = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    except OSError:
        raise
    except Exception as e:  # not a torch file, or one holding objects other than tensors and plain data
        raise ValueError(f"{path} is not a trainlab run (expected format {FORMAT!r}); "
                         f"it was not loaded ({type(e).__name__})") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ValueError(f"{path} is not a trainlab run (expected format {FORMAT!r})")
    return ckpt


def load(cls: type[Run], path: str | os.PathLike, model: nn.Module | None = None, data: Any = None,
         loss: Callable | None = None, device: str | torch.device = "auto", **kwargs) -> Run:
    """A Run rebuilt from a checkpoint, ready to continue where it stopped."""
    ckpt = read(path)
    if model is None:
        if ckpt["model_spec"] is None:
            raise ValueError("this run trained your own model: pass model=<a fresh instance of it>")
        model = tuple(ckpt["model_spec"])
    if data is None:
        if ckpt["data_spec"] is None:
            raise ValueError("this run trained on your own data: pass data=<the same data>")
        data = tuple(ckpt["data_spec"])
    run = cls(model=model, data=data, loss=loss, seed=ckpt["seed"], device=device,
              **ckpt["settings"], **ckpt["optimizer_hparams"], **{"schedule": ckpt.get("schedule", "constant"), **kwargs})
    run.restore(ckpt)
    return run
