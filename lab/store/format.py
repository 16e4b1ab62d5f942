"""A checkpoint (the dict of `trainlab.checkpoint.state`) as files, and back, without pickling anything.

    manifest.json          format, step, every other file's size and BLAKE2b hash, a summary for listings
    settings.json          specs, settings, seed, counters, schedule, pruning; tensors referenced by name
    events.json            every mid-run change: [{"step", "event"}] from the history, [{"step", "set"}] from run.set
    weights.safetensors    model/<k>, initial/<k> (step 0) and rewind/<k> (lottery-ticket rewind point)
    optimizer.safetensors  the optimizer's per-parameter state, flattened; optimizer.json is the rest of it
    state.safetensors      sampling state (generators, the epoch's permutation) and array snapshots
    history.parquet        the history's rows

JSON cannot tell a tuple from a list nor hold a dict with integer keys (an optimizer's state is keyed by
parameter index), so the tree codec tags those: {"__tuple__": [...]}, {"__items__": [[k, v], ...]},
{"__tensor__": key}. Everything else is plain JSON a person can read.
"""
from __future__ import annotations

import io
import json
import math
import time
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import safetensors.torch
import torch

from .files import digest

FORMAT = "trainlab-run/2"
MANIFEST = "manifest.json"
FILES = ("settings.json", "events.json", "weights.safetensors", "optimizer.safetensors", "optimizer.json",
         "state.safetensors", "history.parquet")
REQUIRED = ("model_spec", "data_spec", "settings", "optimizer_hparams", "seed", "step", "elapsed", "generator",
            "batches")
TAGS = ("__tensor__", "__tuple__", "__items__")
NOT_METRICS = ("step", "epoch", "time", "event")


