"""One experiment: a configuration (plain data) in, a result row out. Every study trains through `train`:
the μ-Transfer and depth sweeps, the normalization comparisons, the pruning study and the Dask sweeps,
which ship configurations, never pickled objects, to their workers.

A configuration is a dict of `Run` keyword arguments (model as a name or (name, {options}), data likewise,
optimizer, lr, batch_size, seed, schedule, pruning, optimizer hyperparameters) plus `steps`, how long to train,
and optionally `measure`: probes by class name with their options ({"Sharpness": {"every": 10}}), whose
columns come back in the history (without it a run measures nothing but its loss).
"""
from __future__ import annotations

import math
from contextlib import nullcontext
from typing import Any, Callable

import numpy as np
import pandas as pd

CONTROL = ("steps", "measure")  # keys of a configuration that are not Run arguments


def build(config: dict[str, Any], **extra):
    """The Run a configuration describes (no step taken); a bad setting raises ValueError naming it."""
    from . import probes
    from .run import Run

    kwargs = {k: v for k, v in config.items() if k not in CONTROL}
    measure = config.get("measure") or {}
    if not isinstance(measure, dict):
        raise ValueError(f"measure={measure!r} rejected: a dict of probe class names and their options")
    valid = [n for n in probes.__all__ if n[0].isupper() and n not in ("Columns", "Probe")]
    unknown = [n for n in measure if n not in valid]
    if unknown:
        raise ValueError(f"measure: {unknown!r} are not probes; valid: {', '.join(valid)}")
    if measure:
        extra = {**extra, "probes": [getattr(probes, n)(**opts) for n, opts in measure.items()]}
    return Run(**kwargs, **extra)


def _steps(config: dict[str, Any]) -> int:
    steps = config.get("steps")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps={steps!r} rejected: a configuration says how long to train, a whole number >= 1")
    return steps


def full_loss(run) -> float:
    """The loss over the whole training set at the run's weights now (eval mode, in chunks); inf if not finite."""
    import torch

    from .functional import eval_mode

    total, n = 0.0, 0
    X, y = run.data.fixed_sample(None, device=run.device)
    with torch.no_grad(), eval_mode(run.model):
        for i in range(0, len(X), 4096):
            total += float(run.loss_fn(run.model(X[i:i + 4096]), y[i:i + 4096])) * len(X[i:i + 4096])
            n += len(X[i:i + 4096])
    return total / n if math.isfinite(total) else math.inf


def train(config: dict[str, Any], *, stop: Callable[[], bool] | None = None, chunk: int = 50,
          on_progress: Callable[[int, dict[str, float]], None] | None = None, keep_history: bool = True,
          run_hook: Callable | None = None, whole_train_loss: bool = False) -> dict[str, Any]:
    """Train `config["steps"]` steps and return the result row: `status` ("finished", "diverged" or "cancelled"),
    `error` (why it diverged), `steps`, `seconds` (the run's own training time), `train_loss`/`train_acc` (the last
    logged step's), `val_loss`/`val_acc` at the final weights, `best_val_loss`, `best_step`, `best_val_acc` (over
    the validation passes and the final weights), `mean_train_loss` (over every step: how fast it learned; inf if
    it diverged), with `whole_train_loss` the loss over the whole training set at the end (`full_train_loss`),
    and (with `keep_history`) `history`, the run's history as a DataFrame.

    `stop()` is asked every `chunk` steps (a sweep's cancellation); `on_progress(step, metrics)` is told then
    too (live metrics). `run_hook(run)` sees the Run once built; if it returns a context manager, the steps run
    inside it (a store recording the run live, saving it as the block ends). A configuration `threads` also
    holds torch to that many threads outside the steps (building, evaluating)."""
    from .run import _torch_threads

    steps = _steps(config)
    threads = config.get("threads")
    with _torch_threads(threads) if isinstance(threads, int) and not isinstance(threads, bool) else nullcontext():
        run = build(config, probes=[])  # the default probes would measure what nobody asked for (`measure` adds some)
        try:
            hook = run_hook(run) if run_hook is not None else None
            with hook if hasattr(hook, "__enter__") else nullcontext():
                status = _steps_until(run, steps, stop, chunk, on_progress)
            return _row(run, status, keep_history, whole_train_loss)
        finally:
            run.close()


