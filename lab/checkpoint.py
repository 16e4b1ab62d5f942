"""A run on disk: weights, optimizer state, settings, history and sampling state in one file.

Written atomically (a temporary file in the same folder, then a rename) with `torch.save`, read with
`torch.load(weights_only=True)`, so loading never unpickles anything but tensors and plain data. A
checksum over everything in the file is stored with it: a file damaged after it was written (flipped
bytes inside a weight tensor load without any error from torch) is refused, naming the file. A
temporary file left by a process killed mid-save is removed by the next save to the same place.
"""
from __future__ import annotations

import copy
import glob
import hashlib
import os
import tempfile
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch
from torch import nn

from . import __version__

if TYPE_CHECKING:
    from .run import Run

FORMAT = "trainlab-run/1"
REQUIRED = ("model_spec", "data_spec", "settings", "optimizer_hparams", "seed", "model_state", "initial_state",
            "optimizer_state", "history", "step", "elapsed", "generator", "batches")


def state(run: Run) -> dict[str, Any]:
    """Everything a run needs to continue exactly, as tensors and plain data: copies, taken between two
    steps, so training may go on while they are written."""
    return copy.deepcopy({
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
        "schedule_start": run.schedule_start,
        "event": run.pending_event,
        "pruning": run.pruning,  # None, or the Sparsifier's arguments; masks are buffers in model_state
        "pruning_state": run.pruning_state.sparsifier.state() if run.pruning_state is not None else None,
    })


def _feed(h, obj: Any) -> None:
    """Everything in a checkpoint, in order, into a hash: tensors by their bytes, the rest by value."""
    if torch.is_tensor(obj):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, dict):
        h.update(b"{%d" % len(obj))
        for k, v in obj.items():
            _feed(h, k)
            _feed(h, v)
    elif isinstance(obj, (list, tuple)):
        numeric = obj and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in obj)
        h.update(b"[%d" % len(obj))
        if numeric:  # history columns: thousands of floats, hashed as one array
            h.update(np.asarray(obj, dtype=np.float64).tobytes())
        else:
            for v in obj:
                _feed(h, v)
    else:
        h.update(repr(obj).encode())


def checksum(ckpt: dict[str, Any]) -> str:
    h = hashlib.blake2b(digest_size=16)
    _feed(h, {k: v for k, v in ckpt.items() if k != "checksum"})
    return h.hexdigest()


def _stale(path: str) -> list[str]:
    """Temporary files of earlier saves to `path` whose writer is gone (killed mid-save)."""
    folder, base = os.path.split(os.path.abspath(path))
    out = []
    for tmp in glob.glob(os.path.join(folder, glob.escape(f".trainlab-{base}.") + "*.tmp")):
        try:
            pid = int(os.path.basename(tmp)[len(f".trainlab-{base}."):].split(".")[0])
        except ValueError:
            continue
        if pid != os.getpid() and not _alive(pid):
            out.append(tmp)
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def write(ckpt: dict[str, Any], path: str | os.PathLike) -> None:
    """`ckpt` (with its checksum) to `path` atomically: a reader sees the old file or the new one, never half."""
    path = os.fspath(path)
    for tmp in _stale(path):
        try:
            os.unlink(tmp)
        except OSError:
            pass
    ckpt = {**ckpt, "checksum": checksum(ckpt)}
    folder, base = os.path.split(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".trainlab-{base}.{os.getpid()}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(ckpt, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def read(path: str | os.PathLike) -> dict[str, Any]:
    """A checkpoint's contents, refused with a ValueError naming the file and what is wrong with it."""
    try:
        ckpt = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        raise
    except Exception as e:  # truncated, damaged, not a torch file, or holding objects other than tensors and data
        what = "damaged or not a trainlab run" if not isinstance(e, __import__("pickle").UnpicklingError) else \
            "not a trainlab run"
        raise ValueError(f"{path} is {what} (expected format {FORMAT!r}); it was not loaded: "
                         f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ValueError(f"{path} is not a trainlab run (expected format {FORMAT!r})")
    missing = [k for k in REQUIRED if k not in ckpt]
    if missing:
        raise ValueError(f"{path} is not a whole trainlab run: it lacks {', '.join(missing)}")
    if "checksum" in ckpt and checksum(ckpt) != ckpt["checksum"]:
        raise ValueError(f"{path} is damaged: its contents do not match the checksum written with them "
                         f"(changed after it was saved); it was not loaded")
    _consistent(ckpt, path)
    return ckpt


def _consistent(ckpt: dict[str, Any], path) -> None:
    step, history = ckpt["step"], ckpt["history"]
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise ValueError(f"{path} is not a consistent run: step={step!r} (a whole number >= 0)")
    steps = history.get("step", []) if isinstance(history, dict) else None
    if steps is None:
        raise ValueError(f"{path} is not a consistent run: its history is not a table of columns")
    last = int(max(steps)) if steps else 0
    if len(steps) > step or last != step:
        raise ValueError(f"{path} is not a consistent run: it says step {step} but its history has {len(steps)} "
                         f"rows ending at step {last}")


def load(cls: type[Run], path: str | os.PathLike, model: nn.Module | None = None, data: Any = None,
         loss: Callable | None = None, device: str | torch.device = "auto", **kwargs) -> Run:
    """A Run rebuilt from a checkpoint, ready to continue where it stopped."""
    ckpt = read(path)
    if model is None:
        if ckpt["model_spec"] is None:
            raise ValueError(f"{path}: this run trained your own model: pass model=<a fresh instance of it>")
        model = tuple(ckpt["model_spec"])
    if data is None:
        if ckpt["data_spec"] is None:
            raise ValueError(f"{path}: this run trained on your own data: pass data=<the same data>")
        data = tuple(ckpt["data_spec"])
    run = cls(model=model, data=data, loss=loss, seed=ckpt["seed"], device=device,
              **ckpt["settings"], **ckpt["optimizer_hparams"],
              **{"schedule": ckpt.get("schedule", "constant"), "pruning": ckpt.get("pruning"), **kwargs})
    try:
        run.restore(ckpt)
    except (RuntimeError, KeyError, ValueError) as e:
        raise ValueError(f"{path} does not fit this model: {type(e).__name__}: {str(e).splitlines()[0]}") from e
    return run
