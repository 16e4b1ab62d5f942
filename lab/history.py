"""The run's record: append-only rows with bounded memory, readable from any thread."""
from __future__ import annotations

import threading
from collections import deque
from typing import Any

import numpy as np
import pandas as pd


class History:
    """Rows of scalars keyed by step, plus the latest array of each snapshot (a decision boundary, an ESD).

    Past `max_rows`, the older part is thinned while the newest `keep_recent` rows stay whole, so a long
    run keeps its whole shape at bounded memory. The older part stays evenly spaced: it holds every
    s-th row of each kind (rows with the same columns), and each time it fills, every other of those is
    dropped and s doubles. So a probe's rows every 10 steps and validation every 50 thin among
    themselves and every column keeps points from the start of the run to its end, at one density
    (halving the whole old part again and again would leave the start of a long run with almost
    nothing, and plots would join the gap with a line). Rows with an `event` are always kept.
    Readers follow it with a cursor: `since(step)` returns the rows logged after `step`, and
    `generation` changes whenever the record is cleared or replaced.
    """

    def __init__(self, max_rows: int = 20_000, keep_recent: int = 5_000):
        if not 0 < keep_recent < max_rows:
            raise ValueError(f"need 0 < keep_recent < max_rows, got keep_recent={keep_recent}, max_rows={max_rows}")
        self.max_rows, self.keep_recent = max_rows, keep_recent
        self._lock = threading.Lock()
        self._snapshots: dict[str, tuple[int, np.ndarray]] = {}
        self._listeners: list = []
        self.generation = 0
        self._reset([])

    def _reset(self, rows: list[dict[str, Any]]) -> None:
        self._old: list[dict[str, Any]] = rows[: -self.keep_recent] if len(rows) > self.keep_recent else []
        self._recent: deque[dict[str, Any]] = deque(rows[-self.keep_recent :] if rows else [])
        self._stride, self._counts = 1, {}

    def listen(self, fn) -> list[dict[str, Any]]:
        """Call `fn(row)` with every row appended from now on, and `fn(None)` when the record is cleared or
        replaced (then with each row it holds); returns the rows held now. For a follower that must miss
        nothing (the store's live recording): nothing is appended between the two."""
        with self._lock:
            self._listeners = [*self._listeners, fn]
            return [*self._old, *self._recent]

    def unlisten(self, fn) -> None:
        with self._lock:
            self._listeners = [f for f in self._listeners if f is not fn]

    def append(self, row: dict[str, Any]) -> None:
        with self._lock:
            for fn in self._listeners:
                fn(row)
            self._recent.append(row)
            if len(self._recent) > self.keep_recent:
                leaving = self._recent.popleft()
                kind = frozenset(leaving)
                n = self._counts.get(kind, 0)
                self._counts[kind] = n + 1
                if "event" in leaving or n % self._stride == 0:
                    self._old.append(leaving)
            if len(self._old) + len(self._recent) > self.max_rows:
                self._old = _halve(self._old)
                self._stride *= 2

    def put_snapshot(self, name: str, step: int, value: np.ndarray) -> None:
        with self._lock:
            self._snapshots[name] = (step, value)

    def snapshot_names(self) -> list[str]:
        with self._lock:
            return list(self._snapshots)

    def snapshot(self, name: str) -> tuple[int, np.ndarray] | None:
        """(step, array) of the newest snapshot under `name`, or None."""
        with self._lock:
            return self._snapshots.get(name)

    def clear(self) -> None:
        with self._lock:
            for fn in self._listeners:
                fn(None)
            self._reset([])
            self._snapshots = {}
            self.generation += 1

    def __len__(self) -> int:
        return len(self._old) + len(self._recent)

    @property
    def last_step(self) -> int:
        with self._lock:
            last = self._recent[-1] if self._recent else (self._old[-1] if self._old else None)
            return last["step"] if last else -1

    def last(self) -> dict[str, Any]:
        """The newest row (a copy; empty if none)."""
        with self._lock:
            last = self._recent[-1] if self._recent else (self._old[-1] if self._old else {})
            return dict(last)

    def since(self, step: int) -> pd.DataFrame:
        """Rows logged after `step`, as a DataFrame."""
        return pd.DataFrame.from_records(self.rows_since(step))

    def rows_since(self, step: int) -> list[dict[str, Any]]:
        """Rows logged after `step`, oldest first (the rows themselves: never change them)."""
        with self._lock:
            rows = []
            for r in reversed(self._recent):
                if r["step"] <= step:
                    break
                rows.append(r)
            else:
                for r in reversed(self._old):
                    if r["step"] <= step:
                        break
                    rows.append(r)
        return rows[::-1]

    def rows(self) -> list[dict[str, Any]]:
        """Every row held, oldest first (the rows themselves: never change them)."""
        with self._lock:
            return [*self._old, *self._recent]

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame.from_records(self.rows())

    def columns(self) -> dict[str, list]:
        """Column -> values (NaN where a row lacks it), for saving without pickling."""
        df = self.frame()
        return {c: df[c].tolist() for c in df.columns}

    def restore(self, columns: dict[str, list]) -> None:
        df = pd.DataFrame(columns)
        rows = [{k: v for k, v in r.items() if not (isinstance(v, float) and np.isnan(v))} for r in df.to_dict("records")]
        with self._lock:
            for fn in self._listeners:
                fn(None)
                for r in rows:
                    fn(r)
            self._reset(rows)
            self._snapshots = {}
            self.generation += 1


def _halve(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every other row of each kind (the same columns), in order; rows with an event are all kept."""
    count: dict[frozenset, int] = {}
    out = []
    for r in rows:
        if "event" in r:
            out.append(r)
            continue
        kind = frozenset(r)
        k = count.get(kind, 0)
        count[kind] = k + 1
        if k % 2 == 0:
            out.append(r)
    return out
