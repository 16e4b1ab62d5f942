"""The landscape lab: the loss around the current weights, the path training took, and intrinsic dimension.

Jobs run `trainlab.live.landscape` and `trainlab.live.intrinsic` on a copy of the run (it keeps
training), which publish to the History: `landscape` (a coarse grid first, then the fine one),
`landscape/line` (the loss from the initial to the current weights) and `intrinsic`. The panel reads
them through its Feed like every other plot.

3-D view: Bokeh has no 3-D and plotly is not a dependency, so the surface is a wireframe projected by
`trainlab.analysis.landscape.wireframe` (azimuth and elevation sliders) and drawn with `multi_line`:
it needs nothing beyond Bokeh and works offline, served or in JupyterLab.
"""
from __future__ import annotations

import numpy as np
import panel as pn
import param
from bokeh.models import ColorBar, ColumnDataSource, LinearColorMapper
from bokeh.palettes import Viridis256
from bokeh.plotting.contour import contour_data

from trainlab import Run, live
from trainlab.analysis.landscape import wireframe, wireframe_axes
from trainlab.probes import TrajectoryProbe
from trainlab.registry import LogInteger

from . import plots
from .base import LabPanel
from .feed import Feed

LANDSCAPE, LINE, INTRINSIC = live.LANDSCAPE, live.LINE, live.INTRINSIC
_EMPTY_IMAGE = {"z": [np.zeros((2, 2))], "x0": [-1.0], "y0": [-1.0], "dw": [2.0], "dh": [2.0]}
_SIZE = dict(width=420, height=380)


def _image(snap: dict | None) -> dict:
    """A landscape snapshot as a Bokeh image of log10(loss): rows are y, columns x."""
    if not snap:
        return dict(_EMPTY_IMAGE)
    x, y = snap["x"], snap["y"]
    dx, dy = (x[1] - x[0]) / 2, (y[1] - y[0]) / 2  # pixels centred on the grid points
    return {"z": [np.log10(np.maximum(snap["loss"].T, 1e-12))], "x0": [x[0] - dx], "y0": [y[0] - dy],
            "dw": [x[-1] - x[0] + 2 * dx], "dh": [y[-1] - y[0] + 2 * dy]}


def _line(snap: dict | None) -> dict:
    if not snap:
        return {"alpha": np.array([]), "loss": np.array([])}
    return {"alpha": snap["alpha"], "loss": snap["loss"]}


def _intrinsic(snap: dict | None) -> dict:
    """Performance against d, with the full model's level and the threshold as flat lines."""
    if not snap:
        return {k: np.array([]) for k in ("d", "performance", "full", "threshold")}
    d = snap["dims"].astype(float)
    return {"d": d, "performance": snap["performance"], "full": np.full(len(d), snap["full"]),
            "threshold": np.full(len(d), snap["threshold"] * snap["full"])}


