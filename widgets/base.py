"""What every lab panel shares: a run, the session's Feed, its probes, its jobs, its own settings.

- `use_probe(cls, **kw)`: the run's probe of that class, added if it lacks one and removed again when
  the panel closes (a tab that is gone measures nothing).
- `run_job(fn, slot, **options)`: one of `trainlab.live`'s analyses on a Job thread, with the slot's
  progress bar, Cancel button and status line; its results reach the plots as history snapshots.
- `control(name)`: a widget bound both ways to one of the panel's own param settings.
- `layout(sidebar, figures)`: every lab's page: the controls in a column (ending with the Export card:
  the run's history and the newest result of each job the panel declares in `job_results` as CSV/Parquet,
  the plots as PNG/SVG), the plots in a grid that uses the width.
- `hint(fig, source, text)`: an empty plot says what fills it (and shows no legend) until data arrives.
"""
from __future__ import annotations

import html
import weakref
from functools import partial
from typing import Any, Callable

import numpy as np
import panel as pn
import param
from bokeh.models import LayoutDOM
from panel.viewable import Viewer

from trainlab import Run, live
from trainlab.jobs import Cancelled, Job
from trainlab.probes import Probe

from . import export, plots
from .controls import Control
from .feed import Feed
from .text import Status, Text

SIDEBAR = 300  # pixels: a lab's controls; two grid cells fit beside it and the dashboard's own in 1,400


def plain(text: str) -> str:
    """User-provided or error text made safe to show in Markdown/HTML panes (nothing in it is markup)."""
    return html.escape(str(text), quote=False)


class JobSlot:
    """One kind of computation in a panel: the buttons that start it, a Cancel button, a progress bar
    and a status line, all driven from the Feed's tick (the job itself never touches them)."""

    def __init__(self, label: str, buttons: list[pn.widgets.Button] | None = None,
                 describe: Callable[[Job], str] | None = None):
        self.label, self.buttons, self.describe = label, list(buttons or []), describe
        self.job: Job | None = None
        self.bar = pn.indicators.Progress(value=0, max=100, visible=False, sizing_mode="stretch_width", height=14)
        self.cancel_button = pn.widgets.Button(label="Cancel", width=80, disabled=True)
        self.cancel_button.on_click(lambda e: self.cancel())
        self.status = Text("", sizing_mode="stretch_width")
        self._shown: tuple | None = None

    @property
    def running(self) -> bool:
        return self.job is not None and not self.job.done

    def cancel(self, wait: float | None = None) -> None:
        if self.job is not None:
            self.job.cancel(wait)

    def tick(self) -> None:
        job, running = self.job, self.running
        state = (id(job), running, int(100 * job.progress.fraction) if running else None)
        if state == self._shown:
            return
        self._shown = state
        self.bar.visible = running
        self.cancel_button.disabled = not running
        for b in self.buttons:
            b.disabled = running
        if job is None:
            return
        if running:
            self.bar.value = state[2]
            text = f"{self.label}: {job.progress.desc or 'computing'} …"
        elif job.cancelled or isinstance(job.error, Cancelled):
            text = f"{self.label}: cancelled (the last complete result stays)"
        elif job.error is not None:
            text = f"{self.label} failed: {type(job.error).__name__}: {job.error}"
        else:
            text = self.describe(job) if self.describe else f"{self.label}: done"
        self.status.object = plain(text)

    def panel(self) -> pn.Column:
        # the buttons wrap in a narrow sidebar instead of running past it ("Top-k eigenvalues, Trace, Densi")
        return pn.Column(pn.FlexBox(*self.buttons), pn.Row(self.cancel_button, self.bar), self.status,
                         sizing_mode="stretch_width")


def _result_frame(table: str, got: tuple[int, Any]) -> Any:
    return live.table(table, got[1], got[0])


def _result_name(table: str, got: tuple[int, Any]) -> str:
    return f"{table.replace('/', '-')}-step{got[0]}"


# per run: the probes panels added, and how many open panels use each (two views of one run share them)
_USERS: weakref.WeakKeyDictionary[Run, dict[int, int]] = weakref.WeakKeyDictionary()


