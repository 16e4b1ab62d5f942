"""Dashboards built ahead of the people who will open them.

Building a session's page on the server's event loop costs about 0.45 s (on this 2-core test machine): a
fresh Run and its dashboard (0.2 s), then Panel's Bokeh models and their serialization (0.25 s). When a class
opens the lab at once, the twentieth page waited for all nineteen before it (10 s, measured with
benchmarks/classroom.py). `Ready` keeps up to `size` dashboards built while the server is quiet, on a thread
of their own (no document is involved until a page takes one), so a page arriving pays only for its models.

It builds while nobody has taken one for `quiet` seconds (during an arrival the event loop needs the CPU for
the pages themselves) and no run is training (`busy()`: a build holds the GIL the training runs and the event
loop share; building without rests raised the slider-to-plot p95 of 20 training sessions from 0.3 s to 0.8 s,
and with rests it still set the tail), and then rests `pace` times as long as each build took. A class's pool
refills between lessons; a latecomer during one has a page built for them. Each waiting dashboard is an idle
Run (no thread) and its widgets: about 4 MiB.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable

log = logging.getLogger(__name__)


class Ready:
    """`take()` a dashboard built by `build()` (None while none is ready); refilled up to `size` in the background."""

    def __init__(self, build: Callable[[], object], size: int, quiet: float = 10.0, pace: float = 3.0,
                 on_full: Callable[[int], None] | None = None, busy: Callable[[], bool] = lambda: False,
                 room: Callable[[], int] | None = None):
        if size < 0:
            raise ValueError(f"size (dashboards built ahead) must be >= 0, got {size}")
        self.build, self.size, self.quiet, self.pace, self.on_full = build, size, quiet, pace, on_full
        self.busy = busy
        self.room = room or (lambda: self.size)  # how many to keep (pages made ahead from them count against it)
        self._items: list = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._taken_at = float("-inf")
        self._closed = False
        self._thread: threading.Thread | None = None

    def start(self) -> "Ready":
        if self.size and self._thread is None:
            self._thread = threading.Thread(target=self._fill, name="trainlab-ready", daemon=True)
            self._thread.start()
        return self

    def take(self, arrival: bool = True):
        """A dashboard built ahead, or None. `arrival`: a page asked for it now (building waits for `quiet`);
        False for one taken to make a page ahead while the server is idle."""
        with self._lock:
            if arrival:
                self._taken_at = time.monotonic()
            item = self._items.pop() if self._items else None
        self._wake.set()
        return item

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def close(self) -> None:
        self._closed = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(30)

    def _fill(self) -> None:
        while not self._closed:
            with self._lock:
                full, since = len(self._items) >= self.room(), time.monotonic() - self._taken_at
            if full:
                self._wake.wait(1.0)  # a take wakes it; so does, within a second, room made elsewhere
                self._wake.clear()
            elif since < self.quiet:
                time.sleep(self.quiet - since)
            elif self.busy():  # runs are training: a build would take the GIL from them and their pages
                time.sleep(1.0)
            else:
                began = time.perf_counter()
                try:
                    item = self.build()
                except Exception:  # a page built on demand will say what failed; keep serving
                    log.exception("building a dashboard ahead failed")
                    return
                took = time.perf_counter() - began
                with self._lock:
                    self._items.append(item)
                    now_full = len(self._items) == self.room()
                if now_full and self.on_full is not None:
                    self.on_full(len(self))
                self._wake.clear()
                self._wake.wait(self.pace * took)  # cut short by a take (then the quiet time counts) or a close
