"""The one way data gets from the training thread to the browser.

The training thread only appends to a History (lock-protected). Each session's UI owns a Feed: its
periodic callback pulls the rows logged since its cursor and streams them into Bokeh
ColumnDataSources, so plots gain points instead of redrawing; snapshots (a decision boundary, a
landscape, a spectrum) replace their source's data when a newer one arrives.

What the browser can keep up with sets the pace (measured in headless Chromium on a busy 2-core
machine: every update of a page's plots costs it ~150 ms whatever their size, so plots updated 10
times a second left a click waiting 1.6 s; twice a second, 0.2 s):
- plots get new data every `plot_every` ticks (2 a second), the listeners (status line, controls)
  every tick (10 a second); each tick's changes go out as one message (Panel's hold);
- plots of a hidden tab get nothing until it is shown, then catch up from the history at once;
- the pace follows the server's load: every page's ticks run on one event loop, and twenty pages each
  updating 10 times a second kept it busy all the time (measured: a slider's change waited behind them for
  over 30 s, 20 sessions on 2 cores). Past FULL_RATE_PAGES connected pages, an untouched page's status and
  plots slow down in proportion (the plots to the status's pace); a page whose settings just changed
  (`soon`) keeps the full rate for its next ticks, so its change is drawn as fast as with one page;
- each source holds at most `length` points: when full, it keeps every other point and from then on
  takes every other new row (a stride that doubles), so a long run's plot keeps its whole shape at
  bounded size, never re-reads the history while it streams, and never joins a gap with a line.

Why ColumnDataSource.stream and not HoloViews' Buffer -> DynamicMap: measured here, each Buffer
send cost 15-30 ms of HoloViews bookkeeping (element construction, range computation) per plot,
so a dashboard of seven curves spent 70+ ms of every 100 ms tick on it and slider events queued
behind; a ColumnDataSource.stream of the same rows costs about 0.03 ms.
"""
from __future__ import annotations

import contextlib
import math
import weakref
from typing import Any, Callable

import numpy as np
import panel as pn
from bokeh.models import ColumnDataSource
from panel.io.callbacks import PeriodicCallback

from trainlab.history import History

from .quiet import connections


FULL_RATE_PAGES = 2  # connected pages that all get the full rate (one served process)
CHASE_MS, CHASE_TRIES = 20, 25  # after a change: look for the run's next step every 20 ms, for half a second
_LIVE: weakref.WeakSet = weakref.WeakSet()  # the feeds of this process whose page is connected


def pace() -> int:
    """Ticks per update of an untouched page: 1 up to FULL_RATE_PAGES connected pages, then in proportion."""
    return max(1, math.ceil(len(_LIVE) / FULL_RATE_PAGES))


class _Channel:
    def __init__(self, columns: dict[str, str], sparse: bool, group: str | None, text: bool = False):
        self.columns = columns  # history column -> source column
        self.sparse = sparse or text  # rows lacking every value column are dropped (validation every k steps)
        self.text = text  # the columns hold strings (events), not numbers
        self.group = group  # the tab it is drawn in (None: always shown)
        self.source = ColumnDataSource({c: np.array([], dtype=float) for c in ["step", *columns.values()]})
        self.stride, self.seen, self.points, self.stale = 1, 0, 0, False

    def select(self, rows: list[dict[str, Any]]) -> Columns:
        """This channel's columns of `rows` (NaN where a row lacks a number, None where it lacks a text)."""
        # plain lists into numpy: per channel per tick, pandas' frame building and dropna cost most of a served
        # lab's event loop (measured with py-spy: 57 % of the feeds' time at 20 sessions)
        out = {"step": np.array([r["step"] for r in rows], dtype=float)}
        kind = object if self.text else float
        for src, dst in self.columns.items():
            out[dst] = np.array([r.get(src) for r in rows], dtype=kind)
        if self.sparse and len(rows):
            values = [out[dst] for dst in self.columns.values()]
            has = np.logical_or.reduce([v != None if self.text else ~np.isnan(v) for v in values])  # noqa: E711
            if not has.all():
                out = _take(out, np.flatnonzero(has))
        return out

    def keep(self, rows: Columns) -> Columns:
        """The rows this channel keeps at its stride: every stride-th row it has been offered."""
        n = _length(rows)
        idx = np.flatnonzero((self.seen + np.arange(n)) % self.stride == 0)
        self.seen += n
        return rows if len(idx) == n else _take(rows, idx)


