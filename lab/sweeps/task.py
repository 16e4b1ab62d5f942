"""One run of a sweep, as a Dask worker runs it: a configuration in, a row of results out.

The task says when it starts and how it trains on the sweep's topic (`Worker.log_event`, read by the
client with `Client.subscribe_topic`), checks between steps whether it should stop (the sweep's Dask
`Event`, or its own future cancelled), and saves the finished run to the store. Outside a worker
(`train(config)` in a plain process) it simply trains: the benchmark's sequential reference.
"""
from __future__ import annotations

import math
import os
import time
from typing import Any

import numpy as np

from ..run import Run, _torch_threads
from .config import run_kwargs

CHECK_EVERY = 0.25  # seconds between two looks at the cancellation flag (each is a round trip to the scheduler)
CURVE_POINTS = 200  # rows of the training curve a result carries back


def _worker():
    try:
        from distributed import get_worker

        return get_worker()
    except (ImportError, ValueError):  # not inside a Dask task
        return None


class _Stop:
    """Whether the task should stop: its future was cancelled (seen on the worker, no round trip) or the
    sweep's cancellation Event is set (looked at every CHECK_EVERY seconds)."""

    def __init__(self, worker, event: str | None):
        self.worker, self.name, self.event, self.last = worker, event, None, time.monotonic()
        self.key = worker.get_current_task() if worker is not None else None

    def __call__(self) -> bool:
        if self.worker is None:
            return False
        now = time.monotonic()
        if now - self.last < CHECK_EVERY:
            return False
        self.last = now
        state = getattr(getattr(self.worker, "state", None), "tasks", {}).get(self.key)
        if state is not None and state.state in ("cancelled", "released", "forgotten"):
            return True
        if self.name is None:
            return False
        if self.event is None:
            from distributed import Event

            self.event = Event(self.name)
        return self.event.is_set()


def train(config: dict[str, Any], *, topic: str | None = None, cancel: str | None = None, store: Any = None,
          name: str | None = None, report_every: float = 0.5) -> dict[str, Any]:
    """Train one configuration; returns its results row (status finished, diverged, cancelled or failed)."""
    worker = _worker()
    key = worker.get_current_task() if worker is not None else None

    def emit(kind: str, **msg) -> None:
        if worker is not None and topic is not None:
            worker.log_event(topic, {"kind": kind, "key": key, **msg})

    emit("started", worker=worker.address if worker else None, pid=os.getpid())
    stop = _Stop(worker, cancel)
    try:
        kwargs, steps = run_kwargs(config)
        kwargs.setdefault("threads", 1)  # one run per worker thread: torch's own threads would only compete
        kwargs.setdefault("probes", [])  # the results are losses and accuracies; probes would cost time
        with _torch_threads(kwargs["threads"] if isinstance(kwargs["threads"], int) else 1):
            result = _build_and_train(kwargs, steps, store, name, stop, emit, report_every)
    except Exception as e:  # the run could not be built: its failure is its result, the sweep goes on
        result = {"status": "failed", "error": f"{type(e).__name__}: {e}"}
    result.update(worker=worker.address if worker else None, pid=os.getpid())
    return result


def _build_and_train(kwargs: dict, steps: int, store: Any, name: str | None, stop, emit, report_every: float) -> dict:
    """Build the run, train it (recorded live if the store can), save it; the results row. Outside the Run's
    steps too (building, evaluating) torch keeps the run's thread count."""
    run = None
    try:
        run = Run(**kwargs)
        if isinstance(store, str):  # a store's folder: opened here, on the worker
            from ..store import Store

            store = Store(store)
        track = getattr(store, "track", None)
        saved = None
        if callable(track):  # recorded live (trainlab.store): leaving the block saves the run, however it ended
            with track(run, name) as recording:
                status, error = _train(run, steps, stop, emit, report_every)
            saved = getattr(recording, "name", name)
        else:
            status, error = _train(run, steps, stop, emit, report_every)
            if store is not None and status in ("finished", "diverged"):  # runs that ended by themselves
                saved = store.save(run, name)
        result = summarize(run, status, error)
        if saved is not None:
            result["name"] = saved
    except Exception as e:  # the run's own failure is its result: the sweep goes on
        result = summarize(run, "failed", f"{type(e).__name__}: {e}") if run is not None else \
            {"status": "failed", "error": f"{type(e).__name__}: {e}"}
    finally:
        if run is not None:
            run.close()
    return result


