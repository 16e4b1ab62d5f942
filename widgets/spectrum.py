"""The weight-spectra lab: per-layer ESD with its power law and Marchenko–Pastur bulk, α over training."""
from __future__ import annotations


import numpy as np
import pandas as pd
import panel as pn
import param
from bokeh.models import ColumnDataSource

from trainlab import Run, live
from trainlab.analysis import spectrum
from trainlab.probes import SpectrumProbe

from . import plots
from .base import LabPanel, plain
from .feed import Feed

LIVE, NOW = "esd", live.SPECTRUM  # history snapshots: the live probe's, and "Analyse now"'s
_EMPTY = np.array([])
_TABLE = ("layer", "shape", "alpha", "xmin", "ks_distance", "alpha_hill", "num_spikes", "mp_bulk_edge",
          "spectral_norm", "stable_rank", "farms_alpha", "farms_alpha_hill")


def _empty_table() -> dict[str, list]:
    return {c: [] for c in _TABLE}


def _frame(rows: dict[str, list]) -> pd.DataFrame:
    """The table's rows with fixed column types, rounded for reading."""
    df = pd.DataFrame(rows).astype({c: float for c in _TABLE if c not in ("layer", "shape", "num_spikes")})
    return df.astype({"layer": str, "shape": str, "num_spikes": int}).round(4)


