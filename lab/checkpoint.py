"""A run on disk: weights, optimizer state, settings, events, history and sampling state.

The files are those of a run in `trainlab.store` (see `trainlab.store.format`): JSON, safetensors and
Parquet, so loading never unpickles anything. `Run.save(path)` puts them in one zip file (stored, not
compressed: a weight's bytes sit in the file as they are) with the manifest, written atomically (a
temporary file in the same folder, fsync, then a rename); a run folder of a store loads too. The
manifest holds every file's hash: a file damaged after it was written (flipped bytes inside a weight
tensor load without any error from safetensors) is refused, naming the file. A temporary file left by a
process killed mid-save is removed by the next save to the same place.
"""
from __future__ import annotations

import copy
import io
import json
import os
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import pandas as pd
import torch
from torch import nn

from . import __version__
from .store import format as fmt
from .store.files import remove_stale, write_atomic

if TYPE_CHECKING:
    from .divergence import RestorePoint
    from .run import Run

FORMAT = fmt.FORMAT


def state(run: Run, history: bool = True) -> dict[str, Any]:
    """Everything a run needs to continue exactly, as tensors and plain data: copies, taken between two
    steps, so training may go on while they are written (`history=False`: without the history's rows)."""
    return copy.deepcopy({
        "format": FORMAT,
        "version": __version__,
        "model_spec": list(run.model_spec) if run.model_spec else None,
        "data_spec": list(run.data.spec) if run.data.spec else None,
        "settings": {k: getattr(run, k) for k in run.SETTABLE},
        "optimizer_hparams": run.optimizer_settings(),
        "initial_settings": run.initial_settings,
        "changes": run.changes,
        "parent": run.parent,
        "seed": run.seed,
        "model_state": run.model.state_dict(),
        "initial_state": run.initial_state,
        "optimizer_state": run.torch_optimizer.state_dict(),
        "history": run.history.columns() if history else {},
        "snapshots": _snapshots(run),
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
        "pruning_runtime": {"churn": run.pruning_state.churn, "collapsed": run.pruning_state.collapsed}
        if run.pruning_state is not None else None,
        "probes": [[type(p).__name__, p.state()] for p in run.probes],
    })


def at_point(run: Run, point: RestorePoint) -> dict[str, Any]:
    """What `state` holds, as the run was at one of its restore points (a fork of the live run): copies of the
    point's weights, optimizer and sampling state, the changes in force there, the history and snapshots up to
    its step. Taken between two steps (the caller holds the run's lock); the settings are left to be replayed
    from the changes (`trainlab.store.fork.start`), the probes start afresh."""
    rows = [r for r in run.history.rows() if r["step"] <= point.step]
    frame = pd.DataFrame.from_records(rows)
    extra = point.run
    return {
        "model_spec": list(run.model_spec) if run.model_spec else None,
        "data_spec": list(run.data.spec) if run.data.spec else None,
        "initial_settings": run.initial_settings,
        "changes": run.changes[: extra["changes"]],
        "seed": run.seed,
        "model_state": {k: v.clone() for k, v in point.model.items()},
        "initial_state": {k: v.clone() for k, v in run.initial_state.items()},
        "optimizer_state": copy.deepcopy(point.optimizer),
        "history": {c: frame[c].tolist() for c in frame.columns},
        "snapshots": {k: v for k, v in _snapshots(run).items() if v[0] <= point.step},
        "step": point.step,
        "elapsed": float(rows[-1]["time"]) if rows else 0.0,
        "generator": extra["generator"].clone(),
        "noise_generator": extra["noise_generator"].clone(),
        "batches": extra["batches"],
        "event": None,
        "pruning_state": extra["pruning_state"],
        "pruning_runtime": extra["pruning_runtime"],
        "probes": [],
    }


def _snapshots(run: Run) -> dict[str, list]:
    """The history's snapshots that are arrays of numbers (or dicts and lists of them): [step, value] by name.
    Others (a live job's objects) are measurements to redo, not state: they are left out."""
    out = {}
    for name in run.history.snapshot_names():
        step, value = run.history.snapshot(name)
        try:
            fmt.pack(value, {}, name)
        except ValueError:
            continue
        out[name] = [step, value]
    return out