def _steps_until(run, steps: int, stop, chunk: int, on_progress) -> str:
    """Step until `steps`, a stop or a divergence; the status."""
    while run.steps < steps:
        if stop is not None and stop():
            return "cancelled"
        n = min(chunk, steps - run.steps)
        if run.step(n) < n:
            return "diverged"
        if on_progress is not None:
            on_progress(run.steps, _last(run))
    return "finished"


def _row(run, status: str, keep_history: bool, whole_train_loss: bool) -> dict[str, Any]:
    frame = run.history.frame()
    row: dict[str, Any] = {"status": status, "error": run.message if status == "diverged" else "",
                           "steps": run.steps, "seconds": run.elapsed}
    if "train_loss" in frame and len(frame):
        row["train_loss"] = float(frame["train_loss"].iloc[-1])
        if "train_acc" in frame:
            row["train_acc"] = float(frame["train_acc"].iloc[-1])
        losses = frame["train_loss"].to_numpy(float)
        row["mean_train_loss"] = float(losses.mean()) if status == "finished" and np.isfinite(losses).all() else math.inf
    if whole_train_loss:
        row["full_train_loss"] = full_loss(run) if status == "finished" else math.inf
    if run.data.has_val and run.steps and status != "diverged":
        final = run.evaluate()  # at the final weights, whatever eval_every left out
        row.update(final)
        val = frame.dropna(subset=["val_loss"]) if "val_loss" in frame else pd.DataFrame(columns=["step", "val_loss"])
        losses = [*val["val_loss"].tolist(), final["val_loss"]]
        at = [*val["step"].tolist(), run.steps]
        best = int(np.nanargmin(losses)) if not all(map(math.isnan, losses)) else len(losses) - 1
        row.update(best_val_loss=float(losses[best]), best_step=int(at[best]))
        if "val_acc" in final:
            row["best_val_acc"] = float(max([*val.get("val_acc", pd.Series(dtype=float)).tolist(), final["val_acc"]]))
    for key in ("train_loss", "val_loss", "best_val_loss"):
        if key in row and not math.isfinite(row[key]):
            row["status"] = "diverged"
    if keep_history:
        row["history"] = frame
    return row


def _last(run) -> dict[str, float]:
    """The newest logged row's numbers."""
    return {k: float(v) for k, v in run.history.last().items() if isinstance(v, (int, float)) and math.isfinite(v)}


def curve(frame: pd.DataFrame, points: int = 200) -> dict[str, list]:
    """A few hundred rows of a history's training curve (every validation row kept), as plain lists: what a
    result carries back from a worker for panels to draw."""
    if not len(frame):
        return {}
    keep = np.unique(np.linspace(0, len(frame) - 1, min(points, len(frame))).round().astype(int))
    out = {"step": frame["step"].iloc[keep].tolist(), "train_loss": frame["train_loss"].iloc[keep].tolist()}
    if "val_loss" in frame:
        val = frame.dropna(subset=["val_loss"])
        out["val_step"] = val["step"].tolist()
        out["val_loss"] = val["val_loss"].tolist()
        if "val_acc" in val:
            out["val_acc"] = val["val_acc"].tolist()
    return out


def results(rows: list[dict[str, Any]], configs: list[dict[str, Any]]) -> pd.DataFrame:
    """A tidy frame: each configuration's settings (model options as `model.<option>`) beside its result."""
    out = []
    for config, row in zip(configs, rows):
        flat = flatten(config)
        out.append({**flat, **{k: v for k, v in row.items() if k != "history"}})
    return pd.DataFrame(out)


def _is_spec(value: Any) -> bool:
    return isinstance(value, (tuple, list)) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], dict)


