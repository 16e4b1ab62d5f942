"""The optimizer lab: the lr schedule drawn ahead of time, the LR range test, and the optimizer's internals."""
from __future__ import annotations

from typing import Any

import numpy as np
import panel as pn
import param
from bokeh.models import ColumnDataSource, Span
from bokeh.palettes import Category10_10

from trainlab import Run, live
from trainlab.probes import EffectiveStep, ScaleInvariantNorm, SecondMoment, UpdateRatio
from trainlab.registry import LogNumber
from trainlab.schedules import as_schedule, preview, schedules

from . import plots
from .base import LabPanel, plain
from .controls import Control
from .feed import Feed

_MARK_COLORS = {"minimum": "#d62728", "suggestion": "#2ca02c"}


def _curve(result: dict | None) -> dict[str, np.ndarray]:
    if not result:
        return {"lr": np.array([]), "loss": np.array([]), "trend": np.array([])}
    return {"lr": result["lr"], "loss": result["loss"], "trend": result["trend"]}


def _marks(result: dict | None) -> dict[str, list]:
    """The range test's minimum and suggestion as labelled, coloured marks on its curve."""
    m = result["marks"] if result else {"kind": [], "lr": [], "loss": []}
    return {"lr": list(m["lr"]), "loss": list(m["loss"]), "color": [_MARK_COLORS[k] for k in m["kind"]],
            "label": [f"{k} {v:.3g}" for k, v in zip(m["kind"], m["lr"])]}


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


class _Choice(param.Parameterized):
    schedule = param.Selector(default="constant", objects=schedules.names(), doc="lr schedule (lr × f(step))")