def files(ckpt: dict[str, Any], history=None) -> tuple[dict[str, bytes], dict]:
    """The files of a checkpoint and its manifest (as a dict)."""
    out = fmt.encode(ckpt, history)
    return out, fmt.manifest(out, ckpt, history, status="complete")


def write(ckpt: dict[str, Any], path: str | os.PathLike) -> None:
    """`ckpt` to the zip file `path` atomically: a reader sees the old file or the new one, never half."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise ValueError(f"{path} is a folder: Run.save writes one file (a store keeps folders: trainlab.store)")
    remove_stale(path)
    contents, manifest = files(ckpt)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for name, data in contents.items():
            z.writestr(name, data)
        z.writestr(fmt.MANIFEST, fmt.dumps(manifest))  # last, as in a store's folder
    write_atomic(path, buf.getvalue())


def read(path: str | os.PathLike) -> dict[str, Any]:
    """A checkpoint's contents, refused with a ValueError naming the file and what is wrong with it."""
    where = os.fspath(path)
    if os.path.isdir(where):
        from .store import Store
        folder = Path(where).resolve()
        return Store(folder.parent, create=False).checkpoint(folder.name)
    try:
        z = zipfile.ZipFile(where)
    except (FileNotFoundError, PermissionError):
        raise
    except (zipfile.BadZipFile, OSError, ValueError) as e:  # truncated, damaged or another kind of file
        raise ValueError(f"{where} is damaged or not a trainlab run (expected format {FORMAT!r}); it was not "
                         f"loaded: {type(e).__name__}: {e}") from e
    with z:
        names = set(z.namelist())
        if fmt.MANIFEST not in names:
            hint = " (a torch.save/pickle file: trainlab never unpickles)" if any(
                n.endswith(".pkl") for n in names) else ""
            raise ValueError(f"{where} is not a trainlab run{hint} (expected format {FORMAT!r})")

        def get(name: str) -> bytes | None:
            try:
                return z.read(name) if name in names else None
            except zipfile.BadZipFile as e:  # the zip's own CRC caught it before the manifest's hash could
                raise ValueError(f"{where} is damaged: its contents do not match the checksum written with them "
                                 f"({name} changed after it was saved); it was not loaded") from e
            except (OSError, ValueError, EOFError) as e:
                raise ValueError(f"{where} is damaged or not a trainlab run: {name}: {e}") from e

        try:
            manifest = json.loads(get(fmt.MANIFEST))
        except ValueError as e:
            raise ValueError(f"{where} is damaged or not a trainlab run: its manifest is not JSON ({e})") from e
        ckpt = fmt.decode(get, fmt.check_manifest(manifest, where), where)
    consistent(ckpt, where)
    return ckpt


def consistent(ckpt: dict[str, Any], path) -> None:
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


def build(cls: type[Run], ckpt: dict[str, Any], where, model: nn.Module | None = None, data: Any = None,
          loss: Callable | None = None, device: str | torch.device = "auto", **kwargs) -> Run:
    """A Run rebuilt from a checkpoint's contents, ready to continue where it stopped."""
    if model is None:
        if ckpt["model_spec"] is None:
            raise ValueError(f"{where}: this run trained your own model: pass model=<a fresh instance of it>")
        model = tuple(ckpt["model_spec"])
    if data is None:
        if ckpt["data_spec"] is None:
            raise ValueError(f"{where}: this run trained on your own data: pass data=<the same data>")
        data = tuple(ckpt["data_spec"])
    run = cls(model=model, data=data, loss=loss, seed=ckpt["seed"], device=device,
              **ckpt["settings"], **ckpt["optimizer_hparams"],
              **{"schedule": ckpt.get("schedule", "constant"), "pruning": ckpt.get("pruning"), **kwargs})
    try:
        run.restore(ckpt)
    except (RuntimeError, KeyError, ValueError) as e:
        raise ValueError(f"{where} does not fit this model: {type(e).__name__}: {str(e).splitlines()[0]}") from e
    return run


def load(cls: type[Run], path: str | os.PathLike, model: nn.Module | None = None, data: Any = None,
         loss: Callable | None = None, device: str | torch.device = "auto", **kwargs) -> Run:
    """A Run rebuilt from a file written by `Run.save` (or a store's run folder)."""
    return build(cls, read(path), os.fspath(path), model=model, data=data, loss=loss, device=device, **kwargs)