def _train(run: Run, steps: int, stop, emit, report_every: float) -> tuple[str, str]:
    """Step until `steps`, a stop or a divergence; live metrics every `report_every` s. (status, error)."""
    last, reported = time.monotonic(), 0
    while run.steps < steps:
        if stop():
            return "cancelled", ""
        if run.step(1) == 0:
            return "diverged", run.message
        if time.monotonic() - last >= report_every:
            emit("metrics", rows=_rows(run.history.since(reported)))
            last, reported = time.monotonic(), run.steps
    return "finished", ""


LIVE = ("step", "time", "lr", "train_loss", "train_acc", "grad_norm", "val_loss", "val_acc")


def _rows(frame, points: int = 50) -> list[dict[str, Any]]:
    """The history's rows since the last report as plain dicts, thinned to `points` (validation rows kept)."""
    if not len(frame):
        return []
    keep = set(np.linspace(0, len(frame) - 1, min(points, len(frame))).round().astype(int).tolist())
    if "val_loss" in frame:
        keep |= set(np.flatnonzero(frame["val_loss"].notna().to_numpy()).tolist())
    cols = [c for c in LIVE if c in frame]
    out = []
    for i in sorted(keep):
        row = frame.iloc[i]
        out.append({c: int(row[c]) if c == "step" else float(row[c]) for c in cols
                    if not (isinstance(row[c], float) and math.isnan(row[c]))})
    return out


def summarize(run: Run, status: str, error: str = "") -> dict[str, Any]:
    """The results row of a run: final and best losses and accuracies, steps, time, a thinned curve."""
    frame = run.history.frame()
    row: dict[str, Any] = {"status": status, "error": error, "steps": run.steps, "time": run.elapsed}
    if len(frame):
        row["train_loss"] = float(frame["train_loss"].iloc[-1])
        if "train_acc" in frame:
            row["train_acc"] = float(frame["train_acc"].iloc[-1])
    if run.data.has_val and run.steps:
        final = run.evaluate()  # at the final weights, whatever eval_every left out
        val = frame.dropna(subset=["val_loss"]) if "val_loss" in frame else frame.iloc[:0]
        losses = [*val["val_loss"].tolist(), final["val_loss"]] if len(val) else [final["val_loss"]]
        steps = [*val["step"].tolist(), run.steps] if len(val) else [run.steps]
        best = int(np.nanargmin(losses)) if not all(map(math.isnan, losses)) else len(losses) - 1
        row.update(val_loss=final["val_loss"], best_val_loss=losses[best], best_step=int(steps[best]))
        if "val_acc" in final:
            accs = [*val["val_acc"].tolist(), final["val_acc"]] if len(val) else [final["val_acc"]]
            row.update(val_acc=final["val_acc"], best_val_acc=max(accs))
    row["curve"] = _curve(frame)
    return row


def _curve(frame) -> dict[str, list]:
    """A few hundred rows of the training curve (every validation row kept), for panels to draw."""
    if not len(frame):
        return {}
    keep = np.unique(np.linspace(0, len(frame) - 1, min(CURVE_POINTS, len(frame))).round().astype(int))
    out = {"step": frame["step"].iloc[keep].tolist(), "train_loss": frame["train_loss"].iloc[keep].tolist()}
    if "val_loss" in frame:
        val = frame.dropna(subset=["val_loss"])
        out["val_step"] = val["step"].tolist()
        out["val_loss"] = val["val_loss"].tolist()
        if "val_acc" in val:
            out["val_acc"] = val["val_acc"].tolist()
    return out
