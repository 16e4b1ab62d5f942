"""The Sweep: configurations submitted to Dask as tasks, each run's results gathered as it ends.

Short runs share a task (a batch, `task.run_batch`): Dask's own cost per task (a few to ~10 ms here) is a
fifth of a 45 ms run. How many share one is measured, not guessed: the first tasks hold one run each; from
the runs' measured times on, a batch holds about TASK_SECONDS of runs, and never more than the remaining
runs over twice the workers, so batches shrink towards the end and the workers finish together. Only a
window of tasks (two per worker thread) is out at a time, the rest wait here. Each run of a batch still
reports on its own ("started", live "metrics", then its "result" row; a message of the topic is a list of
them), so results stream per configuration. A task whose rows all came that way is not fetched again.

One monitor thread owns every state change. It reads a single queue fed by the futures' done callbacks,
the sweep's topic (each run's events) and the cluster's "all" topic (a worker removed). That makes each
configuration end exactly once, whichever news comes first:

- a run whose worker dies (kill -9, out of memory) fails as soon as the scheduler removes the worker:
  with `allowed-failures=0` (the embedded cluster) its task errs with KilledWorker at once; on a
  cluster that keeps Dask's default of 3 the "remove-worker" event names the worker, the sweep cancels
  the task there (so Dask does not quietly run it again) and reports it. Either way it is retried if
  `retries` allows, under a new key, so no result comes twice. The runs of its batch that had ended
  are kept (their rows came as events; LOSS_GRACE s are left for those still on the way);
- a run that had not started (later in the dead task's batch, or a task queued on the dead worker,
  failed with it under allowed-failures=0) is innocent: it waits again and is not counted as an attempt.
"""
from __future__ import annotations

import collections
import itertools
import math
import queue
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import pandas as pd

from .cluster import unwatch_workers, watch_workers
from .config import describe
from .task import run_batch

FINAL = ("finished", "diverged", "failed", "cancelled")
METRICS = ("steps", "seconds", "train_loss", "train_acc", "val_loss", "best_val_loss", "best_step", "val_acc",
           "best_val_acc")
REQUEUES = 3  # resubmissions of a run that never started before it counts as failed (a worker dying under it each time)
TASK_SECONDS = 1.0  # the runs one task holds, in measured seconds: Dask's cost per task is then ~1 % of it
LOSS_GRACE = 0.25   # seconds a lost task's runs wait for result events still on the way before they count as lost


@dataclass(frozen=True)
class Progress:
    """How far a sweep has come: runs by state."""

    total: int
    finished: int = 0
    diverged: int = 0
    failed: int = 0
    cancelled: int = 0
    running: int = 0
    queued: int = 0

    @property
    def done(self) -> int:
        return self.finished + self.diverged + self.failed + self.cancelled

    def __str__(self) -> str:
        extra = [f"{n} {k}" for k, n in (("failed", self.failed), ("diverged", self.diverged),
                                        ("cancelled", self.cancelled), ("running", self.running)) if n]
        return f"{self.done}/{self.total} done" + (f" ({', '.join(extra)})" if extra else "")


class Grid:
    """A source of configurations known up front."""

    def __init__(self, configs: list[tuple[dict, dict]]):
        self.items, self.total, self.exhausted = configs, len(configs), False

    def take(self, running: int) -> list[tuple[dict, dict]]:
        if self.exhausted:
            return []
        self.exhausted = True
        return self.items

    def finish(self, index: int, row: dict) -> None:
        pass

    def stop(self) -> None:
        self.exhausted = True


