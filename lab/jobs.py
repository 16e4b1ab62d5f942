"""Long computations (a landscape grid, a Hessian density, a whole-model ESD): progress and cancel.

Every analysis that can take seconds takes `progress=`: True draws a tqdm bar (notebook or
terminal), False draws nothing, and a `Progress` object (what a dashboard's `Job` passes) is
updated in place so a UI can poll it. Cancelling sets the Progress's event; the analysis checks
it between units of work and stops, keeping what it has computed where its result allows that.
"""
from __future__ import annotations

import threading
from typing import Any, Callable

from tqdm.auto import tqdm


class Cancelled(Exception):
    """Raised by an analysis whose result means nothing when partial, after its Progress was cancelled."""


class Progress:
    """Units of work done of a total, a cancel flag, and optionally a tqdm bar."""

    def __init__(self, total: int = 0, desc: str = "", bar: bool = False):
        self.total, self.done, self.desc = int(total), 0, desc
        self._cancel = threading.Event()
        self._bar = tqdm(total=total, desc=desc, leave=False) if bar else None

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def cancel(self) -> None:
        self._cancel.set()

    def start(self, total: int, desc: str = "") -> Progress:
        """(Re)start counting toward `total`: a caller's Progress is reused by each analysis it runs."""
        self.total, self.done = int(total), 0
        self.desc = desc or self.desc
        if self._bar is not None:
            self._bar.reset(total=total)
            self._bar.set_description(self.desc)
        return self

    def update(self, n: int = 1) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 0.0

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def as_progress(progress: bool | Progress, total: int, desc: str) -> Progress:
    """The Progress an analysis reports to: the caller's, or a new one (with a tqdm bar if True)."""
    if isinstance(progress, Progress):
        return progress.start(total, desc)
    return Progress(total, desc, bar=bool(progress))


class Job:
    """One analysis on its own daemon thread, with a Progress a UI can poll and cancel.

    The function is called as fn(*args, progress=<Progress>, **kwargs); its return value lands in
    `result`, an exception in `error` (Cancelled too). A job never touches UI objects: a dashboard
    reads `done`, `progress` and `result` from its own periodic callback.
    """

    def __init__(self, fn: Callable[..., Any], *args, name: str = "trainlab-job", **kwargs):
        self.progress = Progress()
        self.result: Any = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(fn, args, kwargs), name=name, daemon=True)
        self._thread.start()

    def _run(self, fn, args, kwargs) -> None:
        from . import share

        shared = share.current()
        try:
            if shared is None:
                self.result = fn(*args, progress=self.progress, **kwargs)
                return
            self.progress.desc = f"waiting for one of the server's {shared.job_slots} analysis slots"
            with shared.job(cancelled=lambda: self.progress.cancelled) as got:
                if not got:
                    raise Cancelled("cancelled while waiting for an analysis slot")
                self.result = fn(*args, progress=self.progress, **kwargs)
        except BaseException as e:  # reported to the UI through `error`; nothing else would see it
            self.error = e

    @property
    def done(self) -> bool:
        return not self._thread.is_alive()

    @property
    def cancelled(self) -> bool:
        return self.progress.cancelled

    def cancel(self, wait: float | None = None) -> None:
        self.progress.cancel()
        if wait is not None:
            self._thread.join(wait)

    def wait(self, timeout: float | None = None) -> Any:
        """Block until done; return the result or raise the job's error."""
        self._thread.join(timeout)
        if self.error is not None:
            raise self.error
        return self.result
