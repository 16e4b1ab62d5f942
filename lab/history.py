"""The run's record: append-only rows with bounded memory, readable from any thread."""
from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pandas as pd


class History:
    """Rows of scalars keyed by step, plus the latest array of each snapshot (a decision boundary, an ESD).

    Past `max_rows`, the older part is thinned (every other row dropped) while the newest
    `keep_recent` rows stay whole, so a long run keeps its shape at bounded memory.
    Readers follow it with a cursor: `since(step)` returns the rows logged after `step`, and
    `generation` changes whenever the record is cleared or replaced.
    """

    def __init__(self, max_rows: int = 20_000, keep_recent: int = 5_000):
        if not 0 < keep_recent < max_rows:
            raise ValueError(f"need 0 < keep_recent < max_rows, got keep_recent={keep_recent}, max_rows={max_rows}")
        self.max_rows, self.keep_recent = max_rows, keep_recent
        self._lock = threading.Lock()
        self._rows: list[dict[str, Any]] = []
        self._snapshots: dict[str, tuple[int, np.ndarray]] = {}
        self.generation = 0

    def append(self, row: dict[str, Any]) -> None:
        with self._lock:
            self._rows.append(row)
            if len(self._rows) > self.max_rows:
                old, recent = self._rows[: -self.keep_recent], self._rows[-self.keep_recent :]
                self._rows = old[::2] + recent

    def put_snapshot(self, name: str, step: int, value: np.ndarray) -> None:
        with self._lock:
            self._snapshots[name] = (step, value)

    def snapshot(self, name: str) -> tuple[int, np.ndarray] | None:
        """(step, array) of the newest snapshot under `name`, or None."""
        with self._lock:
            return self._snapshots.get(name)

    def clear(self) -> None:
        with self._lock:
            self._rows, self._snapshots = [], {}
            self.generation += 1

    def __len__(self) -> int:
        return len(self._rows)

    @property
    def last_step(self) -> int:
        with self._lock:
            return self._rows[-1]["step"] if self._rows else -1

    def since(self, step: int) -> pd.DataFrame:
        """Rows logged after `step`, as a DataFrame."""
        with self._lock:
            i = len(self._rows)
            while i > 0 and self._rows[i - 1]["step"] > step:
                i -= 1
            rows = self._rows[i:]
        return pd.DataFrame.from_records(rows)

    def frame(self) -> pd.DataFrame:
        with self._lock:
            rows = list(self._rows)
        return pd.DataFrame.from_records(rows)

    def columns(self) -> dict[str, list]:
        """Column -> values (NaN where a row lacks it), for saving without pickling."""
        df = self.frame()
        return {c: df[c].tolist() for c in df.columns}

    def restore(self, columns: dict[str, list]) -> None:
        df = pd.DataFrame(columns)
        rows = [{k: v for k, v in r.items() if not (isinstance(v, float) and np.isnan(v))} for r in df.to_dict("records")]
        with self._lock:
            self._rows, self._snapshots = rows, {}
            self.generation += 1
