"""One machine shared by many runs: turns at training, a step-rate cap, and slots for analysis jobs.

A served lab runs every session's training thread in the server's process, beside the event loop that
answers every page. Twenty threads stepping at once take the GIL from that loop (measured on the landed
main: 45 s for a page to show its Start button, minutes for a click to act). `Share` gives runs turns:
at most `concurrent` runs step at a time, each for a `slice` of seconds before the next waiting run's
turn (first come, first served), and a run whose settings just changed goes to the front, so the change
shows within a slice. `max_rate` caps any one run's steps per second. Jobs (landscapes, Hessians) wait
for one of `jobs` slots. `max_params` caps the size of a model a run may build.

Nothing is shared unless installed: `trainlab serve` installs one (`install(Share(...))`); a notebook's runs
train as fast as they can.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from contextlib import contextmanager
from typing import Iterator

_installed: Share | None = None


class Share:
    """Turns at training for the runs of one process (see the module's doc)."""

    def __init__(self, concurrent: int = 2, slice: float = 0.05, max_rate: float | None = None, jobs: int = 2,
                 max_params: int | None = None):
        for name, value, lo in (("concurrent", concurrent, 1), ("jobs", jobs, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < lo:
                raise ValueError(f"{name}={value!r} rejected: a whole number >= {lo}")
        if not 0 < slice <= 10:
            raise ValueError(f"slice={slice!r} rejected: seconds in (0, 10]")
        if max_rate is not None and not max_rate > 0:
            raise ValueError(f"max_rate={max_rate!r} rejected: steps per second > 0, or None for no cap")
        if max_params is not None and (isinstance(max_params, bool) or not isinstance(max_params, int) or max_params < 1):
            raise ValueError(f"max_params={max_params!r} rejected: a whole number >= 1, or None for no cap")
        self.concurrent, self.slice, self.max_rate, self.max_params = concurrent, float(slice), max_rate, max_params
        self._cond = threading.Condition()
        self._queue: deque[int] = deque()  # ids of runs waiting for a turn, in order
        self._holding: set[int] = set()
        self._asked: dict[int, float] = {}  # run id -> when it last asked for a turn
        self._jobs = threading.BoundedSemaphore(jobs)
        self.job_slots = jobs
        self._jobs_waiting = 0

    def check_model(self, parameters: int) -> None:
        """Refuse a model larger than this server allows (before it trains)."""
        if self.max_params is not None and parameters > self.max_params:
            raise ValueError(f"model rejected: it has {parameters:,} parameters and this server allows at most "
                             f"{self.max_params:,} (trainlab serve --max-params); choose a smaller width or depth")

    # ---- training turns --------------------------------------------------------------------
    def waiting(self, run) -> int | None:
        """How many runs are ahead of `run` in the queue (0: next), or None when it is not waiting."""
        with self._cond:
            try:
                return self._queue.index(id(run))
            except ValueError:
                return None

    @property
    def training(self) -> int:
        """Runs holding a turn now."""
        return len(self._holding)

    @property
    def queued(self) -> int:
        return len(self._queue)

    def contending(self, within: float = 2.0) -> int:
        """Runs that asked for a turn in the last `within` seconds: the ones training on this machine now."""
        now = time.monotonic()
        with self._cond:
            for k in [k for k, t in self._asked.items() if now - t > 10 * within]:
                del self._asked[k]  # runs long gone
            return sum(now - t <= within for t in self._asked.values())

    def _wait_turn(self, key: int, urgent, cancelled) -> bool:
        hurry = urgent if callable(urgent) else (lambda: urgent)
        with self._cond:
            self._asked[key] = time.monotonic()
            if hurry():
                self._queue.appendleft(key)
            else:
                self._queue.append(key)
            try:
                while True:
                    if self._queue[0] != key and hurry():  # a setting changed while it waited: next, not last
                        self._queue.remove(key)
                        self._queue.appendleft(key)
                    free = len(self._holding) < self.concurrent
                    ahead = self._queue.index(key)
                    if free and ahead < self.concurrent - len(self._holding):
                        self._queue.remove(key)
                        self._holding.add(key)
                        return True
                    if cancelled():
                        self._queue.remove(key)
                        return False
                    self._cond.wait(0.05)
            except BaseException:
                if key in self._queue:
                    self._queue.remove(key)
                raise

    def _release(self, key: int) -> None:
        with self._cond:
            self._holding.discard(key)
            self._cond.notify_all()

    @contextmanager
    def turn(self, run, urgent=False, cancelled=lambda: False) -> Iterator[float | None]:
        """Wait for a turn (at the front when `urgent`, a bool or a function looked at while it waits: a run
        whose setting changes while it waits moves to the front); yields the time the turn ends (None if
        `cancelled()` said to stop waiting: the run was paused meanwhile)."""
        key = id(run)
        got = self._wait_turn(key, urgent, cancelled)
        try:
            yield time.perf_counter() + self.slice if got else None
        finally:
            if got:
                self._release(key)

    def pace(self, started: float, steps: int) -> None:
        """Sleep as long as `steps` steps since `started` ran ahead of `max_rate`."""
        if self.max_rate is None:
            return
        ahead = started + steps / self.max_rate - time.perf_counter()
        if ahead > 0:
            time.sleep(ahead)

    # ---- analysis jobs ---------------------------------------------------------------------
    @contextmanager
    def job(self, cancelled=lambda: False) -> Iterator[bool]:
        """Hold one of the job slots while a job runs (yields False if cancelled while waiting)."""
        with self._cond:
            self._jobs_waiting += 1
        got = False
        try:
            while not (got := self._jobs.acquire(timeout=0.05)):
                if cancelled():
                    break
        finally:
            with self._cond:
                self._jobs_waiting -= 1
        try:
            yield got
        finally:
            if got:
                self._jobs.release()

    def try_job(self):
        """Take a job slot now if one is free, for something that holds it a long while (a sweep): a function
        releasing it (calling it again does nothing), or None when every slot is held."""
        if not self._jobs.acquire(blocking=False):
            return None
        held = [True]
        lock = threading.Lock()

        def release() -> None:
            with lock:
                if held[0]:
                    held[0] = False
                    self._jobs.release()

        return release

    @property
    def jobs_waiting(self) -> int:
        return self._jobs_waiting


def install(share: Share | None) -> Share | None:
    """Make `share` the process's (None: no sharing); returns the one it replaces."""
    global _installed
    old, _installed = _installed, share
    return old


def current() -> Share | None:
    return _installed
