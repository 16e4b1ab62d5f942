"""The optimizer lab: the lr schedule drawn ahead of time, the LR range test, and the optimizer's internals."""
from __future__ import annotations

from typing import Any

import numpy as np
import panel as pn
import param
from bokeh.models import ColumnDataSource, Span
from bokeh.palettes import Category10_10
from bokeh.plotting import figure

from trainlab import Run
from trainlab.jobs import Job
from trainlab.lr_finder import RangeTest, lr_range_test
from trainlab.probes import EffectiveStep, Probe, ScaleInvariantNorm, SecondMoment, UpdateRatio
from trainlab.registry import LogNumber
from trainlab.schedules import as_schedule, preview, schedules

from . import plots
from .base import LabPanel
from .controls import Control
from .feed import Feed

RANGE = "lr_range_test"  # history snapshots the range test's result is published under
MARKS = "lr_range_test/marks"


def _curve(result: dict | None) -> dict[str, np.ndarray]:
    if not result:
        return {"lr": np.array([]), "loss": np.array([]), "trend": np.array([])}
    return {"lr": result["lr"], "loss": result["loss"], "trend": result["trend"]}


def _marks(marks: dict | None) -> dict[str, list]:
    return marks or {"lr": [], "loss": [], "label": [], "color": []}


def _histogram(layers: list[str]):
    """Snapshot of SecondMoment -> step-line columns: bin centres and one count column per layer."""

    def to_data(snap: dict | None) -> dict[str, np.ndarray]:
        if not snap:
            return {"x": np.array([]), **{layer: np.array([]) for layer in layers}}
        edges = snap["edges"]
        zeros = np.zeros(len(edges) - 1)
        return {"x": (edges[:-1] + edges[1:]) / 2,
                **{layer: np.asarray(snap["counts"].get(layer, zeros), float) for layer in layers}}

    return to_data