class LandscapePanel(LabPanel):
    """The loss landscape around the current weights, with the trajectory so far, refreshed while training.

    Creating it adds a `TrajectoryProbe` to the run (if it has none). On the PCA plane of the
    trajectory the path is drawn over the landscape; on a random filter-normalized plane the path
    is not shown (random directions are nearly orthogonal to it, Li et al. 2018).
    """

    view = param.Selector(default="heatmap", objects=["heatmap", "contour", "surface"], doc="how the plane is drawn")
    directions = param.Selector(default="pca", objects=["pca", "filter", "layer"],
                                doc="plane: PCA of the trajectory (random filter-normalized until it has 3 points), "
                                    "or random filter- or layer-normalized directions")
    mode = param.Selector(default="eval", objects=["eval", "train"],
                          doc="BatchNorm with running statistics (eval) or batch statistics (train)")
    coarse = param.Integer(11, bounds=(2, None), softbounds=(5, 31), doc="points per axis of the first, quick grid")
    resolution = param.Integer(51, bounds=(2, None), softbounds=(11, 101), doc="points per axis of the refined grid")
    span = param.Number(1.0, bounds=(0, None), inclusive_bounds=(False, True), softbounds=(0.1, 3.0),
                        doc="half-width of a random plane, in units of the filter-normalized directions")
    samples = param.Integer(0, bounds=(0, None), softbounds=(0, 2048),
                            doc="examples per point (a fixed random subset); 0 uses all the training data")
    preview_samples = param.Integer(512, bounds=(0, None), softbounds=(0, 2048),
                                    doc="examples per point of the coarse grid, for a quick first picture; 0: as the fine grid")
    follow = param.Boolean(True, doc="recompute while the run trains")
    refresh = param.Integer(200, bounds=(1, None), softbounds=(10, 2000), doc="training steps between recomputations")
    record_every = param.Integer(10, bounds=(1, None), softbounds=(1, 100), doc="steps between recorded weights")
    azimuth = param.Number(35.0, bounds=(-180, 180), softbounds=(-180, 180), doc="3-D view: turn around the vertical")
    elevation = param.Number(30.0, bounds=(0, 90), softbounds=(0, 90), doc="3-D view: height of the eye")
    id_steps = param.Integer(100, bounds=(1, None), softbounds=(20, 1000), doc="training steps per subspace dimension")
    id_max_dim = LogInteger(512, bounds=(1, None), softbounds=(8, 4096), doc="largest subspace dimension tried")

    job_results = {"Loss landscape (plane)": (LANDSCAPE, "press Compute now"),
                   "Interpolation (line)": (LINE, "press Compute now"),
                   "Intrinsic dimension": (INTRINSIC, "press Measure intrinsic dimension")}

    def __init__(self, run: Run, feed: Feed | None = None, **params):
        super().__init__(run, feed, **params)
        self.probe = self.use_probe(TrajectoryProbe, every=self.record_every)
        self._computed_at, self._generation = -(10**9), run.history.generation
        self._shown = None
        self._has_bn = any("BatchNorm" in type(m).__name__ for m in run.model.modules())

        # sources: everything arrives through the Feed
        self.path = ColumnDataSource({"x": [], "y": [], "step": []})
        self.contours = ColumnDataSource({"xs": [], "ys": [], "level": []})
        self.wire = ColumnDataSource({"xs": [], "ys": []})
        self.mapper = LinearColorMapper(palette=Viridis256, low=0, high=1)
        self.image = self.feed.snapshot(LANDSCAPE, self._on_landscape, None)  # also fills the three above
        self.interp = self.feed.snapshot(LINE, _line, None)

        self.map_fig = plots.figure("Loss landscape", "direction 1", "direction 2", **_SIZE)
        self.heat = self.map_fig.image(image="z", x="x0", y="y0", dw="dw", dh="dh", source=self.image,
                                       color_mapper=self.mapper)
        self.lines = self.map_fig.multi_line("xs", "ys", source=self.contours, line_width=1.2,
                                             line_color={"field": "level", "transform": self.mapper})
        self.map_fig.line("x", "y", source=self.path, color="#d62728", line_width=2)  # seen on the heatmap and on white
        self.map_fig.scatter("x", "y", source=self.path, color="#d62728", line_color="white", size=6)
        self.map_fig.add_layout(ColorBar(color_mapper=self.mapper, title="log10 loss", width=10), "right")
        self.map_fig.x_range.range_padding = self.map_fig.y_range.range_padding = 0
        self.surf_fig = plots.figure("Loss surface (wireframe)", "", "", **_SIZE)
        self.surf_fig.multi_line("xs", "ys", source=self.wire, color="#1f77b4", line_width=0.7, alpha=0.8)
        self.axes = ColumnDataSource(wireframe_axes(self.azimuth, self.elevation))
        self.surf_fig.multi_line("xs", "ys", source=self.axes, color="black", line_width=1.5)
        self.surf_fig.text("x", "y", text="text", source=self.axes, text_font_size="9pt", text_color="black")
        self.surf_fig.axis.visible = self.surf_fig.grid.visible = False
        self.line_fig = plots.figure("Interpolation: initial (0) to current (1) weights", "alpha", "loss",
                                     height=260, log_y=True)
        self.line_fig.line("alpha", "loss", source=self.interp, line_width=2)
        self.line_fig.scatter("alpha", "loss", source=self.interp, size=4)
        self.dims = self.feed.snapshot(INTRINSIC, self._on_intrinsic, None)
        self.id_fig = plots.figure("Intrinsic dimension", "subspace dimension d", "performance", log_x=True,
                                   height=260)
        self.id_fig.line("d", "performance", source=self.dims, line_width=2, legend_label="subspace")
        self.id_fig.scatter("d", "performance", source=self.dims, size=6, legend_label="subspace")
        self.id_fig.line("d", "full", source=self.dims, line_dash="dashed", color="#2ca02c", legend_label="full model")
        self.id_fig.line("d", "threshold", source=self.dims, line_dash="dotted", color="#d62728", legend_label="threshold")
        self.id_fig.legend.location = "top_left"

        self.controls = {n: self.control(n) for n in
                         ("view", "directions", "mode", "coarse", "resolution", "span", "samples", "preview_samples",
                          "follow", "refresh", "azimuth", "elevation")}
        self.id_controls = {n: self.control(n) for n in ("id_steps", "id_max_dim")}
        self.compute_button = pn.widgets.Button(label="Compute now", color="primary", width=120)
        self.id_button = pn.widgets.Button(label="Measure intrinsic dimension", color="primary", width=220)
        self.compute_button.on_click(lambda e: self.compute())
        self.id_button.on_click(lambda e: self.measure_intrinsic())
        plane_slot = self.job_slot("plane", "Landscape", [self.compute_button], describe=self._describe)
        id_slot = self.job_slot("intrinsic", "Intrinsic dimension", [self.id_button])
        self.cancel_button, self.bar, self.status = plane_slot.cancel_button, plane_slot.bar, plane_slot.status
        self.id_bar, self.id_status = id_slot.bar, id_slot.status
        self.id_status.object = ("Trains the initial weights in random d-dimensional subspaces "
                                 "(Li et al. 2018); d_int90 reaches 90% of the full model.")
        self._map_pane, self._surf_pane = pn.pane.Bokeh(self.map_fig), pn.pane.Bokeh(self.surf_fig)
        self._view_box = pn.Column(self._map_pane, self._surf_pane)
        self.hint(self.map_fig, self.contours, "computing the plane …")
        self.hint(self.line_fig, self.interp, "computed after the plane")
        self.hint(self.id_fig, self.dims, "press Measure intrinsic dimension")
        self._layout = self.layout(
            [*(c.widget for c in self.controls.values()), plane_slot.panel(), pn.pane.Markdown("### Intrinsic dimension"),
             *(c.widget for c in self.id_controls.values()), id_slot.panel()],
            [self._view_box, self.line_fig, self.id_fig])
        self._show_view()
        self.param.watch(self._show_view, "view")
        self.param.watch(lambda *e: self._draw_surface(), ["azimuth", "elevation"])
        self.feed.on_tick(self._tick)
        self._ready()

    # ---- controls ---------------------------------------------------------------------------
    def _show_view(self, *events) -> None:
        # both figures stay in the page and only the Bokeh figures' own `visible` changes: swapping the panes in
        # and out of a container raced the surface's updates in the browser ("reference p2859 isn't known"), and
        # a Bokeh pane's `visible` does not come back once set False (panel 1.9)
        self.surf_fig.visible = self.view == "surface"
        self.map_fig.visible = self.view != "surface"
        self.heat.visible = self.view == "heatmap"

    # ---- jobs -------------------------------------------------------------------------------
    def compute(self):
        """Start computing the landscape of the run's current weights (cancelling one in progress)."""
        self.cancel()
        self._computed_at, self._generation = self.run.steps, self.run.history.generation
        return self.run_job(live.landscape, "plane", directions=self.directions, mode=self.mode, coarse=self.coarse,
                            resolution=self.resolution, span=self.span, samples=self.samples or None,
                            preview=self.preview_samples or None, trajectory=self.probe)

    def cancel(self) -> None:
        if self.slots["plane"].running:
            self.slots["plane"].cancel(wait=5.0)

    def measure_intrinsic(self):
        """Start the intrinsic-dimension measurement from the run's initial weights."""
        if self.slots["intrinsic"].running:
            self.slots["intrinsic"].cancel(wait=5.0)
        return self.run_job(live.intrinsic, "intrinsic", steps=self.id_steps, max_dim=self.id_max_dim)

    def _describe(self, job) -> str:
        step = self._shown["step"] if self._shown else self._computed_at
        return f"Computed at step {step}"

    # ---- on the UI's tick -------------------------------------------------------------------
    def _on_landscape(self, snap: dict | None) -> dict:
        self._shown = snap
        if snap:
            z = np.log10(np.maximum(snap["loss"], 1e-12))
            finite = z[np.isfinite(z)]
            if len(finite):
                self.mapper.low, self.mapper.high = float(finite.min()), float(max(finite.max(), finite.min() + 1e-6))
                levels = np.linspace(self.mapper.low, self.mapper.high, 14)[1:-1]
                lines = contour_data(snap["x"], snap["y"], z.T, levels, want_fill=False).line_data
                self.contours.data = {"xs": lines.xs, "ys": lines.ys, "level": lines.levels}
            self.path.data = ({"x": snap["path_x"], "y": snap["path_y"], "step": snap["path_step"]}
                              if "path_x" in snap else {"x": [], "y": [], "step": []})
            mode = f"{snap['mode']} mode"
            if self._has_bn:  # stated on the plot: which statistics BatchNorm used
                mode = "eval (BN running stats)" if snap["mode"] == "eval" else "train (BN batch stats)"
            n = len(snap["x"])
            sub = f" · {snap['samples']} ex." if snap["samples"] else ""
            self.map_fig.title.text = f"step {snap['step']} · {snap['kind']} {n}×{n}{sub} · {mode}"
        self._draw_surface()
        return _image(snap)

    def _draw_surface(self) -> None:
        snap = self._shown
        if not snap:
            self.wire.data = {"xs": [], "ys": []}
            return
        z = np.log10(np.maximum(np.nan_to_num(snap["loss"], nan=np.nanmax(snap["loss"])), 1e-12))
        xs, ys = wireframe(snap["x"], snap["y"], z, self.azimuth, self.elevation)
        self.wire.data = {"xs": xs, "ys": ys}
        self.axes.data = wireframe_axes(self.azimuth, self.elevation)

    def _on_intrinsic(self, snap: dict | None) -> dict:
        if snap:
            d = snap["d_int"]
            self.id_fig.title.text = (f"Intrinsic dimension: d_int{round(100 * snap['threshold'])} = {d}" if d else
                                      "Intrinsic dimension: not reached in the dimensions tried")
            self.id_fig.yaxis.axis_label = snap["metric"]
        return _intrinsic(snap)

    def _tick(self) -> None:
        run = self.run
        if run.history.generation != self._generation:  # reset (or load): start following afresh
            self._computed_at, self._generation = -(10**9), run.history.generation
        idle = not self.slots["plane"].running
        # following while its tab is hidden would spend a core on pictures nobody sees
        if self.follow and idle and run.status == "running" and run.steps - self._computed_at >= self.refresh \
                and self.feed.shown(self.group):
            self.compute()

    def __panel__(self):
        return self._layout