def flatten(config: dict[str, Any]) -> dict[str, Any]:
    """{"model": ("mlp", {"width": 64}), "pruning": {"method": "snip"}} → {"model": "mlp", "model.width": 64,
    "pruning.method": "snip"}: the dotted names tables and grids use."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if _is_spec(value):
            flat[key] = value[0]
            flat.update({f"{key}.{k}": v for k, v in value[1].items()})
        elif isinstance(value, dict):
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            flat[key] = value
    return flat


def with_setting(config: dict[str, Any], setting: str, value: Any) -> dict[str, Any]:
    """A copy of `config` with one (dotted) setting changed: "lr", "model.width" (an option of the model's
    (name, {options}); a model given as a bare name becomes (name, {width: ...})), "pruning.sparsity"."""
    out = dict(config)
    if "." not in setting:
        out[setting] = value
        return out
    key, option = setting.split(".", 1)
    current = out.get(key)
    if isinstance(current, str):
        out[key] = (current, {option: value})
    elif _is_spec(current):
        out[key] = (current[0], {**current[1], option: value})
    elif isinstance(current, dict) or current is None:
        out[key] = {**(current or {}), option: value}
    else:
        raise ValueError(f"{setting!r}: {key}={current!r} has no options to set")
    return out


def grid(base: dict[str, Any], values: dict[str, list]) -> list[dict[str, Any]]:
    """Every combination of `values` ({dotted setting: [values]}) applied to `base`, in row-major order (the
    last setting varies fastest)."""
    import itertools

    if not values:
        raise ValueError("grid: no settings to vary (give {setting: [values, ...]})")
    for setting, vs in values.items():
        if isinstance(vs, (str, bytes)) or not hasattr(vs, "__iter__") or not len(list(vs)):
            raise ValueError(f"grid: {setting!r} needs a non-empty list of values, got {vs!r}")
    out = []
    for combo in itertools.product(*(list(v) for v in values.values())):
        config = dict(base)
        for setting, value in zip(values, combo):
            config = with_setting(config, setting, value.item() if hasattr(value, "item") else value)
        out.append(config)
    return out


def declared(setting: str, config: dict[str, Any] | None = None):
    """The declared parameter behind a (flattened) setting name, or None: `lr` and `batch_size` are the Run's,
    `model.width` the model entry's option, `momentum` the configuration's optimizer's."""
    from .data import datasets
    from .models import models
    from .optimizers import optimizers
    from .run import Run

    config = config or {}
    if "." in setting:
        kind, option = setting.split(".", 1)
        registry = {"model": models, "data": datasets}.get(kind)
        name = config.get(kind)
        name = name[0] if isinstance(name, (tuple, list)) else name
        if registry is None or not isinstance(name, str) or name not in registry.names():
            return None
        return registry[name].params.get(option)
    if setting in Run.param:
        return Run.param[setting]
    optimizer = config.get("optimizer", "sgd")
    return optimizers[optimizer].params.get(setting) if optimizer in optimizers.names() else None


def axis_kind(setting: str, values, config: dict[str, Any] | None = None) -> str:
    """How a setting's axis is drawn: "log" (a LogNumber/LogInteger such as lr, batch size, width, or positive
    numbers spanning two decades), "linear" (other numbers) or "category" (names, flags)."""
    from .registry import LogInteger, LogNumber

    series = pd.Series(list(values))
    numeric = pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)
    if not numeric:
        return "category"
    p = declared(setting, config)
    positive = bool((series.dropna() > 0).all()) and len(series.dropna())
    if isinstance(p, (LogNumber, LogInteger)) and positive:
        return "log"
    if p is None and positive and series.max() / series.min() >= 100:
        return "log"
    return "linear"


def parallel_axes(frame: pd.DataFrame, columns: list[str], config: dict[str, Any] | None = None) -> dict[str, dict]:
    """Each column mapped to [0, 1] for a parallel-coordinates plot: {column: {"kind", "values" (normalized,
    NaN where missing), "ticks" (normalized positions), "labels"}}. Log axes for lr-like settings; categories
    evenly spaced in the order first seen."""
    import numpy as np

    out = {}
    for c in columns:
        col = frame[c]
        kind = axis_kind(c, col.dropna(), config)
        if kind == "category":
            cats = list(dict.fromkeys(col.dropna().astype(str)))
            pos = {v: (i / (len(cats) - 1) if len(cats) > 1 else 0.5) for i, v in enumerate(cats)}
            values = np.array([pos.get(str(v), np.nan) if pd.notna(v) else np.nan for v in col], float)
            out[c] = {"kind": kind, "values": values, "ticks": list(pos.values()), "labels": cats}
            continue
        x = col.to_numpy(float)
        t = np.log10(x) if kind == "log" else x
        finite = t[np.isfinite(t)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        span = hi - lo or 1.0
        values = (t - lo) / span if hi > lo else np.where(np.isfinite(t), 0.5, np.nan)
        ticks = np.linspace(lo, hi, 3) if hi > lo else np.array([lo])
        labels = [f"{(10 ** v if kind == 'log' else v):.3g}" for v in ticks]
        out[c] = {"kind": kind, "values": values, "ticks": [float((v - lo) / span) if hi > lo else 0.5 for v in ticks],
                  "labels": labels}
    return out