# ---- the tree codec -------------------------------------------------------------------------------
def pack(obj: Any, tensors: dict[str, torch.Tensor] | None, path: str) -> Any:
    """`obj` as JSON data; its tensors moved to `tensors` (refused when that is None), named by where they sat."""
    if torch.is_tensor(obj):
        if tensors is None:
            raise ValueError(f"{path}: a tensor where only plain data is saved")
        key = path if path not in tensors else f"{path}#{len(tensors)}"
        tensors[key] = obj.detach().cpu().contiguous().clone()  # clone: safetensors refuses shared storage
        return {"__tensor__": key}
    if isinstance(obj, np.ndarray) and obj.dtype.kind in "biuf":
        return pack(torch.from_numpy(np.ascontiguousarray(obj)), tensors, path)
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj) and not any(t in obj for t in TAGS):
            return {k: pack(v, tensors, f"{path}/{k}") for k, v in obj.items()}
        return {"__items__": [[pack(k, None, path), pack(v, tensors, f"{path}/{k}")] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [pack(v, tensors, f"{path}/{i}") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [pack(v, tensors, f"{path}/{i}") for i, v in enumerate(obj)]
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise ValueError(f"{path}: a {type(obj).__name__} cannot be saved without pickling (plain data and tensors only)")


def unpack(obj: Any, tensors: dict[str, torch.Tensor], where: str) -> Any:
    if isinstance(obj, list):
        return [unpack(v, tensors, where) for v in obj]
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            try:
                return tensors[obj["__tensor__"]]
            except (KeyError, TypeError):
                raise ValueError(f"{where} is not a whole trainlab run: it lacks the tensor {obj['__tensor__']!r}") \
                    from None
        if "__tuple__" in obj:
            return tuple(unpack(v, tensors, where) for v in obj["__tuple__"])
        if "__items__" in obj:
            return {_key(unpack(k, tensors, where)): unpack(v, tensors, where) for k, v in obj["__items__"]}
        return {k: unpack(v, tensors, where) for k, v in obj.items()}
    return obj


def _key(k):
    return tuple(k) if isinstance(k, list) else k


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, indent=1, allow_nan=True).encode()


# ---- history as a table ---------------------------------------------------------------------------
def history_table(columns: dict[str, list]) -> pa.Table:
    """The history's columns as an Arrow table: numbers as int64/float64 (NaN where a row lacks it), events as text."""
    arrays = {}
    for name, values in columns.items():
        present = [v for v in values if not _missing(v)]
        if present and all(isinstance(v, str) for v in present):
            arrays[name] = pa.array([None if _missing(v) else v for v in values], pa.string())
        elif present and len(present) == len(values) and all(isinstance(v, (int, np.integer)) and not
                                                             isinstance(v, bool) for v in values):
            arrays[name] = pa.array(values, pa.int64())
        else:
            arrays[name] = pa.array([math.nan if _missing(v) else float(v) for v in values], pa.float64())
    return pa.table(arrays)


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def table_columns(table: pa.Table) -> dict[str, list]:
    """An Arrow table back as the history's columns (None -> NaN, which History.restore drops)."""
    return {name: [math.nan if v is None else v for v in col.to_pylist()]
            for name, col in zip(table.column_names, table.columns)}


def parquet_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


# ---- a checkpoint as files ------------------------------------------------------------------------
def events(history: dict[str, list], changes: list[dict]) -> list[dict]:
    """Every mid-run change by step: the history's event column and run.set's changes (these first at a step)."""
    out = [{"step": int(s), "event": e} for s, e in zip(history.get("step", []), history.get("event", []))
           if isinstance(e, str)]
    return sorted([*changes, *out], key=lambda e: (e["step"], "event" in e))


def encode(ckpt: dict[str, Any], history: pa.Table | None = None) -> dict[str, bytes]:
    """The checkpoint's files (the manifest apart): `history` replaces the checkpoint's own rows when given."""
    ckpt = dict(ckpt)
    model, initial, opt = ckpt.pop("model_state"), ckpt.pop("initial_state"), ckpt.pop("optimizer_state")
    rows = ckpt.pop("history")
    changes = ckpt.pop("changes", [])
    weights = {**{f"model/{k}": v for k, v in model.items()}, **{f"initial/{k}": v for k, v in initial.items()}}
    pruning = ckpt.get("pruning_state")
    if pruning is not None and pruning.get("rewind_state") is not None:
        ckpt["pruning_state"] = {**pruning, "rewind_state": True}
        weights.update({f"rewind/{k}": v for k, v in pruning["rewind_state"].items()})
    weights = {k: v.detach().cpu().contiguous().clone() for k, v in weights.items()}
    opt_tensors: dict[str, torch.Tensor] = {}
    opt_tree = pack(opt, opt_tensors, "optimizer")
    state: dict[str, torch.Tensor] = {}
    settings = pack(ckpt, state, "state")
    table = history if history is not None else history_table(rows)
    return {"settings.json": dumps(settings), "events.json": dumps(pack(events(table_columns(table.select(
                [c for c in ("step", "event") if c in table.column_names])), changes), None, "events")),
            "weights.safetensors": safetensors.torch.save(weights),
            "optimizer.safetensors": safetensors.torch.save(opt_tensors), "optimizer.json": dumps(opt_tree),
            "state.safetensors": safetensors.torch.save(state), "history.parquet": parquet_bytes(table)}


def manifest(files: dict[str, bytes], ckpt: dict[str, Any], table: pa.Table | None = None, **extra) -> dict:
    """What the manifest says of a checkpoint: its files' sizes and hashes, and a summary for `Store.list`."""
    return {"format": FORMAT, "version": ckpt.get("version"), "step": ckpt["step"], "saved": time.time(),
            "files": {k: {"bytes": len(v), "blake2b": digest(v)} for k, v in files.items()},
            "summary": summary(ckpt, table), **extra}


def summary(ckpt: dict[str, Any], table: pa.Table | None = None) -> dict:
    """Flat settings (model.width, lr, ...) and the last value of each metric: one row of a listing."""
    flat: dict[str, Any] = {}
    for what in ("model", "data"):
        spec = ckpt.get(f"{what}_spec")
        flat[what] = spec[0] if spec else "custom"
        for k, v in (spec[1] if spec else {}).items():
            flat[f"{what}.{k}"] = v
    flat.update(ckpt["settings"])
    flat.update(ckpt["optimizer_hparams"])
    flat["seed"] = ckpt["seed"]
    flat["schedule"] = ckpt["schedule"][0] if ckpt.get("schedule") else "constant"
    pruning = ckpt.get("pruning")
    flat["pruning"] = pruning["method"][0] if isinstance(pruning, dict) else pruning
    parent = ckpt.get("parent")
    # name@step; None for a fork of a live run that no store recorded (nothing stored to link to)
    flat["parent"] = f"{parent['run']}@{parent['step']}" if isinstance(parent, dict) and parent.get("run") else None
    columns = table_columns(table) if table is not None else ckpt["history"]
    metrics = {}
    for name, values in columns.items():
        if name in NOT_METRICS:
            continue
        last = next((v for v in reversed(values) if isinstance(v, (int, float)) and not _missing(v)), None)
        if last is not None:
            metrics[name] = float(last)
    return {"settings": pack(flat, None, "settings"), "metrics": metrics}


def check_manifest(m: Any, where: str) -> dict:
    if not isinstance(m, dict) or m.get("format") != FORMAT or not isinstance(m.get("files"), dict):
        raise ValueError(f"{where} is not a trainlab run (expected format {FORMAT!r})")
    return m


def decode(get: Callable[[str], bytes | None], m: dict, where: str) -> dict[str, Any]:
    """The checkpoint of the files `get(name)` returns (None: absent), each checked against the manifest `m`."""
    data = {}
    for name in FILES:
        entry, raw = m["files"].get(name), get(name) if name in m["files"] else None
        if entry is None or raw is None:
            raise ValueError(f"{where} is not a whole trainlab run: it lacks {name}")
        if not isinstance(entry, dict) or digest(raw) != entry.get("blake2b"):
            raise ValueError(f"{where} is damaged: its contents do not match the checksum written with them "
                             f"({name} changed after it was saved); it was not loaded")
        data[name] = raw
    try:
        state = safetensors.torch.load(data["state.safetensors"])
        settings = unpack(json.loads(data["settings.json"]), state, where)
        weights = safetensors.torch.load(data["weights.safetensors"])
        opt = unpack(json.loads(data["optimizer.json"]), safetensors.torch.load(data["optimizer.safetensors"]), where)
        history = table_columns(pq.ParquetFile(pa.BufferReader(data["history.parquet"])).read(use_threads=False))
        changes = [e for e in unpack(json.loads(data["events.json"]), {}, where) if "set" in e]
    except ValueError as e:
        if "trainlab run" in str(e):
            raise
        raise ValueError(f"{where} is damaged or not a trainlab run: {type(e).__name__}: {e}") from e
    except Exception as e:  # a hash that matches bytes no reader accepts: written by something else
        raise ValueError(f"{where} is damaged or not a trainlab run: {type(e).__name__}: {e}") from e
    if not isinstance(settings, dict):
        raise ValueError(f"{where} is not a trainlab run: settings.json is not a table of settings")
    missing = [k for k in REQUIRED if k not in settings]
    if missing:
        raise ValueError(f"{where} is not a whole trainlab run: it lacks {', '.join(missing)}")
    pruning = settings.get("pruning_state")
    if isinstance(pruning, dict) and pruning.get("rewind_state") is True:
        settings["pruning_state"] = {**pruning, "rewind_state": _part(weights, "rewind/")}
    return {**settings, "model_state": _part(weights, "model/"), "initial_state": _part(weights, "initial/"),
            "optimizer_state": opt, "history": history, "changes": changes}


def _part(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