class SpectrumPanel(LabPanel):
    """Weight spectra of the run's model: choose a layer, see its ESD on log-log axes with the fitted
    power law and xmin, on linear axes with the Marchenko–Pastur bulk and its spikes, and α per
    layer over training.

    Creating it turns on a `SpectrumProbe` (α every `every` steps and an `esd` snapshot) unless the
    run has one. "Analyse now" runs the whole-model ESD (with FARMS when ticked) as a Job on a copy
    of the model, with a progress bar and Cancel; its result is published as the snapshot `esd_analysis`.
    Everything drawn comes from those snapshots, computed by `trainlab.analysis.spectrum`.
    """

    every = param.Integer(50, bounds=(1, None), softbounds=(5, 500), doc="steps between live α measurements")
    farms = param.Boolean(False, doc="FARMS: pool the ESDs of fixed-aspect-ratio submatrices "
                                     "(Analyse now computes it)")
    layer = param.String("", doc="the weight matrix shown")
    show = param.Selector(default="live probe", objects=["live probe", "analysis"],
                          doc="the snapshot drawn: the live probe's, or the last 'Analyse now' (chosen when it lands)")

    job_results = {"ESD fits per layer": (live.SPECTRUM, "press Analyse now"),
                   "ESD eigenvalues": (f"{live.SPECTRUM}/eigenvalues", "press Analyse now")}

    def __init__(self, run: Run, feed: Feed | None = None, **params):
        super().__init__(run, feed, **params)
        self.layers = spectrum.matrix_names(run.model)
        self.layer = self.layer or (self.layers[0] if self.layers else "")
        self.probe = self.use_probe(SpectrumProbe, every=self.every)
        self.every = self.probe.every  # the run's own probe keeps its interval
        self._snaps: dict[str, dict] = {}  # origin -> the newest snapshot received from it

        # controls
        self.layer_select = pn.widgets.Select(label="layer", options=self.layers, value=self.layer)
        self.layer_select.param.watch(lambda e: setattr(self, "layer", e.new), "value")
        self.param.watch(lambda e: setattr(self.layer_select, "value", e.new), "layer")
        self.controls = {n: self.control(n) for n in ("every", "farms", "show")}
        self.param.watch(self._every, "every")
        self.analyse_button = pn.widgets.Button(label="Analyse now", color="primary", width=120)
        self.analyse_button.on_click(lambda e: self.analyse())
        slot = self.job_slot("esd", "Whole-model ESD", [self.analyse_button])
        self.cancel_button, self.bar = slot.cancel_button, slot.bar
        self.status = pn.pane.Markdown("Waiting for the first measurement (or press *Analyse now*).",
                                       sizing_mode="stretch_width")

        # sources: the two snapshots arrive through the Feed; what they hold is drawn into these
        self.live_source = self.feed.snapshot(LIVE, lambda s: self._receive(s, "live probe"), None)
        self.now_source = self.feed.snapshot(NOW, lambda s: self._receive(s, "analysis"), None)
        self.loglog = ColumnDataSource({"x": _EMPTY, "y": _EMPTY})
        self.powerlaw = ColumnDataSource({"x": _EMPTY, "y": _EMPTY})
        self.xmin = ColumnDataSource({"x": _EMPTY, "y0": _EMPTY, "y1": _EMPTY})
        self.hist = ColumnDataSource({"left": _EMPTY, "right": _EMPTY, "top": _EMPTY})
        self.mp = ColumnDataSource({"x": _EMPTY, "y": _EMPTY})
        self.spikes = ColumnDataSource({"x": _EMPTY, "y": _EMPTY})
        self.edge = ColumnDataSource({"x": _EMPTY, "y0": _EMPTY, "y1": _EMPTY})
        # an HTML table: it needs no JavaScript extension, so it renders in a tab opened after page load
        # (Tabulator's script would be missing there) and in notebooks alike
        self.table = pn.pane.DataFrame(_frame(_empty_table()), index=False, sizing_mode="stretch_width")
        columns = SpectrumProbe(self.every).columns(run).scalars
        self.alpha = self.feed.source({k: v for k, v in columns.items() if k.startswith("alpha/")}, sparse=True)
        self.figures = self._figures()
        self.param.watch(lambda e: self._draw(), ["layer", "farms", "show"])

        self._layout = self.layout(
            [pn.pane.Markdown("### Weight spectra"), self.layer_select, *(c.widget for c in self.controls.values()),
             slot.panel(), self.status], self.figures, below=[self.table])
        self._ready()

    # ---- plots ------------------------------------------------------------------------------
    def _figures(self) -> list:
        loglog = plots.figure("ESD, log-log: power-law tail", "eigenvalue of WᵀW/N", "density", log_x=True, log_y=True)
        loglog.scatter("x", "y", source=self.loglog, color=plots.TRAIN, size=6, legend_label="ESD")
        loglog.line("x", "y", source=self.powerlaw, color=plots.VAL, line_width=2, legend_label="power law")
        loglog.segment("x", "y0", "x", "y1", source=self.xmin, color="black", line_dash="dashed", legend_label="xmin")
        plots.legend(loglog, "bottom_left")
        linear = plots.figure("ESD and the Marchenko–Pastur bulk", "eigenvalue of WᵀW/N", "density")
        linear.quad(left="left", right="right", top="top", bottom=0, source=self.hist, color=plots.TRAIN, alpha=0.5,
                    legend_label="ESD")
        linear.line("x", "y", source=self.mp, color="black", line_width=2, legend_label="MP bulk")
        linear.segment("x", "y0", "x", "y1", source=self.edge, color="black", line_dash="dotted", legend_label="λ+")
        linear.scatter("x", "y", source=self.spikes, color=plots.VAL, marker="triangle", size=11, legend_label="spikes")
        plots.legend(linear, "top_right")
        alpha = plots.per_layer("α per layer over training", "α (power-law fit)", self.alpha, self.layers, log=False)
        waiting = f"measured at step {self.every}, or press Analyse now"
        return [self.hint(loglog, self.loglog, waiting), self.hint(linear, self.hist, waiting),
                self.hint(alpha, self.alpha, f"α every {self.every} steps")]

    def _receive(self, snapshot: dict | None, origin: str) -> dict[str, list]:
        """A new snapshot (on the UI's tick): keep it, redraw, and return the carrier source's data."""
        if snapshot is not None:
            self._snaps[origin] = snapshot
            if origin == "analysis" and self.show != origin:
                self.controls["show"].show(origin)
                self.show = origin  # redraws
            elif origin == self.show:
                self._draw()
        return {"layers": list(snapshot["layers"]) if snapshot else []}

    def _draw(self) -> None:
        snap = self._snaps.get(self.show)
        if not snap:
            return
        rows = _empty_table()
        for name, v in snap["layers"].items():
            p, f = v["plain"], v["farms"]
            for key, value in (("layer", name), ("shape", "×".join(map(str, v["shape"]))), ("alpha", p["alpha"]),
                               ("xmin", p["xmin"]), ("ks_distance", p["ks_distance"]),
                               ("alpha_hill", p["alpha_hill"]), ("num_spikes", p["num_spikes"]),
                               ("mp_bulk_edge", p["mp_bulk_edge"]), ("spectral_norm", v["spectral_norm"]),
                               ("stable_rank", v["stable_rank"]),
                               ("farms_alpha", f["alpha"] if f else np.nan),
                               ("farms_alpha_hill", f["alpha_hill"] if f else np.nan)):
                rows[key].append(value)
        self.table.object = _frame(rows)
        layer = snap["layers"].get(self.layer)
        if layer is None:
            return
        view, shown = layer["plain"], "plain"
        if self.farms and layer["farms"] is not None:
            view, shown = layer["farms"], "FARMS"
        top = float(view["log_y"].max()) if view["log_y"].size else 1.0
        bottom = float(view["log_y"].min()) if view["log_y"].size else 0.1
        self.loglog.data = {"x": view["log_x"], "y": view["log_y"]}
        self.powerlaw.data = {"x": view["pl_x"], "y": view["pl_y"]}
        xmin = view["xmin"]
        self.xmin.data = ({"x": [xmin], "y0": [bottom], "y1": [top]} if np.isfinite(xmin)
                          else {"x": [], "y0": [], "y1": []})
        edges = view["lin_edges"]
        self.hist.data = {"left": edges[:-1], "right": edges[1:], "top": view["lin_density"]}
        self.mp.data = {"x": view["mp_x"], "y": view["mp_pdf"]}
        self.spikes.data = {"x": view["spikes"], "y": np.zeros(len(view["spikes"]))}
        peak = float(view["lin_density"].max()) if view["lin_density"].size else 1.0
        self.edge.data = {"x": [view["mp_bulk_edge"]], "y0": [0.0], "y1": [peak]}
        note = "" if shown == "FARMS" or not self.farms else " (no FARMS pool yet: press *Analyse now*)"
        fit = (f"α = {view['alpha']:.2f} above xmin = {view['xmin']:.3g} (KS {view['ks_distance']:.3f})"
               if np.isfinite(view["alpha"]) else "too few eigenvalues for a power-law fit")
        self.status.object = (f"**{plain(self.layer)}** ({shown} ESD, from the {self.show}{note}): {fit}; "
                              f"{view['num_spikes']} spike(s) above the MP edge λ+ = {view['mp_bulk_edge']:.3g}.")

    # ---- actions ----------------------------------------------------------------------------
    def _every(self, event) -> None:
        if self.probe in self._added:  # a probe of the run's own keeps its interval
            self.probe.every = int(event.new)  # read at every step: takes effect at the next one

    def analyse(self):
        """Whole-model ESD now (FARMS too when ticked), on a copy of the model, as a job."""
        return self.run_job(live.spectrum, "esd", farms=self.farms)

    def __panel__(self):
        return self._layout