class Sweep:
    """Runs of a sweep on Dask: `results()`, `progress()`, `wait()`, `cancel()`, and results as they arrive
    (`on_result`, `as_completed`) with live metrics while runs train (`on_metrics`, `curves`).

    Made by `trainlab.sweep(...)`, which checks every configuration before this starts anything.
    """

    def __init__(self, source, columns: list[str], client, *, cluster=None, own_client: bool = False,
                 store: Any = None, name: str = "sweep", retries: int = 0, report_every: float = 0.5, study=None):
        self.name, self.columns, self.client, self.retries, self.study = name, columns, client, retries, study
        self.configs: list[dict] = []   # every configuration, in index order
        self.failures: list[dict] = []  # each lost attempt: index, attempt, worker, error, time
        self._source, self._cluster, self._own_client = source, cluster, own_client
        self._store, self._report_every = store, report_every
        self._shown: list[dict] = []    # a row's configuration columns (and the trial, for Optuna)
        self._state: list[dict] = []    # status, attempts, requeues, worker, pid, metrics
        self._curves: dict[int, dict] = {}
        self._live: dict[int, list[dict]] = {}
        self._order: list[int] = []     # indices in the order their runs ended
        self._pending: collections.deque[int] = collections.deque()  # indices waiting for a task, in order
        self._futures: dict[str, tuple[list[int], Any]] = {}  # task key -> its batch of indices, its future
        self._key_of: dict[int, str] = {}   # index -> the key of the task holding its current attempt
        self._started: dict[int, dict] = {}  # index -> the "started" event of its current attempt
        self._ran_on: dict[str, str] = {}   # task key -> the worker its runs started on
        self._seconds: list[float] = []     # measured seconds of each ended run (on its worker, whole)
        self._threads = max(1, sum(client.nthreads().values()))
        self._serial = itertools.count()
        self._queue: queue.Queue = queue.Queue()
        self._cond = threading.Condition()
        self._cancelling = self._complete = self._closed = False
        self._on_result: list[Callable] = []
        self._on_metrics: list[Callable] = []
        uid = uuid.uuid4().hex[:10]
        self._uid, self._topic, self._event = uid, f"trainlab-sweep-{uid}", f"trainlab-cancel-{uid}"
        client.subscribe_topic(self._topic, lambda event: [self._queue.put(("event", msg)) for msg in event[1]])
        watch_workers(client, uid, lambda worker: self._queue.put(("removed", worker)))
        self._take()  # here, not on the thread: results() lists every queued run from the start
        self._thread = threading.Thread(target=self._monitor, name=f"trainlab-sweep-{name}", daemon=True)
        self._thread.start()

    # ---- what users call ----------------------------------------------------------------------
    def results(self) -> pd.DataFrame:
        """A row per configuration: its index, swept settings and seed, status, error and metrics."""
        with self._cond:
            rows = [self._row(i) for i in range(len(self.configs))]
        head = ["index", *self.columns, "seed", *(["trial"] if self.study is not None else []), "status", "error"]
        return pd.DataFrame(rows, columns=[*head, *METRICS, "attempts", "worker", "name"])

    def progress(self) -> Progress:
        with self._cond:
            counts = {k: 0 for k in ("finished", "diverged", "failed", "cancelled", "running", "queued")}
            for st in self._state:
                counts[st["status"]] += 1
            return Progress(self._source.total, **counts)

    @property
    def done(self) -> bool:
        return self._complete

    def wait(self, timeout: float | None = None) -> Sweep:
        """Block until every run has ended (and an embedded cluster has closed); TimeoutError after `timeout` s."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._closed, timeout):
                raise TimeoutError(f"the sweep is not done after {timeout} s: {self.progress()}")
        return self

    def cancel(self, wait: bool = True, timeout: float | None = 60) -> None:
        """Stop: queued runs are dropped, running ones stop before their next step (status "cancelled")."""
        self._queue.put(("cancel",))
        if wait:
            self.wait(timeout)

    def close(self) -> None:
        """Cancel what still runs and release the cluster (an embedded one is closed)."""
        if not self._closed:
            self.cancel(wait=True)

    def __enter__(self) -> Sweep:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def on_result(self, fn: Callable[[dict], Any]) -> None:
        """Call fn(row) for each run as it ends (at once for those already ended), on the sweep's thread."""
        with self._cond:
            self._on_result.append(fn)
            done = [self._row(i) for i in self._order]
        for row in done:
            _call(fn, row)

    def on_metrics(self, fn: Callable[[int, list[dict]], Any]) -> None:
        """Call fn(index, rows) with each batch of live metrics (step, train_loss, val_loss, ...) while runs train."""
        self._on_metrics.append(fn)

    def as_completed(self, timeout: float | None = None) -> Iterator[dict]:
        """Each run's results row as it ends (those already ended first); stops when every run has ended."""
        seen, deadline = 0, None if timeout is None else time.monotonic() + timeout
        while True:
            with self._cond:
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                if not self._cond.wait_for(lambda: len(self._order) > seen or self._complete, left):
                    raise TimeoutError(f"no run ended within {timeout} s: {self.progress()}")
                batch, seen = self._order[seen:], len(self._order)
                rows = [self._row(i) for i in batch]
            if not rows:
                return
            yield from rows

    def __iter__(self) -> Iterator[dict]:
        return self.as_completed()

    def curves(self, index: int) -> pd.DataFrame:
        """The training curve of one run: the live rows while it trains, its thinned history once it has ended."""
        with self._cond:
            curve = self._curves.get(index)
            live = list(self._live.get(index, []))
        if not curve:
            return pd.DataFrame(live)
        train = pd.DataFrame({"step": curve["step"], "train_loss": curve["train_loss"]})
        if "val_step" not in curve:
            return train
        val = pd.DataFrame({"step": curve["val_step"], "val_loss": curve["val_loss"],
                            **({"val_acc": curve["val_acc"]} if "val_acc" in curve else {})})
        return train.merge(val, on="step", how="outer").sort_values("step", ignore_index=True)

    def running(self) -> dict[int, dict]:
        """index -> {worker, pid, since} of the runs training now."""
        with self._cond:
            return {i: {k: st.get(k) for k in ("worker", "pid", "since")}
                    for i, st in enumerate(self._state) if st["status"] == "running"}

    def __repr__(self) -> str:
        return f"<Sweep {self.name!r}: {self.progress()}>"

    # ---- the monitor thread -------------------------------------------------------------------
    def _monitor(self) -> None:
        try:
            while not self._all_ended():
                try:
                    item = self._queue.get(timeout=1.0)
                except queue.Empty:
                    continue
                getattr(self, "_on_" + item[0].replace("-", "_") + "_item")(*item[1:])
                self._take()
        except Exception as e:  # a fault here must not leave wait() hanging: every open run fails, saying why
            for i, st in enumerate(self._state):
                self._final(i, {"status": "failed", "error": f"the sweep's monitor failed: {type(e).__name__}: {e}"})
        finally:
            with self._cond:
                self._complete = True
                self._cond.notify_all()
            self._teardown()
            with self._cond:
                self._closed = True
                self._cond.notify_all()

    def _all_ended(self) -> bool:
        return self._source.exhausted and all(st["status"] in FINAL for st in self._state)

    def _take(self) -> None:
        running = sum(st["status"] not in FINAL for st in self._state)
        for config, shown in self._source.take(running):
            with self._cond:
                i = len(self.configs)
                self.configs.append(config)
                self._shown.append(shown)
                self._state.append({"status": "queued", "attempts": 0, "requeues": 0, "error": ""})
            if "error" in shown:  # a sampled configuration that its checks refused
                self._final(i, {"status": "failed", "error": shown.pop("error")})
            elif self._cancelling:
                self._final(i, {"status": "cancelled"})
            else:
                self._pending.append(i)
        self._dispatch()

    def _batch_size(self) -> int:
        """Runs for the next task: 1 until a run's time is measured, then about TASK_SECONDS of them, at most the
        pending runs over twice the worker threads (guided self-scheduling: the batches shrink at the end)."""
        if not self._seconds:
            return 1
        recent = sorted(self._seconds[-20:])
        per_run = max(recent[len(recent) // 2], 1e-3)
        return max(1, min(int(TASK_SECONDS / per_run), math.ceil(len(self._pending) / (2 * self._threads))))

    def _dispatch(self) -> None:
        """Submit pending runs while fewer than two tasks per worker thread are out."""
        while self._pending and not self._cancelling and len(self._futures) < 2 * self._threads:
            n = self._batch_size()
            self._submit([self._pending.popleft() for _ in range(min(n, len(self._pending)))])

    def _submit(self, batch: list[int]) -> None:
        key = f"trainlab-{self._uid}-{batch[0]}-{next(self._serial)}"
        items = []
        for i in batch:
            attempt = self._state[i]["attempts"] + 1  # a retry is stored beside the attempt its worker died in
            items.append((i, self.configs[i], f"{self.name}-{i:04d}" + (f"-{attempt}" if attempt > 1 else "")))
        try:
            future = self.client.submit(run_batch, items, topic=self._topic, cancel=self._event, store=self._store,
                                        report_every=self._report_every, key=key, pure=False)
        except Exception as e:
            for i in batch:
                self._final(i, {"status": "failed", "error": f"could not be submitted: {type(e).__name__}: {e}"})
            return
        with self._cond:
            self._futures[key] = (batch, future)
            for i in batch:
                self._key_of[i] = key
                self._state[i]["status"] = "queued"
        future.add_done_callback(lambda f: self._queue.put(("done", f.key)))

    def _open(self, key: str, batch: list[int]) -> list[int]:
        """The runs of a task that have not ended and were not given to another task since."""
        return [i for i in batch if self._key_of.get(i) == key]

    def _on_done_item(self, key: str) -> None:
        from distributed.scheduler import KilledWorker

        entry = self._futures.pop(key, None)
        self._ran_on.pop(key, None)
        if entry is None:
            return
        batch, future = entry
        open_ = self._open(key, batch)
        status = future.status
        if status == "finished":
            if not open_:  # every row came with its event: fetching them again is a round trip for nothing
                return
            try:
                rows = {row["index"]: row for row in future.result(timeout=60)}
            except Exception as e:
                rows = {i: {"status": "failed", "error": f"its result was lost: {type(e).__name__}: {e}"} for i in open_}
            for i in open_:
                self._final(i, dict(rows.get(i) or {"status": "failed", "error": "its task returned no row for it"}))
        elif status == "error":
            exc = future.exception()
            if isinstance(exc, KilledWorker):
                self._lose_later(key, open_, "the worker running it died")
            else:
                for i in open_:
                    self._final(i, {"status": "failed", "error": f"{type(exc).__name__}: {exc}"})
        elif self._cancelling:
            for i in open_:
                self._final(i, {"status": "cancelled"})
        else:  # cancelled or lost by the cluster, not by us
            self._lose_later(key, open_, f"Dask reported it {status}")

    def _on_event_item(self, msg: dict) -> None:
        i, key = msg.get("index"), msg.get("key")
        if i is None or self._key_of.get(i) != key:  # a superseded attempt, or a run that already ended
            return
        if msg["kind"] == "started":
            self._ran_on[key] = msg.get("worker")
            with self._cond:
                self._started[i] = msg
                st = self._state[i]
                st.update(status="running", worker=msg.get("worker"), pid=msg.get("pid"), since=time.time())
                st["attempts"] += 1
        elif msg["kind"] == "metrics":
            with self._cond:
                self._live.setdefault(i, []).extend(msg["rows"])
            for fn in list(self._on_metrics):
                _call(fn, i, msg["rows"])
        elif msg["kind"] == "result":
            self._seconds.append(float(msg["elapsed"]))
            self._final(i, dict(msg["row"]))

    def _on_removed_item(self, worker: str) -> None:
        for key, (batch, future) in list(self._futures.items()):
            open_ = self._open(key, batch)
            if self._ran_on.get(key) == worker:  # Dask would run the whole batch again, ended runs too
                self._futures.pop(key)
                self._ran_on.pop(key)
                future.cancel()  # on a cluster with allowed-failures > 0 Dask would run it again by itself
                self._lose_later(key, open_, f"its worker {worker} died")

    def _on_cancel_item(self) -> None:
        if self._cancelling:
            return
        self._cancelling = True
        self._source.stop()
        try:
            from distributed import Event

            Event(self._event, client=self.client).set()  # running tasks see it between two steps
        except Exception:  # the scheduler is gone: nothing runs there any more
            pass
        while self._pending:
            self._final(self._pending.popleft(), {"status": "cancelled"})
        for key, (batch, future) in list(self._futures.items()):
            open_ = self._open(key, batch)
            if not any(i in self._started for i in open_):  # none of it trains: dropped at once
                self._futures.pop(key)
                future.cancel()
                for i in open_:
                    self._final(i, {"status": "cancelled"})

    def _lose_later(self, key: str, batch: list[int], reason: str) -> None:
        """The task will not report: after LOSS_GRACE s (result events sent just before the worker died may
        still be on the way) its runs that have not ended are lost."""
        timer = threading.Timer(LOSS_GRACE, self._queue.put, args=(("lost", key, batch, reason),))
        timer.daemon = True
        timer.start()

    def _on_lost_item(self, key: str, batch: list[int], reason: str) -> None:
        for i in self._open(key, batch):
            self._lost(i, reason)

    def _lost(self, i: int, reason: str) -> None:
        """A run whose task will not report: failed, retried, or waiting again (if it never started)."""
        st = self._state[i]
        self._key_of.pop(i, None)  # its old task's events are ignored from now on
        started = self._started.pop(i, None)
        if self._cancelling:
            self._final(i, {"status": "cancelled", "error": reason})
            return
        if started is None:
            if st["requeues"] < REQUEUES:
                st["requeues"] += 1
                self._pending.appendleft(i)
                return
            reason = f"{reason}, each time before it started ({REQUEUES + 1} times)"
        with self._cond:
            self.failures.append({"index": i, "attempt": st["attempts"], "worker": (started or {}).get("worker"),
                                  "error": reason, "time": time.time()})
            st["status"] = "queued"
        if started is not None and st["attempts"] <= self.retries:
            with self._cond:
                self._live.pop(i, None)  # the next attempt's curve starts again from step 0
            self._pending.appendleft(i)
            return
        tries = f" (attempt {st['attempts']} of {self.retries + 1})" if self.retries else ""
        self._final(i, {"status": "failed", "error": f"{reason}{tries}"})

    def _final(self, i: int, result: dict) -> None:
        with self._cond:
            st = self._state[i]
            if st["status"] in FINAL:
                return  # ended already: never twice
            curve = result.pop("curve", None)
            if curve:
                self._curves[i] = curve
            result.pop("index", None)
            st.update(result)
            self._started.pop(i, None)
            self._key_of.pop(i, None)
            self._order.append(i)
            self._cond.notify_all()
            row = self._row(i)
        self._source.finish(i, row)
        for fn in list(self._on_result):
            _call(fn, row)

    def _row(self, i: int) -> dict:
        st, config = self._state[i], self.configs[i]
        return {"index": i, **self._shown[i], "seed": config.get("seed", 0), "status": st["status"],
                "error": st.get("error", ""), **{k: st.get(k) for k in METRICS},
                "attempts": st["attempts"], "worker": st.get("worker"), "name": st.get("name")}

    def _teardown(self) -> None:
        try:
            self.client.unsubscribe_topic(self._topic)
            unwatch_workers(self.client, self._uid)
            if self._cancelling:
                from distributed import Event

                Event(self._event, client=self.client).clear()
        except Exception:
            pass
        if self._own_client:
            self.client.close()
        if self._cluster is not None:
            self._cluster.close()

    def describe(self, i: int) -> str:
        """A configuration's swept settings, as messages show them."""
        return describe({**self.configs[i], **self._shown[i]}, [*self.columns, "seed"])


def _call(fn: Callable, *args) -> None:
    try:
        fn(*args)
    except Exception:  # a subscriber's fault must not stop the sweep
        import logging

        logging.getLogger(__name__).exception("a sweep subscriber failed")
