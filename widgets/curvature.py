"""Curvature panel: live sharpness against the stability threshold, opposing-signal group losses,
gradient noise, and Hessian eigenvalues, trace and density computed on demand."""
from __future__ import annotations

from functools import partial

import numpy as np
import panel as pn
import param
from bokeh.models import ColumnDataSource, HoverTool
from bokeh.palettes import Category10_10

from trainlab import live
from trainlab.probes import GradientNoise, GroupLoss, Sharpness

from . import plots
from .base import LabPanel

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

    job_results = {"Hessian top-k eigenvalues": (live.HESSIAN["top"], "press Top-k eigenvalues"),
                   "Hessian trace": (live.HESSIAN["trace"], "press Trace"),
                   "Hessian density": (live.HESSIAN["density"], "press Density")}

    def __init__(self, run, feed=None, **params):
        super().__init__(run, feed, **params)
        # the instruments, made now (their columns name the plots' data) and added to the run when toggled on
        self.instruments = {"sharpness": Sharpness(every=self.every), "noise": GradientNoise(every=self.every),
                            "groups": GroupLoss(every=1)}
        self.toggles = {kind: pn.widgets.Toggle(label=label, value=False, width=w) for kind, label, w in
                        (("sharpness", "Sharpness", 90), ("noise", "Gradient noise", 110), ("groups", "Group losses", 95))}
        for kind, toggle in self.toggles.items():
            toggle.param.watch(partial(self._toggle, kind), "value")
        self.sharpness_toggle, self.noise_toggle, self.groups_toggle = self.toggles.values()
        self.buttons = {what: pn.widgets.Button(label=label, width=w) for what, label, w in
                        (("top", "Top-k eigenvalues", 130), ("trace", "Trace", 70), ("density", "Density", 80))}
        for what, button in self.buttons.items():
            button.on_click(partial(lambda what, event: self.compute(what), what))
        slot = self.job_slot("hessian", "Hessian", list(self.buttons.values()), describe=self._describe)
        self.cancel_button, self.progress, self.status = slot.cancel_button, slot.bar, slot.status
        self.controls = {n: self.control(n) for n in ("every", "k", "samples", "vectors", "iters")}
        self.param.watch(self._every, "every")

        feed, figs = self.feed, []
        columns = self.instruments["sharpness"].columns(run).scalars
        self.sharpness_source = feed.source(columns, sparse=True)
        figs.append(self.hint(self._sharpness_figure(self.sharpness_source), self.sharpness_source,
                              "turn on Sharpness (λ_max every k steps)"))
        self.has_groups = bool(run.data.info.get("groups"))
        self.groups_source = None
        if self.has_groups:
            columns = self.instruments["groups"].columns(run).scalars
            self.groups_source = feed.source(columns, sparse=True)
            fig = plots.figure("Group losses (opposing signals)", "step", "loss", log_y=True, hover=True)
            for g in columns.values():
                fig.line("step", g, source=self.groups_source, color=_GROUP_COLORS.get(g, "#333"), legend_label=g,
                         line_width=1.5)
            plots.legend(fig, "top_right")
            figs.append(fig)
        # B_simple is NaN where the |G|² estimate is not positive: its own source, so the line joins its points
        self.noise_source = feed.source({"noise_scale": "noise_scale"}, sparse=True)
        self.snr_source = feed.source({"grad_snr": "grad_snr"}, sparse=True)
        noise = "turn on Gradient noise"
        fig = plots.single("Gradient noise scale B_simple", "examples", self.noise_source, "noise_scale", log=True)
        fig.scatter("step", "noise_scale", source=self.noise_source, color=plots.TRAIN, size=3)
        figs.append(self.hint(fig, self.noise_source, noise))
        figs.append(self.hint(plots.single("Gradient SNR (mean over parameters)", "SNR", self.snr_source, "grad_snr",
                                           log=True), self.snr_source, noise))
        self.top_source = feed.snapshot(live.HESSIAN["top"], _eigen_data, {"rank": [], "eigenvalue": []})
        figs.append(self.hint(self._top_figure(self.top_source), self.top_source, "press Top-k eigenvalues"))
        self.density_source = feed.snapshot(live.HESSIAN["density"], _density_data, {"grid": [], "density": []})
        figs.append(self.hint(self._density_figure(self.density_source), self.density_source, "press Density"))

        toggles = [self.sharpness_toggle, self.noise_toggle] + ([self.groups_toggle] if self.has_groups else [])
        self._layout = self.layout(
            [pn.pane.Markdown("### Curvature\nProbes (every k steps):"), pn.Row(*toggles),
             self.controls["every"].widget, pn.pane.Markdown("Hessian now, on a copy of the model:"),
             *(self.controls[n].widget for n in ("k", "samples", "vectors", "iters")), slot.panel()], figs)
        if self.has_groups:
            self.groups_toggle.value = True
        self._ready()

    # ---- figures ---------------------------------------------------------------------------
    @staticmethod
    def _sharpness_figure(source: ColumnDataSource):
        fig = plots.figure("Sharpness vs stability threshold", "step", "λ_max", log_y=True, hover=True)
        fig.line("step", "threshold", source=source, color="black", line_dash="dashed", line_width=1.5,
                 legend_label="threshold (2/lr for GD)")
        fig.line("step", "sharpness", source=source, color=plots.TRAIN, line_width=2, legend_label="λ_max(H)")
        fig.scatter("step", "sharpness", source=source, color=plots.TRAIN, size=3, legend_label="λ_max(H)")
        fig.line("step", "preconditioned", source=source, color=Category10_10[1], line_width=2,
                 legend_label="λ_max(P⁻¹H) (adaptive)")
        plots.legend(fig, "bottom_right")
        return fig

    @staticmethod
    def _top_figure(source: ColumnDataSource):
        fig = plots.figure("Top Hessian eigenvalues", "rank", "eigenvalue", tools="save,pan,wheel_zoom,reset")
        fig.scatter("rank", "eigenvalue", source=source, size=9, color=plots.VAL)
        fig.segment("rank", 0, "rank", "eigenvalue", source=source, color=plots.VAL)
        fig.add_tools(HoverTool(tooltips=[("rank", "@rank"), ("λ", "@eigenvalue{0.0000}")]))
        return fig

    @staticmethod
    def _density_figure(source: ColumnDataSource):
        fig = plots.figure("Hessian eigenvalue density (SLQ)", "eigenvalue", "density", log_y=True)
        fig.line("grid", "density", source=source, color=plots.TRAIN, line_width=1.5)
        return fig

    # ---- actions ---------------------------------------------------------------------------
    def _every(self, event) -> None:
        for kind in ("sharpness", "noise"):
            self.instruments[kind].every = int(event.new)  # read at every step: takes effect at the next one

    def _toggle(self, kind: str, event) -> None:
        probe = self.instruments[kind]
        if event.new:
            self.add_probe(probe)
        else:
            self.drop_probe(probe)

    def compute(self, what: str):
        """Start `what` ("top", "trace", "density") as a background job on a copy of the model."""
        kw = {"top": {"k": self.k}, "trace": {"samples": self.samples},
              "density": {"vectors": self.vectors, "iters": self.iters}}[what]
        self._job_kind = what
        return self.run_job(live.hessian, "hessian", what=what, **kw)

    def cancel(self) -> None:
        self.slots["hessian"].cancel()

    def _describe(self, job) -> str:
        trace = (job.result or {}).get(live.HESSIAN["trace"])
        if trace is not None:
            return f"trace(H) = {trace['trace'][0]:.4g} ± {trace['stderr'][0]:.2g}"
        return f"{self._job_kind}: done"

    def __panel__(self):
        return self._layout