class OptimizerPanel(LabPanel):
    """Schedule chooser with its lr curve ahead of time, the LR range test, and live optimizer internals.

    Creating it turns on the internals probes the run lacks (effective step size, update ratio,
    scale-invariant weight norms, second moments). The LR range test runs as a Job on a copy of the
    run (the run keeps training); "Apply" sets its suggestion as the run's base lr.
    """

    range_start = LogNumber(1e-7, bounds=(0, None), inclusive_bounds=(False, True), softbounds=(1e-8, 1e-2),
                            doc="lr the range test starts from")
    range_end = LogNumber(10.0, bounds=(0, None), inclusive_bounds=(False, True), softbounds=(1e-2, 100),
                          doc="lr the range test ends at (it stops earlier when the loss explodes)")
    range_steps = param.Integer(200, bounds=(10, None), softbounds=(50, 1000), doc="steps of the range test")
    error = param.String("", doc="the last rejected change, shown until the next accepted one")

    def __init__(self, run: Run, feed: Feed | None = None, **params):
        super().__init__(run, feed, **params)
        self.probes = {cls: self._probe(cls, every) for cls, every in
                       ((EffectiveStep, 25), (UpdateRatio, 25), (ScaleInvariantNorm, 10), (SecondMoment, 50))}
        self.result: RangeTest | None = None
        self._job: Job | None = None
        self._consumed = True
        self.notes = pn.pane.Markdown("", sizing_mode="stretch_width")
        self.status = pn.pane.Alert("", alert_type="secondary", sizing_mode="stretch_width", visible=False)

        # schedule: chooser, its declared options, the lr curve ahead of time
        self.schedule_select = pn.widgets.Select(label="schedule", options=schedules.names(), value=run.schedule[0])
        self.schedule_select.param.watch(self._choose, "value")
        self._options = pn.Column(sizing_mode="stretch_width")
        self._shown: tuple | None = None
        self._preview = ColumnDataSource({"step": np.array([]), "lr": np.array([])})
        self._preview_key: tuple | None = None
        self._now = Span(location=run.steps, dimension="height", line_color="#555555", line_dash="dashed")
        used = self.feed.source(["lr"])
        fig = plots._figure("Learning rate: schedule ahead, lr used", "learning rate")
        fig.line("step", "lr", source=self._preview, color="#999999", line_width=2, line_dash="dotted",
                 legend_label="schedule")
        fig.line("step", "lr", source=used, color=plots.TRAIN, line_width=2, legend_label="used")
        fig.add_layout(self._now)
        plots._legend(fig, "top_right")
        self.schedule_figure = fig

        # LR range test
        self.range_controls = {n: Control(self, n, self._set_own) for n in ("range_start", "range_end", "range_steps")}
        self.range_button = pn.widgets.Button(label="LR range test", color="primary", width=115)
        self.cancel_button = pn.widgets.Button(label="Cancel", width=75, disabled=True)
        self.apply_button = pn.widgets.Button(label="Apply", color="success", width=75, disabled=True)
        self.range_button.on_click(lambda e: self.start_range_test())
        self.cancel_button.on_click(lambda e: self._job and self._job.cancel())
        self.apply_button.on_click(lambda e: self.apply_suggestion())
        self.bar = self.progress_bar()
        self.range_text = pn.pane.Markdown("", sizing_mode="stretch_width")
        self.range_curve = self.feed.snapshot(RANGE, _curve, None)
        self.range_marks = self.feed.snapshot(MARKS, _marks, None)
        fig = figure(title="LR range test", x_axis_type="log", y_axis_type="log", x_axis_label="learning rate",
                     y_axis_label="training loss", tools="pan,wheel_zoom,box_zoom,reset,save", **plots._SIZE)
        fig.toolbar.logo = None
        fig.scatter("lr", "loss", source=self.range_curve, color=plots.TRAIN, alpha=0.25, size=3, legend_label="loss")
        fig.line("lr", "trend", source=self.range_curve, color=plots.TRAIN, line_width=2, legend_label="smoothed")
        fig.scatter("lr", "loss", source=self.range_marks, color="color", size=11, marker="diamond")
        fig.text("lr", "loss", text="label", source=self.range_marks, text_font_size="9pt", text_align="right",
                 x_offset=-8, y_offset=-4)
        plots._legend(fig, "bottom_left")
        self.range_figure = fig

        # internals
        self.figures = [self.schedule_figure, self.range_figure, *self._internals()]
        self.feed.on_tick(self._tick)
        self._tick()
        sidebar = pn.Column(
            pn.pane.Markdown("### Schedule"), self.schedule_select, self._options,
            pn.pane.Markdown("### LR range test"), *(c.widget for c in self.range_controls.values()),
            pn.Row(self.range_button, self.cancel_button, self.apply_button), self.bar, self.range_text,
            width=320,
        )
        self._layout = pn.Row(sidebar, pn.Column(self.status, self.notes, pn.FlexBox(*(pn.pane.Bokeh(f) for f in self.figures),
                                                                         sizing_mode="stretch_width"),
                                                 sizing_mode="stretch_width"), sizing_mode="stretch_width")
        self._ready()

    # ---- building ---------------------------------------------------------------------------
    def _probe(self, cls: type[Probe], every: int) -> Probe:
        """The run's probe of this kind, added if it has none (the panel turns its instruments on)."""
        found = next((p for p in self.run.probes if type(p) is cls), None)
        return found if found is not None else self.run.add_probe(cls(every))

    def _internals(self) -> list:
        feed, layers = self.feed, list(self.run.layers)

        def per_layer(prefix: str, title: str, ylabel: str, names: list[str], log: bool = True):
            source = feed.source({f"{prefix}/{n}": n for n in names}, sparse=True)
            return plots.per_layer(title, ylabel, source, names, log=log)

        figs = [
            per_layer("effective_lr", "Effective step size ‖Δw‖/‖g‖", "effective lr", layers),
            per_layer("update_ratio", "Update / weight ‖Δw‖/‖w‖", "update ratio", layers),
        ]
        invariant = self.probes[ScaleInvariantNorm].layers(self.run)
        if invariant:
            figs.append(per_layer("scale_invariant_norm", "Norm of scale-invariant weights", "‖w‖", invariant, log=False))
        else:
            self.notes.object = ("*Scale-invariant weights*: no layer of this model feeds a normalization layer; "
                                 "choose a model with norm batchnorm or layernorm to see their norms grow.")
        figs.append(per_layer("second_moment", "Second moment v̂: median per layer", "median v̂", layers))
        hist = feed.snapshot("second_moment", _histogram(layers), None)
        fig = figure(title="Second moment v̂: distribution", x_axis_label="log10 v̂", y_axis_label="weights",
                     tools="pan,wheel_zoom,box_zoom,reset,save", **plots._SIZE)
        fig.toolbar.logo = None
        for i, layer in enumerate(layers):
            fig.step("x", layer, source=hist, mode="center", color=Category10_10[i % 10], legend_label=layer, line_width=1.5)
        plots._legend(fig, "top_right")
        figs.append(fig)
        return figs

    def _build_options(self) -> None:
        """Controls for the options the current schedule declares."""
        name, values = self._shown = self.run.schedule
        self._horizon = max(1000, int(1.1 * (as_schedule(self._shown).horizon or 0)))  # steps the preview shows
        if self.schedule_select.value != name:
            self._choosing = True
            try:
                self.schedule_select.value = name
            finally:
                self._choosing = False
        opts = schedules[name].options(**values)
        self.schedule_controls = {n: Control(opts, n, self._set_option) for n in schedules[name].params}
        self._options.objects = [c.widget for c in self.schedule_controls.values()]

    # ---- events -----------------------------------------------------------------------------
    _choosing = False

    def _report(self, error: str) -> None:
        self.error = error
        self.status.object, self.status.visible = (f"Rejected: {error}", True) if error else ("", False)
        self.status.alert_type = "danger"

    def _set(self, **values: Any) -> bool:
        try:
            self.run.set(**values)
        except ValueError as e:
            self._report(str(e))
            return False
        self._report("")
        return True

    def _choose(self, event) -> None:
        """A schedule chosen: the options it shares with the current one carry over."""
        if self._choosing:
            return
        old = self.run.schedule[1]
        carried = {k: v for k, v in old.items() if k in schedules[event.new].params}
        if not self._set(schedule=(event.new, carried)) and not self._set(schedule=event.new):
            self._choosing = True
            event.obj.value = event.old
            self._choosing = False
        self._tick()

    def _set_option(self, name: str, value: Any) -> None:
        spec_name, values = self.run.schedule
        if not self._set(schedule=(spec_name, {**values, name: value})):
            self.schedule_controls[name].show(values[name])
        self._tick()

    def _set_own(self, name: str, value: Any) -> None:
        setattr(self, name, value)

    def start_range_test(self) -> Job | None:
        """Run the LR range test as a Job (one at a time); the tick publishes its result."""
        if self._job is not None and not self._job.done:
            return None
        if self.range_start >= self.range_end:
            self._report(f"range start ({self.range_start:g}) must be below its end ({self.range_end:g})")
            return None
        self._job = self.start_job(lr_range_test, self.run, start=self.range_start, end=self.range_end,
                                   steps=self.range_steps, name="trainlab-lr-range-test")
        self._consumed = False
        self.range_button.disabled, self.cancel_button.disabled = True, False
        self.range_text.object = "Sweeping the lr on a copy of the run…"
        return self._job

    def apply_suggestion(self) -> None:
        if self.result is not None and self.result.suggestion is not None:
            self._set(lr=self.result.suggestion)

    # ---- ticks ------------------------------------------------------------------------------
    def _tick(self) -> None:
        """On the UI's tick: schedule controls and preview, the step marker, the range test's job."""
        run = self.run
        if run.schedule != self._shown:
            self._build_options()
        steps = self._horizon
        while steps < 1.1 * run.steps:  # the run went past the curve: double it (a redraw per doubling)
            steps *= 2
        key = (run.schedule, run.lr, steps)
        if key != self._preview_key:  # lab's preview does the math; the panel only hands it to the plot
            self._preview_key = key
            self._preview.data = preview(run.schedule, run.lr, steps)
        if self._now.location != run.steps:
            self._now.location = run.steps
        self.show_progress(self.bar, self._job)
        job = self._job
        if job is not None and job.done and not self._consumed:
            self._consumed = True
            self._publish(job)

    def _publish(self, job: Job) -> None:
        self.range_button.disabled, self.cancel_button.disabled = False, True
        if job.error is not None:
            self.result = None
            self.apply_button.disabled = True
            self.range_text.object = f"The range test failed: {job.error}"
            return
        r = self.result = job.result
        step = self.run.steps
        self.run.history.put_snapshot(RANGE, step, r.as_dict())
        marks: dict[str, list] = {"lr": [], "loss": [], "label": [], "color": []}
        if r.suggestion is not None:
            for lr, label, color in ((r.minimum, "minimum", "#d62728"), (r.suggestion, "suggestion", "#2ca02c")):
                marks["lr"].append(lr)
                marks["loss"].append(float(np.interp(np.log(lr), np.log(r.lrs), r.trend)))
                marks["label"].append(f"{label} {lr:.3g}")
                marks["color"].append(color)
        self.run.history.put_snapshot(MARKS, step, marks)
        self.apply_button.disabled = r.suggestion is None
        text = (f"**Suggested lr {r.suggestion:.3g}**: the lr at the minimum of the smoothed loss ({r.minimum:.3g}) / 10."
                if r.suggestion is not None else "No suggestion.")
        if r.stopped != "end":
            text += f" The sweep stopped early ({r.stopped}) after {len(r.lrs)} steps."
        if r.note:
            text += f" Note: {r.note}."
        self.range_text.object = text

    def __panel__(self):
        return self._layout