Columns = dict[str, np.ndarray]  # a source's data: "step" and its columns, equally long


def _length(columns: Columns) -> int:
    return len(columns["step"])


def _take(columns: Columns, idx: np.ndarray) -> Columns:
    return {k: v[idx] for k, v in columns.items()}


class Feed:
    """Streams a History into ColumnDataSources on the owning session's periodic callback."""

    def __init__(self, history: History, period: int = 100, length: int = 4_000, max_rows_per_tick: int = 200,
                 plot_every: int = 5):
        self.history, self.period, self.length, self.max_rows = history, period, length, max_rows_per_tick
        self.plot_every = plot_every
        self._channels: list[_Channel] = []
        self._snapshots: list[list] = []  # [name, source, to_data, the (step, value) pair last drawn, group]
        self._listeners: list[Callable[[], None]] = []
        self.cursor, self.generation = -1, history.generation
        self._callback, self._ticks, self._group, self._heard = None, 0, None, False
        self._soon = -1  # plots go out on every tick up to this one (a setting just changed)
        self.visible: set[str | None] | None = None  # the groups shown (None: all)

    # ---- what follows the history --------------------------------------------------------------
    @contextlib.contextmanager
    def group(self, name: str):
        """Sources made inside the block belong to `name` (a dashboard tab): see `show`."""
        before, self._group = self._group, name
        try:
            yield
        finally:
            self._group = before

    def source(self, columns: list[str] | dict[str, str], sparse: bool = False) -> ColumnDataSource:
        """A source of `step` and these history columns (a dict renames them for the plot)."""
        columns = columns if isinstance(columns, dict) else {c: c for c in columns}
        return self._add(_Channel(columns, sparse, self._group))

    def marks(self, column: str = "event") -> ColumnDataSource:
        """A source of `step` and `text` for the rows that have `column` (the run's events: switches,
        rollbacks, schedule changes), to mark them on plots. Never thinned: events are rare."""
        return self._add(_Channel({column: "text"}, True, self._group, text=True))

    def _add(self, channel: _Channel) -> ColumnDataSource:
        self._channels.append(channel)
        if self.cursor >= 0:  # a plot added while the run trains (a lab tab opened) starts with the past
            self._rebase(channel)
        return channel.source

    def snapshot(self, name: str, to_data: Callable[[Any], dict], initial: Any) -> ColumnDataSource:
        """A source holding `to_data(newest snapshot under name)`, starting from `to_data(initial)`.
        Several sources may follow one snapshot (a curve and its marks)."""
        source = ColumnDataSource(to_data(initial))
        self._snapshots.append([name, source, to_data, None, self._group])
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

    def show(self, *groups: str | None) -> None:
        """Only these groups' plots (and those of no group) get data; a group shown again catches up."""
        shown = {None, *groups}
        for ch in self._channels:
            if ch.group in shown and ch.stale:
                self._rebase(ch)
        self.visible = shown

    @property
    def current_group(self) -> str | None:
        """The group sources made now belong to (the tab a lab is being built for)."""
        return self._group

    def shown(self, group: str | None) -> bool:
        """Whether plots of `group` are in view (a lab skips work only its hidden plots would show)."""
        return self.visible is None or group in self.visible

    # ---- ticks ---------------------------------------------------------------------------------
    def tick(self) -> None:
        """One whole update: new rows and snapshots for the shown plots, then the listeners, sent to the
        browser as one message (Panel's hold), so the page renders once however many plots changed."""
        with pn.io.hold():
            self._plots()
            self._listen()

    def _periodic(self) -> None:
        """The periodic callback: listeners every tick, plots every plot_every-th; nothing once the page
        that was listening has closed (its session lingers until Bokeh's cleanup)."""
        n = connections()
        if n:
            self._heard = True
            _LIVE.add(self)
        elif n == 0 and self._heard:
            _LIVE.discard(self)
            return
        self._ticks += 1
        urgent = self._ticks <= self._soon
        slow = 1 if urgent else pace()
        if self._ticks % slow:
            return
        with pn.io.hold():
            # slowed down, the plots go out with the status (both about once a second at 20 pages), so
            # the status line never runs seconds ahead of them
            if urgent or self._ticks % (max(1, self.plot_every // slow) * slow) == 0:
                self._plots()
            self._listen()

    @property
    def page_gone(self) -> bool:
        """Its served page connected and has closed since (the session lingers until Bokeh's cleanup)."""
        return self._heard and self not in _LIVE

    def soon(self, ticks: int = 10) -> None:
        """Plot on every tick for the next `ticks` (a setting changed: its effect is drawn within a tick of the
        step that applies it, not at the next of the plots' slower beats). In a served page, also one update as
        soon as the run has logged a step after this call (looked for every CHASE_MS): the change's first row is
        drawn without waiting for the next tick."""
        self._soon = self._ticks + ticks
        doc = pn.state.curdoc
        if doc is not None and getattr(doc, "session_context", None) is not None and self._callback is not None:
            self._chase(doc, self.history.last_step, self.history.generation, CHASE_TRIES)

    def _chase(self, doc, step: int, generation: int, tries: int) -> None:
        def look() -> None:
            if self._callback is None:  # stopped meanwhile (page closed, run replaced)
                return
            if self.history.last_step > step or self.history.generation != generation:
                self.tick()
            elif tries > 1:
                self._chase(doc, step, generation, tries - 1)

        doc.add_timeout_callback(look, CHASE_MS)

    def _listen(self) -> None:
        for fn in self._listeners:
            fn()

    def _plots(self) -> None:
        if self.history.generation != self.generation:  # reset or load: start the plots over
            self.generation, self.cursor = self.history.generation, -1
            for ch in self._channels:
                ch.source.data = {k: np.array([], dtype=float) for k in ch.source.data}
                ch.stride, ch.seen, ch.points, ch.stale = 1, 0, 0, False
            for entry in self._snapshots:
                entry[3] = None
        first = self.cursor < 0
        rows = self.history.rows_since(self.cursor)
        if rows:
            self.cursor = int(rows[-1]["step"])
            for ch in self._channels:
                if not self.shown(ch.group):
                    ch.stale = True  # caught up from the history when shown
                    continue
                # catching up on a run's past may send up to half a source's length; after that, at most
                # max_rows a tick, whatever the step rate
                part = _thin(ch.keep(ch.select(rows)), self.length // 2 if first else self.max_rows)
                if ch.points + _length(part) > self.length:
                    self._halve(ch, part)
                elif _length(part):
                    ch.source.stream(part)
                    ch.points += _length(part)
        for entry in self._snapshots:
            name, source, to_data, seen, group = entry
            if not self.shown(group):
                continue
            snap = self.history.snapshot(name)
            # each put_snapshot stores a new (step, value) pair: two analyses at one step both redraw
            if snap is not None and snap is not seen:
                source.data = to_data(snap[1])
                entry[3] = snap

    def _halve(self, ch: _Channel, part: Columns) -> None:
        """A full source keeps every other point, and the channel every other row from now on."""
        data = {k: np.concatenate([np.asarray(v), part[k]])[::2] for k, v in ch.source.data.items()}
        ch.stride *= 2
        ch.source.data = data
        ch.points = len(data["step"])

    def _rebase(self, ch: _Channel) -> None:
        """Fill the source from the whole (thinned) history up to the cursor, at half its length at most."""
        # only what was sent so far: later rows come with the next tick
        rows = ch.select([r for r in self.history.rows() if r["step"] <= self.cursor])
        ch.stride = 1
        while _length(rows) / ch.stride > self.length // 2:
            ch.stride *= 2
        ch.seen = 0
        whole = ch.keep(rows)
        ch.source.data = whole
        ch.points, ch.stale = _length(whole), False

    def start(self) -> None:
        if self._callback is None:
            # background: not counted in Panel's busy state, which every periodic callback otherwise updates twice
            # a tick through param watchers (a fifth of a served lab's event loop at 20 sessions, py-spy)
            self._callback = PeriodicCallback(callback=self._periodic, period=self.period, background=True)
            self._callback.start()

    def stop(self) -> None:
        _LIVE.discard(self)
        if self._callback is not None:
            self._callback.stop()
            self._callback = None

    @property
    def ticks(self) -> int:
        """How many periodic updates this feed has sent."""
        return self._ticks

    @property
    def running(self) -> bool:
        return self._callback is not None and self._callback.running


def _thin(rows: Columns, most: int) -> Columns:
    """At most `most` rows, evenly spaced, always keeping the last."""
    n = _length(rows)
    if n <= most:
        return rows
    return _take(rows, np.unique(np.linspace(0, n - 1, most).round().astype(int)))
