"""Runs of a sweep as a Dask worker runs them: configurations in, a results row each out, reported one by one.

`run_batch` is the Dask task: it trains a few configurations in turn (short runs share a task, so Dask's
own cost per task is paid once for several of them) and says on the sweep's topic (`Worker.log_event`, read
by the client with `Client.subscribe_topic`) when each starts, how it trains (live rows every `report_every`
s, 0.5 by default) and its row as soon as it ends: results stream back per configuration, however they were
batched. A message of the topic is a list of events: a run's "result" goes out with the next run's
"started", a moment later, so a short run costs the scheduler and the client one message instead of two.
Between steps it checks whether it should stop (the sweep's Dask `Event`, or its own future cancelled); once
stopped, the configurations it had not started come back cancelled. What a run is and what its row holds
is `trainlab.experiment.train`'s; here are only the worker's parts: the events, the worker's identity, the
store. `train(config)` is one configuration of it; outside a worker it simply trains (the benchmark's
sequential reference).
"""
from __future__ import annotations

import math
import os
import time
from contextlib import contextmanager
from typing import Any, Callable

import numpy as np

from .. import experiment
from .config import run_kwargs

CHECK_EVERY = 0.25  # seconds between two looks at the cancellation flag (each is a round trip to the scheduler)


def _worker():
    try:
        from distributed import get_worker

        return get_worker()
    except (ImportError, ValueError):  # not inside a Dask task
        return None


class _Stop:
    """Whether the task should stop: its future was cancelled (seen on the worker, no round trip) or the
    sweep's cancellation Event is set (looked at every CHECK_EVERY seconds). Once it says stop, it stays so."""

    def __init__(self, worker, event: str | None):
        self.worker, self.name, self.event, self.last, self.fired = worker, event, None, time.monotonic(), False
        self.key = worker.get_current_task() if worker is not None else None

    def __call__(self) -> bool:
        if self.fired or self.worker is None:
            return self.fired
        now = time.monotonic()
        if now - self.last < CHECK_EVERY:
            return False
        self.last = now
        state = getattr(getattr(self.worker, "state", None), "tasks", {}).get(self.key)
        if state is not None and state.state in ("cancelled", "released", "forgotten"):
            self.fired = True
        elif self.name is not None:
            if self.event is None:
                from distributed import Event

                self.event = Event(self.name)
            self.fired = self.event.is_set()
        return self.fired


def run_batch(items: list[tuple[int, dict, str | None]], *, topic: str | None = None, cancel: str | None = None,
              store: Any = None, report_every: float = 0.5) -> list[dict[str, Any]]:
    """Train each (index, configuration, store name) in turn; each row (with its index) is also sent on `topic`
    as it ends. A stop leaves the configurations not yet started cancelled."""
    worker = _worker()
    key = worker.get_current_task() if worker is not None else None
    where = {"worker": worker.address if worker is not None else None, "pid": os.getpid()}

    waiting: list[dict] = []

    def emit(kind: str, index: int, now: bool = True, **msg) -> None:
        """Send an event on the topic, with any held one; `now=False` holds it for the next send."""
        if worker is None or topic is None:
            return
        waiting.append({"kind": kind, "key": key, "index": index, **msg})
        if now:
            worker.log_event(topic, waiting[:])
            waiting.clear()

    if isinstance(store, str):  # a store's folder: opened here, on the worker, once for the batch
        from ..store import Store

        store = Store(store)
    stop, rows = _Stop(worker, cancel), []
    try:
        for n, (index, config, name) in enumerate(items):
            if stop():
                rows.append({"index": index, "status": "cancelled"})
                continue
            emit("started", index, **where)
            began = time.perf_counter()
            row = {"index": index, **train(config, store=store, name=name, stop=stop, report_every=report_every,
                                           report=lambda live, i=index: emit("metrics", i, rows=live)), **where}
            emit("result", index, now=n == len(items) - 1, row=row, elapsed=time.perf_counter() - began)
            rows.append(row)
    finally:
        if waiting:  # the result held for a "started" that did not come (the next runs were cancelled)
            worker.log_event(topic, waiting[:])
    return rows


def train(config: dict[str, Any], *, store: Any = None, name: str | None = None, stop: _Stop | None = None,
          report: Callable[[list[dict]], None] | None = None, report_every: float = 0.5) -> dict[str, Any]:
    """Train one configuration (`experiment.train`, one torch thread); its results row with a thinned `curve`
    (status failed, saying why, when it could not be built or trained). `report(rows)` gets the history's
    rows every `report_every` s; a finished or diverged run is saved to `store` as `name`."""
    ran: dict[str, Any] = {}
    last = [time.monotonic(), 0]

    def hook(run):
        ran["run"] = run
        return _recorded(run, store, name, stop, ran) if store is not None else None

    def progress(step: int, metrics: dict) -> None:
        if report is not None and time.monotonic() - last[0] >= report_every:
            report(_rows(ran["run"].history.since(last[1])))
            last[:] = time.monotonic(), step

    try:
        kwargs, steps = run_kwargs(config)
        kwargs.setdefault("threads", 1)  # one run per worker thread: torch's own threads would only compete
        # a step at a time: a stop is seen within a step (the flag itself is looked at every CHECK_EVERY s)
        row = experiment.train({**kwargs, "steps": steps}, stop=stop, chunk=1, on_progress=progress, run_hook=hook)
        row["curve"] = experiment.curve(row.pop("history"))
    except Exception as e:  # the run's own failure is its result: the sweep goes on
        row = {"status": "failed", "error": f"{type(e).__name__}: {e}"}
    if ran.get("saved") is not None:
        row["name"] = ran["saved"]
    return row


@contextmanager
def _recorded(run, store, name, stop, ran):
    """Around the run's steps: recorded live if the store can (saved as the block ends, however it ended),
    else saved once it ended by itself (finished or diverged, not stopped)."""
    track = getattr(store, "track", None)
    if callable(track):
        with track(run, name) as recording:
            yield
        ran["saved"] = getattr(recording, "name", name)
    else:
        yield
        if not getattr(stop, "fired", False):  # a stop that fired ended the steps: the run was cancelled
            ran["saved"] = store.save(run, name)


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