class LabPanel(Viewer):
    """A panel over one Run that reads it through a Feed (the one way data reaches the browser).

    Inside the served dashboard it is given the dashboard's Feed and registers its sources and
    tick listeners there; on its own (a notebook cell) it makes, fills and starts a Feed of its own.
    """

    run = param.ClassSelector(class_=Run, doc="the run this panel reads and controls")
    error = param.String("", doc="the last rejected change, shown until the next accepted one")

    # the jobs' results the Export card offers: label -> (a table of trainlab.live.TABLES, what makes it)
    job_results: dict[str, tuple[str, str]] = {}

    def __init__(self, run: Run, feed: Feed | None = None, **params):
        super().__init__(run=run, **params)
        self._own_feed = feed is None
        self.feed = Feed(run.history) if feed is None else feed
        self.group = self.feed.current_group  # the dashboard tab this panel is built for (None: its own)
        self.slots: dict[str, JobSlot] = {}
        self._added: list[Probe] = []
        self.alert = Status("", alert_type="danger", visible=False, sizing_mode="stretch_width")
        self._hints: list[tuple] = []
        self._page_figures: list = []
        self.feed.on_tick(self._tick_slots)

    def _ready(self) -> None:
        """Call at the end of a subclass's __init__: a panel with its own Feed starts it."""
        if self._own_feed:
            self.feed.tick()  # the run's past before the first render
            self.feed.start()

    # ---- probes --------------------------------------------------------------------------------
    def use_probe(self, cls: type[Probe], **kw) -> Probe:
        """The run's probe of exactly this class, or a new one made with `kw`. A probe that panels added
        is removed when the last panel using it closes; one the run had of its own stays."""
        users = _USERS.setdefault(self.run, {})
        probe = next((p for p in self.run.probes if type(p) is cls), None)
        if probe is None:
            probe = self.run.add_probe(cls(**kw))
            users[id(probe)] = 0
        if id(probe) in users:
            users[id(probe)] += 1
            self._added.append(probe)
        return probe

    def add_probe(self, probe: Probe) -> Probe:
        """A probe of this panel's own on the run (a toggle turned on), removed by drop_probe or close()."""
        _USERS.setdefault(self.run, {})[id(probe)] = 1
        self._added.append(self.run.add_probe(probe))
        return probe

    def drop_probe(self, probe: Probe) -> None:
        """This panel no longer uses `probe`; the last panel to let a panel-added probe go removes it."""
        if probe not in self._added:
            return
        self._added.remove(probe)
        users = _USERS.get(self.run, {})
        users[id(probe)] = users.get(id(probe), 1) - 1
        if users[id(probe)] <= 0:
            users.pop(id(probe), None)
            self.run.remove_probe(probe)

    # ---- jobs ----------------------------------------------------------------------------------
    def job_slot(self, name: str, label: str, buttons: list | None = None,
                 describe: Callable[[Job], str] | None = None) -> JobSlot:
        slot = self.slots[name] = JobSlot(label, buttons, describe)
        return slot

    def run_job(self, fn: Callable[..., Any], slot: str = "job", **options) -> Job:
        """`trainlab.live.compute(fn, run, **options)` on a Job thread in `slot` (one job at a time there:
        a running one is returned as is)."""
        s = self.slots[slot]
        if s.running:
            return s.job
        s.job = Job(live.compute, fn, self.run, name=f"trainlab-{getattr(fn, '__name__', 'job')}", **options)
        s.tick()
        return s.job

    def _tick_slots(self) -> None:
        for s in self.slots.values():
            s.tick()
        for fig, note, source, needs in self._hints:
            if needs:  # these columns must hold a number (a sparse source's other columns fill regardless)
                empty = not all(np.isfinite(np.asarray(source.data[c], dtype=float)).any() for c in needs)
            else:
                empty = not any(len(v) for k, v in source.data.items() if k != "step")  # all-NaN counts as data here
            if note.visible != empty:
                note.visible = empty
            for box in fig.legend:  # an empty plot's legend lists lines nobody can see, beside the note
                if box.visible == empty:
                    box.visible = not empty

    def hint(self, fig, source, text: str, needs: tuple[str, ...] = ()):
        """Say on `fig` what fills it ("press LR range test") while `source` is empty (or, with `needs`, while
        those columns hold no number); its legend shows only once there is something to tell apart."""
        self._hints.append((fig, plots.placeholder(fig, text), source, tuple(needs)))
        self._tick_slots()
        return fig

    def layout(self, sidebar: list, figures: list, below: list = ()) -> pn.Row:
        """Every lab's layout: its controls in a column on the left, ending with the Export card; its plots
        in a grid that wraps in the width left (as many to a row as fit, see plots.GRID_CELL)."""
        panes = [pn.pane.Bokeh(f) if isinstance(f, LayoutDOM) else f for f in figures]
        for fig in export.figures_in(figures):
            plots.tidy(fig)
        self._page_figures = [*figures, *below]
        sidebar = [*sidebar, export.card(lambda: self.run.history.frame(), self.figures_shown,
                                         results=self.results(), refresh=self.feed.on_tick)]
        return pn.Row(pn.Column(*sidebar, width=SIDEBAR),
                      pn.Column(self.alert, pn.FlexBox(*panes, sizing_mode="stretch_width"), *below,
                                sizing_mode="stretch_width"),
                      sizing_mode="stretch_width")

    def results(self) -> list[export.Result]:
        """The Export card's job results: each of `job_results`, its newest snapshot as `trainlab.live.table`'s frame,
        the file named after the table and the step it was computed at."""
        out = []
        for label, (table, missing) in self.job_results.items():
            out.append(export.Result(
                label, partial(live.latest, self.run, table), partial(_result_frame, table),
                partial(_result_name, table), missing, describe=lambda got: f"computed at step {got[0]}"))
        return out

    def figures_shown(self) -> list:
        """The Bokeh figures of this panel's page now (a view switch may have swapped some)."""
        return export.figures_in(self._page_figures)

    # ---- own settings --------------------------------------------------------------------------
    def control(self, name: str) -> Control:
        """A widget for the panel's own setting `name`, bound both ways: moving it sets the param, and
        setting the param from Python moves it. A value outside the param's bounds is refused and shown."""
        ctl = Control(self, name, self._set_own)
        self.param.watch(lambda e: ctl.show(e.new), name)
        return ctl

    def _set_own(self, name: str, value: Any) -> None:
        try:
            setattr(self, name, value)
        except ValueError as e:
            self.report(str(e))
            self.param.trigger(name)  # the widget goes back to the value kept
            return
        self.report("")

    def report(self, error: str) -> None:
        """Show a refusal (escaped) in the panel's alert, or hide it."""
        self.error = error
        self.alert.object, self.alert.visible = (f"Rejected: {plain(error)}", True) if error else ("", False)

    def set_run(self, **values: Any) -> bool:
        """Hand a change to run.set; a refusal is reported and nothing changes (False)."""
        try:
            self.run.set(**values)
        except ValueError as e:
            self.report(str(e))
            return False
        self.feed.soon()
        self.report("")
        return True

    def close(self) -> None:
        """Cancel running analyses, remove the probes it added, stop an own Feed (a session ended, or the
        run was replaced)."""
        for s in self.slots.values():
            s.cancel()
        for probe in list(self._added):
            self.drop_probe(probe)
        if self._own_feed:
            self.feed.stop()