class OptimizerPanel(LabPanel):
    """Schedule chooser with its lr curve ahead of time, the LR range test, and live optimizer internals.

    Creating it turns on the internals probes the run lacks (effective step size, update ratio,
    scale-invariant weight norms, second moments); closing it turns them off again. The LR range test
    runs as a job on a copy of the run (the run keeps training); "Apply" sets its suggestion as the
    run's base lr, while the optimizer it was measured with is still the run's.
    """

    range_start = LogNumber(1e-7, bounds=(0, None), inclusive_bounds=(False, True), softbounds=(1e-8, 1e-2),
                            doc="lr the range test starts from")
    range_end = LogNumber(10.0, bounds=(0, None), inclusive_bounds=(False, True), softbounds=(1e-2, 100),
                          doc="lr the range test ends at (it stops earlier when the loss explodes)")
    range_steps = param.Integer(200, bounds=(10, None), softbounds=(50, 1000), doc="steps of the range test")

    job_results = {"LR range test": (live.RANGE_TEST, "press LR range test")}

    def __init__(self, run: Run, feed: Feed | None = None, **params):
        super().__init__(run, feed, **params)
        self.probes = {cls: self.use_probe(cls, every=every) for cls, every in
                       ((EffectiveStep, 25), (UpdateRatio, 25), (ScaleInvariantNorm, 10), (SecondMoment, 50))}
        self.notes = pn.pane.Markdown("", sizing_mode="stretch_width")
        self.status = self.alert

        # schedule: chooser, its declared options, the lr curve ahead of time
        self._chooser = Control(_Choice(schedule=run.schedule[0]), "schedule", self._choose)
        self.schedule_select = self._chooser.widget
        self._options = pn.Column(sizing_mode="stretch_width")
        self._shown: tuple | None = None
        self._preview = ColumnDataSource({"step": np.array([]), "lr": np.array([])}, name="schedule_preview")
        self._preview_key: tuple | None = None
        self._now = Span(location=run.steps, dimension="height", line_color="#555555", line_dash="dashed")
        used = self.feed.source(["lr"])
        fig = plots.figure("Learning rate: schedule ahead, lr used", "step", "learning rate", log_y=True, hover=True)
        fig.line("step", "lr", source=self._preview, color="#999999", line_width=2, line_dash="dotted",
                 legend_label="schedule")
        fig.line("step", "lr", source=used, color=plots.TRAIN, line_width=2, legend_label="used")
        fig.add_layout(self._now)
        plots.legend(fig, "top_right")
        self.schedule_figure = fig

        # LR range test
        self.range_controls = {n: self.control(n) for n in ("range_start", "range_end", "range_steps")}
        self.range_button = pn.widgets.Button(label="LR range test", color="primary", width=115)
        self.apply_button = pn.widgets.Button(label="Apply", color="success", width=75, disabled=True)
        self.range_button.on_click(lambda e: self.start_range_test())
        self.apply_button.on_click(lambda e: self.apply_suggestion())
        slot = self.job_slot("range", "LR range test", [self.range_button], describe=self._describe)
        self.cancel_button, self.bar, self.range_text = slot.cancel_button, slot.bar, slot.status
        self.range_curve = self.feed.snapshot(live.RANGE_TEST, _curve, None)
        self.range_marks = self.feed.snapshot(live.RANGE_TEST, _marks, None)
        fig = plots.figure("LR range test", "learning rate", "training loss", log_x=True, log_y=True)
        fig.scatter("lr", "loss", source=self.range_curve, color=plots.TRAIN, alpha=0.25, size=3, legend_label="loss")
        fig.line("lr", "trend", source=self.range_curve, color=plots.TRAIN, line_width=2, legend_label="smoothed")
        fig.scatter("lr", "loss", source=self.range_marks, color="color", size=11, marker="diamond")
        fig.text("lr", "loss", text="label", source=self.range_marks, text_font_size="9pt", text_align="right",
                 x_offset=-8, y_offset=-4)
        plots.legend(fig, "bottom_left")
        self.range_figure = self.hint(fig, self.range_curve, "press LR range test")

        # internals
        self.figures = [self.schedule_figure, self.range_figure, *self._internals()]
        self.feed.on_tick(self._tick)
        self._tick()
        self._layout = self.layout(
            [pn.pane.Markdown("### Schedule"), self.schedule_select, self._options,
             pn.pane.Markdown("### LR range test"), *(c.widget for c in self.range_controls.values()),
             pn.Row(self.range_button, self.cancel_button, self.apply_button), self.bar, self.range_text, self.notes],
            self.figures)
        self._ready()

    # ---- building ---------------------------------------------------------------------------
    def _internals(self) -> list:
        feed, run = self.feed, self.run

        def per_layer(probe, title: str, ylabel: str, log: bool = True):
            columns = probe.columns(run).scalars
            return plots.per_layer(title, ylabel, feed.source(columns, sparse=True), list(columns.values()), log=log)

        figs = [
            per_layer(self.probes[EffectiveStep], "Effective step size ‖Δw‖/‖g‖", "effective lr"),
            per_layer(self.probes[UpdateRatio], "Update / weight ‖Δw‖/‖w‖", "update ratio"),
        ]
        if self.probes[ScaleInvariantNorm].columns(run).scalars:
            figs.append(per_layer(self.probes[ScaleInvariantNorm], "Norm of scale-invariant weights", "‖w‖", log=False))
        else:
            self.notes.object = ("*Scale-invariant weights*: no layer of this model feeds a normalization layer; "
                                 "choose a model with norm batchnorm or layernorm to see their norms grow.")
        moment = self.probes[SecondMoment]
        columns = moment.columns(run).scalars
        medians = feed.source(columns, sparse=True)
        only = "Adam-like optimizers only (adam, rmsprop, …)"
        figs.append(self.hint(plots.per_layer("Second moment v̂: median per layer", "median v̂", medians,
                                              list(columns.values())), medians, only))
        layers = list(columns.values())
        hist = feed.snapshot(moment.columns(run).snapshots[0], _histogram(layers), None)
        fig = plots.figure("Second moment v̂: distribution", "log10 v̂", "weights")
        for i, layer in enumerate(layers):
            fig.step("x", layer, source=hist, mode="center", color=Category10_10[i % 10], legend_label=layer, line_width=1.5)
        plots.legend(fig, "top_right", outside=True)
        figs.append(self.hint(fig, hist, only))
        return figs

    def _build_options(self) -> None:
        """Controls for the options the current schedule declares."""
        name, values = self._shown = self.run.schedule
        self._horizon = max(1000, int(1.1 * (as_schedule(self._shown).horizon or 0)))  # steps the preview shows
        self._chooser.show(name)
        opts = schedules[name].options(**values)
        self.schedule_controls = {n: Control(opts, n, self._set_option) for n in schedules[name].params}
        self._options.objects = [c.widget for c in self.schedule_controls.values()]

    # ---- events -----------------------------------------------------------------------------
    def _choose(self, _: str, name: str) -> None:
        """A schedule chosen: the options it shares with the current one carry over."""
        old = self.run.schedule
        carried = {k: v for k, v in old[1].items() if k in schedules[name].params}
        if not self.set_run(schedule=(name, carried)) and not self.set_run(schedule=name):
            self._chooser.show(old[0])
        self._tick()

    def _set_option(self, name: str, value: Any) -> None:
        spec_name, values = self.run.schedule
        if not self.set_run(schedule=(spec_name, {**values, name: value})):
            self.schedule_controls[name].show(values[name])
        self._tick()

    def start_range_test(self):
        """Run the LR range test as a job (one at a time); its result is published as a snapshot."""
        if self.range_start >= self.range_end:
            self.report(f"range start ({self.range_start:g}) must be below its end ({self.range_end:g})")
            return None
        self.range_text.object = "Sweeping the lr on a copy of the run…"
        return self.run_job(live.range_test, "range", start=self.range_start, end=self.range_end,
                            steps=self.range_steps)

    @property
    def result(self) -> dict | None:
        """The last range test's snapshot (lrs, losses, trend, suggestion, ...), or None."""
        snap = self.run.history.snapshot(live.RANGE_TEST)
        return snap[1] if snap else None

    def apply_suggestion(self) -> None:
        r = self.result
        if r is not None and r["suggestion"] is not None and r["optimizer"] == self.run.optimizer:
            self.set_run(lr=r["suggestion"])

    @staticmethod
    def _describe(job) -> str:
        r = job.result.get(live.RANGE_TEST) if job.result else None
        if r is None:
            return "No result."
        text = (f"Suggested lr {r['suggestion']:.3g}: the lr at the minimum of the smoothed loss ({r['minimum']:.3g}) / 10."
                if r["suggestion"] is not None else "No suggestion.")
        if r["stopped"] != "end":
            text += f" The sweep stopped early ({r['stopped']}) after {len(r['lr'])} steps."
        if r["note"]:
            text += f" Note: {r['note']}."
        return text

    # ---- ticks ------------------------------------------------------------------------------
    def _tick(self) -> None:
        """On the UI's tick: schedule controls and preview, the step marker, whether Apply applies."""
        run = self.run
        if run.schedule != self._shown:
            self._build_options()
        steps = self._horizon
        while steps < 1.1 * (run.steps - run.schedule_start):  # past the curve: double it (a redraw per doubling)
            steps *= 2
        key = (run.schedule, run.schedule_start, run.lr, steps)
        if key != self._preview_key:  # lab's preview does the math; the panel only hands it to the plot
            self._preview_key = key
            self._preview.data = preview(run.schedule, run.lr, steps, start=run.schedule_start)
        if self._now.location != run.steps:
            self._now.location = run.steps
        r = self.result
        # a suggestion measured with another optimizer does not apply to this one
        usable = r is not None and r["suggestion"] is not None and r["optimizer"] == run.optimizer
        if self.apply_button.disabled == usable:
            self.apply_button.disabled = not usable
        if r is not None and r["optimizer"] != run.optimizer and not self.slots["range"].running:
            note = plain(f"The last range test was measured with {r['optimizer']}: run it again for {run.optimizer}.")
            if self.range_text.object != note:
                self.range_text.object = note

    def __panel__(self):
        return self._layout
