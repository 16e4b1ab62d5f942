"""Runs side by side: stored runs overlaid, their settings diffed, mid-run changes and best steps marked; save
the live run, reopen or fork a stored one, export the figure and the histories."""
from __future__ import annotations

import ast
import io
import os
import re
import time

import numpy as np
import pandas as pd
import panel as pn
import param
from bokeh.embed import file_html
from bokeh.models import ColumnDataSource, HoverTool
from bokeh.palettes import Category10_10
from bokeh.resources import INLINE

from trainlab import Run
from trainlab.store import Store
from trainlab.store.compare import best_steps, changes, lineage, settings_diff

from . import export, plots
from .base import LabPanel, plain
from .feed import Feed

STORE = os.environ.get("TRAINLAB_STORE", "runs")  # where the dashboard's Runs tab keeps runs
FOLLOW_S = 2.0  # seconds between redraws of the chosen runs while the live run, one of them, is recorded
LIVE = "the live run"  # the fork source that is not stored: never a store name (those have no spaces)


def parse_settings(text: str) -> dict:
    """ "lr=0.01, optimizer='adam'" → {"lr": 0.01, "optimizer": "adam"}; a bare word is a string."""
    out = {}
    for part in filter(None, (p.strip() for p in re.split(r",(?![^()]*\))", text))):
        key, sep, value = part.partition("=")
        if not sep or not key.strip().isidentifier():
            raise ValueError(f"fork settings: {part!r} is not name=value (say lr=0.01, optimizer=adam)")
        try:
            out[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            out[key.strip()] = value.strip()
    return out


class RunsPanel(LabPanel):
    """Stored runs (a `trainlab.store.Store`) compared, and the live run saved among them.

    Choose runs to overlay their curves of one metric, each run's best step marked (●), its mid-run changes
    (▼, with what changed on hover) and where a fork left its parent (◆); the table below lists only the
    settings that differ (as the runs ended) and every change with its step. *Save run* records the live run
    under a name from then on, a checkpoint every `checkpoint_every` steps (saved again: a checkpoint now).
    *Reopen* loads a stored run, weights, optimizer state and curves, to go on training it; *Fork* starts a new
    run from a stored one at a past step (the slider offers its checkpoints), or from the live run at one of
    its restore points (`Run.fork`; the slider follows them as the run takes new ones), with other settings
    (`lr=0.01, optimizer=adam`), applied before its next step: "what if I had lowered the lr at step 500?";
    the fork is recorded in the store beside its parent (a fork of the live run, when the live run is
    recorded). In the dashboard the reopened or forked run replaces the one shown (`opened`). Export: the chosen runs' histories as CSV or Parquet and the figure as standalone
    HTML; PNG/SVG and the live run's history from the Export card. A run this panel records is saved complete
    when the panel closes (the dashboard moved on to another run, or the page closed).
    """

    selected = param.List(default=[], doc="the stored runs overlaid")
    metric = param.String("val_loss", doc="the history column drawn")
    opened = param.ClassSelector(class_=Run, allow_None=True, doc="the run last reopened or forked")
    checkpoint_every = param.Integer(100, bounds=(1, None), softbounds=(10, 1000),
                                     doc="steps between the checkpoints of a recorded run (the steps a fork can start "
                                         "from)")

    def __init__(self, run: Run, feed: Feed | None = None, store: Store | str | None = None, **params):
        super().__init__(run, feed, **params)
        self.store = store if isinstance(store, Store) else Store(store or STORE)
        self.choose = pn.widgets.MultiChoice(label="runs", options=[], sizing_mode="stretch_width")
        self.choose.param.watch(lambda e: setattr(self, "selected", list(e.new)), "value")
        self.metric_choice = pn.widgets.Select(label="metric", options=[self.metric], value=self.metric)
        self.metric_choice.param.watch(lambda e: setattr(self, "metric", e.new), "value")
        self.name_input = pn.widgets.TextInput(label="save as", placeholder="a name (letters, digits, -_.)")
        self.save_button = pn.widgets.Button(label="Save run", color="primary", width=100)
        self.save_button.on_click(lambda e: self.save())
        self.every_control = self.control("checkpoint_every")
        self.pick = pn.widgets.Select(label="fork or reopen", options=[LIVE])
        self.pick.param.watch(lambda e: self._offer_steps(), "value")
        # the steps a fork can start from exactly: a step between two forks from the one before it
        self.fork_step = pn.widgets.DiscreteSlider(label="fork at step", options=[0], value=0,
                                                   sizing_mode="stretch_width")
        self.fork_steps = pn.pane.Markdown("", sizing_mode="stretch_width", styles={"font-size": "0.85em"})
        self.fork_input = pn.widgets.TextInput(label="fork with", placeholder="lr=0.01, optimizer=adam")
        self.reopen_button = pn.widgets.Button(label="Reopen", width=90)
        self.fork_button = pn.widgets.Button(label="Fork", width=90)
        self.reopen_button.on_click(lambda e: self.reopen(self.pick.value))
        self._points: list[int] | None = None  # the live run's restore points the slider offers
        self.fork_button.on_click(lambda e: self.fork(self.pick.value, self.fork_input.value, self.fork_step.value))
        self.refresh_button = pn.widgets.Button(label="Refresh", width=90)
        self.refresh_button.on_click(lambda e: self.refresh())
        self.note = pn.pane.Markdown("", sizing_mode="stretch_width")
        # plain HTML tables: they render in any page (a Tabulator needs its extension loaded by the page first)
        self.diff = pn.pane.DataFrame(pd.DataFrame(), sizing_mode="stretch_width", max_height=260)
        self.changes = pn.pane.DataFrame(pd.DataFrame(), index=False, sizing_mode="stretch_width", max_height=220)
        self.line_source = ColumnDataSource({"xs": [], "ys": [], "run": [], "color": []})
        self.best_source = ColumnDataSource({"step": [], "y": [], "run": [], "color": []})
        self.mark_source = ColumnDataSource({"step": [], "y": [], "run": [], "change": [], "color": []})
        self.fork_source = ColumnDataSource({"step": [], "y": [], "run": [], "parent": [], "color": []})
        self.fig = self._figure()
        downloads = [*export.downloads(self._histories, "histories", "Chosen runs"),
                     pn.widgets.FileDownload(callback=self._html, filename="runs.html", label="Figure HTML", width=130)]
        self.param.watch(lambda e: self._draw(), ["selected", "metric"])
        self._layout = self.layout(
            [pn.pane.Markdown(f"### Runs\nStored in `{plain(self.store.root)}`."), self.name_input,
             self.every_control.widget, self.save_button,
             pn.layout.Divider(), self.choose, self.metric_choice, self.refresh_button, pn.layout.Divider(),
             self.pick, self.fork_step, self.fork_steps, self.fork_input, pn.Row(self.reopen_button, self.fork_button),
             self.note,
             pn.layout.Divider(), pn.FlexBox(*downloads)],
            [self.fig],
            below=[pn.pane.Markdown("#### Settings that differ (as each run ended)"), self.diff,
                   pn.pane.Markdown("#### What changed mid-run, and when"), self.changes])
        self.refresh()
        recorded = self.store.recording(run)
        if recorded is not None:  # a run recorded here (a fork the dashboard now shows): drawn beside its parent
            parent = (run.parent or {}).get("run")
            self.choose.value = [n for n in (parent, recorded) if n in self.choose.options]
            self.pick.value = recorded
        self.feed.on_tick(self._follow_points)
        self.feed.on_tick(self._follow_recording)
        self._ready()

    # ---- the store ---------------------------------------------------------------------------
    def refresh(self) -> None:
        names = self.store.names()
        self.choose.options, self.pick.options = names, [LIVE, *names]
        self.choose.value = [n for n in self.choose.value if n in names]
        if self.pick.value not in self.pick.options:  # a Select left at None shows nothing, though Fork needs a source
            self.pick.value = LIVE
        self._offer_steps()
        self._draw()

    def _offer_steps(self) -> None:
        """The fork slider over the picked run's checkpoints, or the live run's restore points (the latest
        chosen), and which they are."""
        name = self.pick.value
        self.reopen_button.disabled = name == LIVE  # the live run is open already
        if name == LIVE:
            self._points = None
            self._follow_points()
            return
        try:
            steps = self.store.checkpoints(name) if name else [0]
        except ValueError as e:
            steps = [0]
            self.fork_steps.object = plain(str(e))
            return
        self.fork_step.options = steps
        self.fork_step.value = steps[-1]
        shown = ", ".join(map(str, steps)) if len(steps) <= 12 else \
            ", ".join(map(str, steps[:4])) + ", ..., " + ", ".join(map(str, steps[-4:]))
        self.fork_steps.object = plain(f"Checkpoints of {name} at steps {shown}." if name else "")

    def _follow_points(self) -> None:
        """On the Feed's tick, with the live run picked: the slider over its restore points as it takes new ones
        (left where the user put it while that point is kept, else moved to the nearest kept; at the newest, it
        follows the newest)."""
        if self.pick.value != LIVE:
            return
        steps = self.run.restore_points
        if steps == self._points:
            return
        newest = self._points is None or self.fork_step.value == self._points[-1]
        self._points = steps
        if not steps:
            self.fork_steps.object = "The live run keeps no restore point now (its loss is far off its usual level)."
            return
        chosen = self.fork_step.value
        value = steps[-1] if newest else min(steps, key=lambda s: abs(s - chosen))
        self.fork_step.param.update(options=steps, value=value)
        self.fork_steps.object = plain(
            f"Restore points of the live run at steps {', '.join(map(str, steps))}: the newest few it keeps, taken as "
            f"it trains and when settings change. A recorded run (Save run) forks at any of its checkpoints.")

    def _follow_recording(self) -> None:
        """On the Feed's tick: while the live run is recorded here and drawn, its curve grows as it trains (the
        store appends its history every 0.25 s; redrawn at most every FOLLOW_S seconds, since a redraw reads the
        chosen runs' histories)."""
        at, step = self._drawn
        if step is None or step >= self.run.steps or time.monotonic() - at < FOLLOW_S:
            return
        self._draw()

    def save(self, name: str | None = None) -> str | None:
        """Record the live run into the store (under the name typed, or a fresh one), a checkpoint every
        `checkpoint_every` steps from now on; saved again, a checkpoint now."""
        name = name or self.name_input.value.strip() or None
        try:
            if self.store.recording(self.run) is not None and name in (None, self.store.recording(self.run)):
                name = self.store.save(self.run)
            else:
                name = self.store.track(self.run, name, every=self.checkpoint_every).name
        except ValueError as e:
            self.report(str(e))
            return None
        self.report("")
        self.note.object = plain(f"Saved as {name} at step {self.run.steps}; recorded from now on, a checkpoint "
                                 f"every {self.checkpoint_every} steps.")
        self.refresh()
        self.choose.value = list(dict.fromkeys([*self.choose.value, name]))
        return name

    def reopen(self, name: str | None) -> Run | None:
        """The stored run `name`, loaded to go on training (and published as `opened`)."""
        if not name or name == LIVE:
            self.report("choose a stored run to reopen" + (" (the live run is open already)" if name else ""))
            return None
        try:
            run = self.store.load(name)
        except ValueError as e:
            self.report(str(e))
            return None
        self.report("")
        self.note.object = plain(f"Reopened {name} at step {run.steps}.")
        self.opened = run
        return run

    def fork(self, name: str | None, settings: str, step: int | None = None) -> Run | None:
        """A new run from the stored run `name` (or `LIVE`: the live run, at a restore point) at `step` (the latest
        when None) with other settings (checked before anything changes), recorded in the store as
        `<name>.fork-<step>` (a fork of the live run when the live run is recorded here)."""
        try:
            values = parse_settings(settings)
        except ValueError as e:
            self.report(str(e))
            return None
        if not name:
            self.report("choose a run to fork")
            return None
        live = name == LIVE
        try:
            run = self.run.fork(step, **values) if live else self.store.fork(name, step=step, **values)
        except ValueError as e:
            self.report(str(e))
            return None
        at = run.parent["step"]
        source = self.store.recording(self.run) if live else name
        child = None if source is None else self._free_name(f"{source}.fork-{at}")
        if child is not None:
            self.store.track(run, child, every=self.checkpoint_every)
        self.report("")
        point = "restore point" if live else "checkpoint"
        asked = f" (step {step} has no {point}: the nearest before it)" if step is not None and step != at else ""
        what = f"the live run ({source})" if live and source else "the live run" if live else name
        kept = f"recorded as {child}" if child else "not recorded (Save run first to keep the live run and its forks)"
        self.note.object = plain(f"Forked {what} at step {at}{asked}" + (f" with {settings}" if values else "")
                                 + f": {kept}.")
        self.refresh()
        if child is not None:
            self.choose.value = list(dict.fromkeys([*self.choose.value, source, child]))
        self.opened = run
        return run

    def _free_name(self, base: str) -> str:
        names, k = set(self.store.names()), 2
        name = base
        while name in names:
            name, k = f"{base}.{k}", k + 1
        return name

    def close(self) -> None:
        """The run this panel shows, if recorded live in its store, saved complete (the dashboard moved on)."""
        if self.store.recording(self.run) is not None:
            try:
                self.store.untrack(self.run)
            except ValueError:
                pass
        super().close()

    # ---- drawing ------------------------------------------------------------------------------
    def _figure(self):
        fig = plots.figure("Runs compared", "step", self.metric, hover=False, height=320)
        fig.multi_line("xs", "ys", source=self.line_source, color="color", legend_field="run", line_width=1.8)
        best = fig.scatter("step", "y", source=self.best_source, color="color", size=10, line_color="black")
        marks = fig.scatter("step", "y", source=self.mark_source, color="color", marker="inverted_triangle", size=11)
        forks = fig.scatter("step", "y", source=self.fork_source, color="color", marker="diamond", size=15,
                            line_color="black")
        fig.add_tools(HoverTool(renderers=[best], tooltips=[("run", "@run"), ("best at step", "@step"),
                                                            ("value", "@y{0.0000}")]))
        fig.add_tools(HoverTool(renderers=[marks], tooltips=[("run", "@run"), ("step", "@step"),
                                                             ("changed", "@change")]))
        fig.add_tools(HoverTool(renderers=[forks], tooltips=[("run", "@run"), ("forked from", "@parent"),
                                                             ("at step", "@step")]))
        plots.legend(fig, "top_right")
        self._placeholder = plots.placeholder(fig, "choose runs (save this one with Save run)")
        return fig

    def _draw(self) -> None:
        names = [n for n in self.selected if n in self.store.names()]
        history = self.store.history(names) if names else pd.DataFrame({"run": [], "step": []})
        recorded = self.store.recording(self.run)  # the live run's own curve, if drawn: the last step it has
        mine = history.step[history.run == recorded] if recorded in names else None
        self._drawn = (time.monotonic(), None if mine is None else (int(mine.max()) if len(mine) else 0))
        columns = [c for c in history.columns if c not in ("run", "step", "epoch", "time", "event")
                   and pd.api.types.is_numeric_dtype(history[c])]
        self.metric_choice.options = sorted(set(columns) | {self.metric})
        metric = self.metric
        lines = {"xs": [], "ys": [], "run": [], "color": []}
        colors = {n: Category10_10[i % 10] for i, n in enumerate(names)}
        for name in names:
            h = history[history.run == name]
            h = h.dropna(subset=[metric]) if metric in h else h.iloc[:0]
            lines["xs"].append(h["step"].to_numpy(float))
            lines["ys"].append(h[metric].to_numpy(float) if metric in h else np.array([]))
            lines["run"].append(name)
            lines["color"].append(colors[name])
        self.line_source.data = lines
        best = best_steps(history, metric) if names and metric in history else pd.DataFrame(
            columns=["run", "step", metric])
        self.best_source.data = {"step": best["step"].to_numpy(float), "y": best[metric].to_numpy(float),
                                 "run": best["run"].tolist(), "color": [colors[r] for r in best["run"]]}
        ch = changes(self.store, names) if names else pd.DataFrame(columns=["run", "step", "change"])
        ys = []
        for r, s in zip(ch["run"], ch["step"]):  # a change marked on its run's curve
            h = history[(history.run == r)].dropna(subset=[metric]) if metric in history else pd.DataFrame()
            ys.append(float(np.interp(s, h["step"], h[metric])) if len(h) else np.nan)
        self.mark_source.data = {"step": ch["step"].to_numpy(float), "y": np.asarray(ys, float),
                                 "run": ch["run"].tolist(), "change": ch["change"].tolist(),
                                 "color": [colors[r] for r in ch["run"]]}
        forks = lineage(self.store, names) if names else pd.DataFrame(columns=["run", "parent", "step"])
        ys = []
        for r, s in zip(forks["run"], forks["step"]):  # where the fork left its parent, on its curve
            h = history[(history.run == r) & (history.step <= s)].dropna(subset=[metric]) if metric in history \
                else pd.DataFrame()
            ys.append(float(h[metric].iloc[-1]) if len(h) else np.nan)
        self.fork_source.data = {"step": forks["step"].to_numpy(float), "y": np.asarray(ys, float),
                                 "run": forks["run"].tolist(), "parent": forks["parent"].tolist(),
                                 "color": [colors[r] for r in forks["run"]]}
        self.fig.yaxis.axis_label = metric
        self._placeholder.visible = not names
        self.diff.object = settings_diff(self.store, names) if len(names) > 1 else pd.DataFrame()
        self.changes.object = ch

    # ---- export -------------------------------------------------------------------------------
    def _histories(self) -> pd.DataFrame:
        return self.store.history(self.selected) if self.selected else pd.DataFrame({"run": [], "step": []})

    def _csv(self) -> io.BytesIO:
        return export.csv_bytes(self._histories())

    def _parquet(self) -> io.BytesIO:
        return export.parquet(self._histories())

    def _html(self) -> io.StringIO:
        return io.StringIO(file_html(self.fig, INLINE, "trainlab runs"))

    def __panel__(self):
        return self._layout
