"""Curvature panel: live sharpness against the stability threshold, opposing-signal group losses,
gradient noise, and Hessian eigenvalues, trace and density computed on demand."""
from __future__ import annotations

from functools import partial

import numpy as np
import panel as pn
import param
from bokeh.models import ColumnDataSource, HoverTool
from bokeh.palettes import Category10_10
from bokeh.plotting import figure

from trainlab.analysis import hessian
from trainlab.analysis.gradients import GradientNoise
from trainlab.analysis.hessian import GroupLoss, Sharpness
from trainlab.jobs import Cancelled, Job

from . import plots
from .base import LabPanel
from .controls import Control

_GROUP_COLORS = {"group_a": "#2166ac", "group_b": "#b2182b", "bulk": "#7f7f7f"}


def _eigen_data(snap: dict) -> dict:
    return {"rank": np.asarray(snap["rank"], float), "eigenvalue": np.asarray(snap["eigenvalue"], float)}


def _density_data(snap: dict) -> dict:
    # a log axis cannot show zeros: the empty tails are drawn at a floor far below the bulk
    return {"grid": np.asarray(snap["grid"], float), "density": np.maximum(np.asarray(snap["density"], float), 1e-8)}


class CurvaturePanel(LabPanel):
    """Sharpness (λ_max of the Hessian) against the optimizer's stability threshold, live.

    Turning the sharpness probe on adds a `Sharpness` probe to the run (warm-started Lanczos on a
    fixed probe batch every `every` steps); under full-batch gradient descent the curve climbs
    (progressive sharpening) until it meets 2/lr and hovers there (the edge of stability). On the
    "opposing" data set the two outlier groups' losses are drawn too. The buttons compute the top-k
    eigenvalues, the trace or the spectral density of the Hessian now, on a copy of the model, as
    a background job with a progress bar and Cancel; results arrive as history snapshots.
    """

    every = param.Integer(10, bounds=(1, None), softbounds=(1, 100), doc="steps between live measurements")
    k = param.Integer(5, bounds=(1, 100), softbounds=(1, 20), doc="how many top eigenvalues to compute")
    samples = param.Integer(32, bounds=(6, None), softbounds=(6, 256), doc="trace: Hutchinson samples")
    vectors = param.Integer(4, bounds=(1, None), softbounds=(1, 16), doc="density: stochastic Lanczos start vectors")
    iters = param.Integer(64, bounds=(2, None), softbounds=(8, 200), doc="density: Lanczos steps per start vector")

    def __init__(self, run, feed=None, **params):
        super().__init__(run, feed, **params)
        self._probes: dict[str, object] = {}
        self._job: Job | None = None
        self._job_kind = ""
        self.sharpness_toggle = pn.widgets.Toggle(label="Sharpness", value=False, width=115)
        self.noise_toggle = pn.widgets.Toggle(label="Gradient noise", value=False, width=125)
        self.groups_toggle = pn.widgets.Toggle(label="Group losses", value=False, width=115)
        self.sharpness_toggle.param.watch(partial(self._toggle, "sharpness"), "value")
        self.noise_toggle.param.watch(partial(self._toggle, "noise"), "value")
        self.groups_toggle.param.watch(partial(self._toggle, "groups"), "value")
        self.buttons = {what: pn.widgets.Button(label=label, width=120)
                        for what, label in (("top", "Top-k eigenvalues"), ("trace", "Trace"), ("density", "Density"))}
        for what, button in self.buttons.items():
            button.on_click(partial(lambda what, event: self.compute(what), what))
        self.cancel_button = pn.widgets.Button(label="Cancel", color="warning", width=90, disabled=True)
        self.cancel_button.on_click(lambda event: self.cancel())
        self.progress = self.progress_bar()
        self.status = pn.pane.Markdown("", sizing_mode="stretch_width")
        self.controls = {n: Control(self, n, self._set) for n in ("every", "k", "samples", "vectors", "iters")}

        feed, figs = self.feed, []
        self.sharpness_source = feed.source({"sharpness": "sharpness", "sharpness_threshold": "threshold",
                                             "preconditioned_sharpness": "preconditioned"}, sparse=True)
        figs.append(self._sharpness_figure(self.sharpness_source))
        self.has_groups = bool(run.data.info.get("groups"))
        self.groups_source = None
        if self.has_groups:
            names = list(run.data.info["groups"])
            self.groups_source = feed.source({f"loss/{g}": g for g in names}, sparse=True)
            fig = plots._figure("Group losses (opposing signals)", "loss", log=True)
            for g in names:
                fig.line("step", g, source=self.groups_source, color=_GROUP_COLORS.get(g, "#333"), legend_label=g,
                         line_width=1.5)
            plots._legend(fig, "top_right")
            figs.append(fig)
        self.noise_source = feed.source(["noise_scale", "grad_snr"], sparse=True)
        figs.append(plots.single("Gradient noise scale B_simple", "examples", self.noise_source, "noise_scale", log=True))
        figs.append(plots.single("Gradient SNR (mean over parameters)", "SNR", self.noise_source, "grad_snr", log=True))
        self.top_source = feed.snapshot("hessian_top", _eigen_data, {"rank": [], "eigenvalue": []})
        figs.append(self._top_figure(self.top_source))
        self.density_source = feed.snapshot("hessian_density", _density_data, {"grid": [], "density": []})
        figs.append(self._density_figure(self.density_source))
        self.feed.on_tick(self._refresh)

        toggles = [self.sharpness_toggle, self.noise_toggle] + ([self.groups_toggle] if self.has_groups else [])
        side = pn.Column(pn.pane.Markdown("### Curvature\nProbes (every k steps):"), pn.Row(*toggles),
                         self.controls["every"].widget, pn.pane.Markdown("Hessian now, on a copy of the model:"),
                         pn.Row(*self.buttons.values()), self.controls["k"].widget, self.controls["samples"].widget,
                         self.controls["vectors"].widget, self.controls["iters"].widget,
                         pn.Row(self.cancel_button), self.progress, self.status, width=420)
        self._layout = pn.Row(side, pn.FlexBox(*[pn.pane.Bokeh(f) for f in figs], sizing_mode="stretch_width"),
                              sizing_mode="stretch_width")
        if self.has_groups:
            self.groups_toggle.value = True
        self._ready()

    # ---- figures ---------------------------------------------------------------------------
    @staticmethod
    def _sharpness_figure(source: ColumnDataSource):
        fig = plots._figure("Sharpness vs stability threshold", "λ_max", log=True)
        fig.line("step", "threshold", source=source, color="black", line_dash="dashed", line_width=1.5,
                 legend_label="threshold (2/lr for GD)")
        fig.line("step", "sharpness", source=source, color=plots.TRAIN, line_width=2, legend_label="λ_max(H)")
        fig.scatter("step", "sharpness", source=source, color=plots.TRAIN, size=3, legend_label="λ_max(H)")
        fig.line("step", "preconditioned", source=source, color=Category10_10[1], line_width=2,
                 legend_label="λ_max(P⁻¹H) (adaptive)")
        plots._legend(fig, "bottom_right")
        return fig

    @staticmethod
    def _top_figure(source: ColumnDataSource):
        fig = figure(title="Top Hessian eigenvalues", x_axis_label="rank", y_axis_label="eigenvalue",
                     width=430, height=250, tools="pan,wheel_zoom,reset,save")
        fig.toolbar.logo = None
        fig.scatter("rank", "eigenvalue", source=source, size=9, color=plots.VAL)
        fig.segment("rank", 0, "rank", "eigenvalue", source=source, color=plots.VAL)
        fig.add_tools(HoverTool(tooltips=[("rank", "@rank"), ("λ", "@eigenvalue{0.0000}")]))
        return fig

    @staticmethod
    def _density_figure(source: ColumnDataSource):
        fig = figure(title="Hessian eigenvalue density (SLQ)", x_axis_label="eigenvalue", y_axis_label="density",
                     y_axis_type="log", width=430, height=250, tools="pan,wheel_zoom,box_zoom,reset,save")
        fig.toolbar.logo = None
        fig.line("grid", "density", source=source, color=plots.TRAIN, line_width=1.5)
        return fig

    # ---- actions ---------------------------------------------------------------------------
    def _set(self, name: str, value) -> None:
        setattr(self, name, value)
        if name == "every":
            for probe in self._probes.values():
                if not isinstance(probe, GroupLoss):
                    probe.every = int(value)  # read at every step: takes effect at the next one

    def _toggle(self, kind: str, event) -> None:
        if event.new:
            probe = {"sharpness": lambda: Sharpness(every=self.every),
                     "noise": lambda: GradientNoise(every=self.every),
                     "groups": lambda: GroupLoss(every=1)}[kind]()
            self._probes[kind] = self.run.add_probe(probe)
        elif kind in self._probes:
            self.run.remove_probe(self._probes.pop(kind))

    def compute(self, what: str) -> Job:
        """Start `what` ("top", "trace", "density") as a background job on a copy of the model."""
        if self._job is not None and not self._job.done:
            return self._job
        kw = {"top": {"k": self.k}, "trace": {"samples": self.samples},
              "density": {"vectors": self.vectors, "iters": self.iters}}[what]
        self._job = self.start_job(hessian.analyze, self.run, what, name=f"trainlab-hessian-{what}", **kw)
        self._job_kind = what
        self._refresh()
        return self._job

    def cancel(self) -> None:
        if self._job is not None:
            self._job.cancel()

    def _refresh(self) -> None:
        """On the Feed's tick: the job's progress and state, and the last trace."""
        job = self._job
        self.show_progress(self.progress, job)
        running = job is not None and not job.done
        self.cancel_button.disabled = not running
        for button in self.buttons.values():
            button.disabled = running
        lines = []
        if running:
            lines.append(f"computing {self._job_kind}…")
        elif job is not None and job.error is not None:
            lines.append(f"{self._job_kind}: cancelled" if isinstance(job.error, Cancelled)
                         else f"{self._job_kind} failed: {type(job.error).__name__}: {job.error}")
        snap = self.run.history.snapshot("hessian_trace")
        if snap is not None:
            step, value = snap
            lines.append(f"trace(H) = {value['trace'][0]:.4g} ± {value['stderr'][0]:.2g} (step {step})")
        text = "\n\n".join(lines)
        if self.status.object != text:
            self.status.object = text

    def close(self) -> None:
        for probe in self._probes.values():
            self.run.remove_probe(probe)
        self._probes.clear()
        super().close()

    def __panel__(self):
        return self._layout
