"""The one way data gets from the training thread to the browser.

The training thread only appends to a History (lock-protected). Each session's UI owns a Feed:
its periodic callback (about 10 a second, whatever the step rate) pulls the rows logged since
its cursor and streams them into Bokeh ColumnDataSources, so plots gain points instead of
redrawing; snapshots (a decision boundary, later a landscape or a spectrum) replace their source's
data when a newer one arrives.

Why ColumnDataSource.stream and not HoloViews' Buffer -> DynamicMap: measured here, each Buffer
send cost 15-30 ms of HoloViews bookkeeping (element construction, range computation) per plot,
so a dashboard of seven curves spent 70+ ms of every 100 ms tick on it and slider events queued
behind; a ColumnDataSource.stream of the same rows costs about 0.03 ms.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import pandas as pd
import panel as pn
from bokeh.models import ColumnDataSource

from trainlab.history import History


class _Channel:
    def __init__(self, columns: dict[str, str], sparse: bool):
        self.columns = columns  # history column -> source column
        self.sparse = sparse  # rows lacking every value column are dropped (validation every k steps)
        self.source = ColumnDataSource({c: np.array([], dtype=float) for c in ["step", *columns.values()]})
        self.sent = 0

    def select(self, rows: pd.DataFrame) -> pd.DataFrame:
        out = pd.DataFrame({"step": rows["step"].astype(float)})
        for src, dst in self.columns.items():
            out[dst] = rows[src].astype(float) if src in rows else np.nan
        if self.sparse:
            out = out.dropna(how="all", subset=list(self.columns.values()))
        return out


def _columns(df: pd.DataFrame) -> dict[str, np.ndarray]:
    return {c: df[c].to_numpy() for c in df.columns}


class Feed:
    """Streams a History into ColumnDataSources on the owning session's periodic callback."""

    def __init__(self, history: History, period: int = 100, length: int = 10_000, max_rows_per_tick: int = 200):
        self.history, self.period, self.length, self.max_rows = history, period, length, max_rows_per_tick
        self._channels: list[_Channel] = []
        self._snapshots: list[list] = []  # [name, source, to_data, the (step, value) pair last drawn]
        self._listeners: list[Callable[[], None]] = []
        self.cursor, self.generation = -1, history.generation
        self._callback = None

    def source(self, columns: list[str] | dict[str, str], sparse: bool = False) -> ColumnDataSource:
        """A source of `step` and these history columns (a dict renames them for the plot)."""
        columns = columns if isinstance(columns, dict) else {c: c for c in columns}
        channel = _Channel(columns, sparse)
        self._channels.append(channel)
        if self.cursor >= 0:  # a plot added while the run trains (a lab tab opened) starts with the past
            self._rebase(channel)
        return channel.source

    def snapshot(self, name: str, to_data: Callable[[Any], dict], initial: Any) -> ColumnDataSource:
        """A source holding `to_data(newest snapshot under name)`, starting from `to_data(initial)`.
        Several sources may follow one snapshot (a curve and its marks)."""
        source = ColumnDataSource(to_data(initial))
        self._snapshots.append([name, source, to_data, None])
        return source

    def follows(self, name: str) -> bool:
        """Whether a source follows snapshot `name`."""
        return any(entry[0] == name for entry in self._snapshots)

    def snapshot_source(self, name: str) -> ColumnDataSource:
        """The first source that follows snapshot `name`."""
        return next(entry[1] for entry in self._snapshots if entry[0] == name)

    def on_tick(self, fn: Callable[[], None]) -> None:
        """Also call fn on every tick (status text, control values): UI work on the UI's thread."""
        self._listeners.append(fn)

    def tick(self) -> None:
        if self.history.generation != self.generation:  # reset or load: start the plots over
            self.generation, self.cursor = self.history.generation, -1
            for ch in self._channels:
                ch.source.data = {k: np.array([], dtype=float) for k in ch.source.data}
                ch.sent = 0
            for entry in self._snapshots:
                entry[3] = None
        first = self.cursor < 0
        rows = self.history.since(self.cursor)
        if len(rows):
            self.cursor = int(rows["step"].iloc[-1])
            # catching up on a run's past (a first tick, after a reset) may send up to half a
            # source's length; after that, at most max_rows a tick, whatever the step rate
            most = self.length // 2 if first else self.max_rows
            for ch in self._channels:
                part = _thin(ch.select(rows), most)
                if ch.sent + len(part) > self.length:
                    self._rebase(ch)
                elif len(part):
                    ch.source.stream(_columns(part))
                    ch.sent += len(part)
        for entry in self._snapshots:
            name, source, to_data, seen = entry
            snap = self.history.snapshot(name)
            # each put_snapshot stores a new (step, value) pair: two analyses at one step both redraw
            if snap is not None and snap is not seen:
                source.data = to_data(snap[1])
                entry[3] = snap
        for fn in self._listeners:
            fn()

    def _rebase(self, ch: _Channel) -> None:
        """Fill the source from the whole (thinned) history up to the cursor, at half its length (it was
        full, or it is new)."""
        rows = self.history.frame()
        if len(rows):  # only what was sent so far: later rows come with the next tick
            rows = rows[rows["step"] <= self.cursor]
        whole = _thin(ch.select(rows), self.length // 2)
        ch.source.data = _columns(whole)
        ch.sent = len(whole)

    def start(self) -> None:
        if self._callback is None:
            self._callback = pn.state.add_periodic_callback(self.tick, period=self.period)

    def stop(self) -> None:
        if self._callback is not None:
            self._callback.stop()
            self._callback = None

    @property
    def running(self) -> bool:
        return self._callback is not None and self._callback.running


def _thin(rows: pd.DataFrame, most: int) -> pd.DataFrame:
    """At most `most` rows, evenly spaced, always keeping the last."""
    if len(rows) <= most:
        return rows
    idx = np.unique(np.linspace(0, len(rows) - 1, most).round().astype(int))
    return rows.iloc[idx]
