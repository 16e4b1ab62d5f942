"""Playground2D: up to 8 optimizers racing on a 2-D test function, redrawn on every change.

All math is trainlab.playground's (Numba kernels): 8 paths x 1,000 steps take about a millisecond,
so every slider move recomputes synchronously. It needs no Run, so it is a plain Viewer.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import panel as pn
import param
from bokeh.events import Tap
from bokeh.models import ColorBar, ColumnDataSource, Legend, LegendItem, LinearColorMapper, Range1d
from bokeh.palettes import Category10_10, Viridis256
from panel.viewable import Viewer

from trainlab import playground
from trainlab.registry import option_values

from . import export, plots
from .controls import Control

_DEFAULT_ROWS = ("sgd", "momentum", "adam")
_LEVELS = 16  # contour lines over the log-loss range


class _Row:
    """One optimizer of the playground: its rule, hyperparameters (declared params), start and colour."""

    def __init__(self, owner: Playground2D, index: int, rule: str, start: tuple[float, float], color: str,
                 values: dict | None = None):
        self.owner, self.index, self.start, self.race_lr = owner, index, start, None
        self.chooser = pn.widgets.Select(options=playground.rules.names(), value=rule, width=110)
        self.color = pn.widgets.ColorPicker(value=color, width=40)
        self.remove = pn.widgets.Button(label="✕", width=35, description="remove this optimizer")
        self._controls = pn.Column(sizing_mode="stretch_width", margin=(0, 0, 0, 10))
        self.layout = pn.Column(pn.Row(self.color, self.chooser, self.remove), self._controls,
                                sizing_mode="stretch_width")
        self._build(rule, values or {})
        self.chooser.param.watch(self._choose, "value")
        self.color.param.watch(lambda e: owner._recolor(self), "value")
        self.remove.on_click(lambda e: owner.remove_optimizer(self))

    def _build(self, rule: str, values: dict) -> None:
        entry = playground.rules[rule]
        self.rule, self.options = rule, entry.options(**{k: v for k, v in values.items() if k in entry.params})
        self.controls = {n: Control(self.options, n, self._set) for n in entry.params}
        self._controls.objects = [c.widget for c in self.controls.values()]

    @property
    def spec(self) -> tuple[str, dict[str, Any]]:
        return self.rule, option_values(self.options)

    def _choose(self, event) -> None:
        """Another rule: the hyperparameters it shares (lr, betas, ...) carry over."""
        self._build(event.new, option_values(self.options))
        self.race_lr = None
        self.owner._recompute()

    def _set(self, name: str, value: Any) -> None:
        """A control moved: checked against the declared range first; a rejection keeps the old value."""
        try:
            playground.rules[self.rule].options(**{**option_values(self.options), name: value})
        except ValueError as e:
            self.owner.error = str(e)
            self.controls[name].show(getattr(self.options, name))
            return
        self.owner.error = ""
        setattr(self.options, name, value)
        self.owner._recompute()

    def set_lr(self, lr: float) -> None:
        self.options.lr = lr
        self.controls["lr"].show(lr)


class Playground2D(Viewer):
    """Optimizers on analytic 2-D functions: contours, paths, tap to move a start, and a fair lr race."""

    function = param.Selector(default="rosenbrock", objects=playground.functions.names(), doc="the test function")
    steps = param.Integer(300, bounds=(1, playground.MAX_STEPS), softbounds=(10, 2000), step=10,
                          doc="updates per optimizer")
    selected = param.Integer(0, bounds=(0, playground.MAX_OPTIMIZERS - 1),
                             doc="the optimizer whose start point a tap on the plot moves")
    error = param.String("", doc="the last rejected setting, shown until the next accepted one")

    def __init__(self, optimizers=_DEFAULT_ROWS, **params):
        super().__init__(**params)
        self.rows: list[_Row] = []
        self.race: playground.Race | None = None
        self.computed: tuple | None = None  # (function, paths) of the last recompute: what the Export card writes
        self._changed: list = []  # called after every recompute (the Export card's refresh)
        self._fn_options = pn.Column(sizing_mode="stretch_width")
        self._build_figure()
        self._chooser = pn.widgets.Select.from_param(self.param.function, name="function")
        self._steps = Control(self, "steps", lambda n, v: setattr(self, "steps", v))
        self._target = pn.widgets.RadioButtonGroup()
        self._target.param.watch(lambda e: setattr(self, "selected", int(e.new) - 1), "value")
        self._add = pn.widgets.Button(label="+ optimizer", width=110)
        self._add.on_click(lambda e: self.add_optimizer())
        self._race = pn.widgets.Button(label="Fair race", color="primary", width=110,
                                       description="tune each optimizer's lr on one log grid: same steps, "
                                                   "best final loss")
        self._race.on_click(lambda e: self.fair_race())
        self._rows = pn.Column(sizing_mode="stretch_width")
        self._table = pn.pane.DataFrame(pd.DataFrame(), index=False, sizing_mode="stretch_width",
                                        float_format="{:.3g}".format)
        self._error = pn.pane.Alert("", alert_type="danger", visible=False, sizing_mode="stretch_width")
        self._function_changed()
        for rule in optimizers[: playground.MAX_OPTIMIZERS]:
            self.add_optimizer(rule, recompute=False)
        self._recompute()
        sidebar = pn.Column(self._chooser, self._fn_options, self._steps.widget, pn.Row(self._add, self._race),
                            pn.pane.Markdown("tap the plot to move the start of optimizer:", margin=(0, 10)),
                            self._target, self._rows, self.export_card(), width=330)
        # the figure in a FlexBox: a Bokeh pane directly in a Row or Column inside the dashboard's Tabs cost
        # the browser 15-20 s of layout passes (measured); in a FlexBox, as every lab's figures are, 0.5 s
        self._layout = pn.Row(sidebar, pn.Column(self._error, pn.FlexBox(pn.pane.Bokeh(self.figure)), self._table,
                                                 sizing_mode="stretch_width"), sizing_mode="stretch_width")

    # ---- building -----------------------------------------------------------------------------
    def export_card(self) -> pn.Card:
        """The Export card: the paths drawn (a row per point) and the last fair race's grid, as CSV/Parquet; the
        plot as PNG/SVG."""
        paths = export.Result(
            "Paths", lambda: self.computed, lambda c: playground.frame(c[1], c[0]),
            lambda c: f"playground-{c[0].name}-{len(c[1])}paths-{c[1][0].steps}steps", "change a setting",
            describe=lambda c: f"{len(c[1])} optimizers on {c[0].name}, {c[1][0].steps} steps")
        race = export.Result(
            "Fair race", lambda: self.race, lambda r: r.frame(),
            lambda r: f"fair-race-{r.function.name}-{len(r.lrs)}lrs-{r.best[0].steps}steps", "press Fair race",
            describe=lambda r: f"{len(r.optimizers)} optimizers × {len(r.lrs)} lrs on {r.function.name}")
        return export.card(None, lambda: [self.figure], results=[paths, race], refresh=self._changed.append,
                           what="the paths, the race", heading="The paths drawn and the last fair race:")

    def _build_figure(self) -> None:
        # fixed ranges the function sets (a DataRange1d would follow the paths, or keep the last function's box)
        fig = plots.figure("log10 loss", "x", "y", width=620, height=520, tools="pan,wheel_zoom,reset,save,tap",
                           x_range=Range1d(0, 1), y_range=Range1d(0, 1))
        self.grid = ColumnDataSource({"z": [], "x0": [], "y0": [], "dw": [], "dh": []})
        self._mapper = LinearColorMapper(palette=Viridis256)
        fig.image(image="z", x="x0", y="y0", dw="dw", dh="dh", source=self.grid, color_mapper=self._mapper, alpha=0.85)
        self.contours = ColumnDataSource({"xs": [], "ys": []})
        fig.multi_line("xs", "ys", source=self.contours, color="white", alpha=0.35, line_width=1)
        self.minima = ColumnDataSource({"x": [], "y": []})
        fig.scatter("x", "y", source=self.minima, marker="star", size=14, color="white", line_color="black")
        self.sources, self.starts, self._renderers = [], [], []
        for i in range(playground.MAX_OPTIMIZERS):
            path, start = ColumnDataSource({"x": [], "y": []}), ColumnDataSource({"x": [], "y": []})
            color = Category10_10[i % 10]
            line = fig.line("x", "y", source=path, color=color, line_width=2)
            dots = fig.scatter("x", "y", source=path, color=color, size=3)
            first = fig.scatter("x", "y", source=start, color=color, size=11, line_color="white", line_width=2)
            self.sources.append(path), self.starts.append(start), self._renderers.append((line, dots, first))
        fig.add_layout(ColorBar(color_mapper=self._mapper, width=10, title="log10 loss"), "right")
        # below the map, three to a row, off the paths it names (inside, it hid a corner of the function)
        self._legend = Legend(items=[], location="top_left", click_policy="hide", orientation="horizontal", ncols=3,
                              label_text_font_size="9pt", spacing=8, padding=4, border_line_alpha=0)
        fig.add_layout(self._legend, "below")
        fig.height += 50
        fig.on_event(Tap, self._on_tap)
        self.figure = fig

    def _contour_lines(self, xs, ys, z) -> dict:
        """Iso-lines of the log-loss image (bokeh's contour_data draws them; the values are the lab's)."""
        from bokeh.plotting.contour import contour_data

        levels = np.linspace(float(z.min()), float(z.max()), _LEVELS + 2)[1:-1]
        lines = contour_data(xs, ys, z, levels, want_fill=False, want_line=True).line_data
        return {"xs": list(lines.xs), "ys": list(lines.ys)}

    # ---- public -------------------------------------------------------------------------------
    @property
    def function_spec(self) -> tuple[str, dict]:
        return self.function, option_values(self._fn_opts)

    def add_optimizer(self, rule: str = "adam", values: dict | None = None, start=None, recompute: bool = True):
        """Another optimizer row (at most 8), starting at the function's default start."""
        if len(self.rows) >= playground.MAX_OPTIMIZERS:
            raise ValueError(f"at most {playground.MAX_OPTIMIZERS} optimizers at once")
        i = len(self.rows)
        start = self._fn.start if start is None else (float(start[0]), float(start[1]))
        self.rows.append(_Row(self, i, rule, start, Category10_10[i % 10], values))
        self._relayout()
        if recompute:
            self._recompute()
        return self.rows[-1]

    def remove_optimizer(self, row: _Row) -> None:
        if len(self.rows) > 1:
            self.rows.remove(row)
            self._relayout()
            self._recompute()

    def tap(self, x: float, y: float) -> None:
        """Move the selected optimizer's start to (x, y) and recompute."""
        row = self.rows[min(self.selected, len(self.rows) - 1)]
        row.start = (float(x), float(y))
        self._recompute()

    def fair_race(self) -> playground.Race:
        """Tune every row's lr (same grid, same steps, final loss), set the chosen lrs, redraw."""
        race = playground.fair_race(self._fn, [r.spec for r in self.rows], start=[r.start for r in self.rows],
                                    steps=self.steps)
        for row, best in zip(self.rows, race.best):
            row.set_lr(best.lr)
            row.race_lr = best.lr
        self.race = race
        self._recompute()
        return race

    # ---- events -------------------------------------------------------------------------------
    def _on_tap(self, event) -> None:
        if event.x is not None and event.y is not None:
            self.tap(event.x, event.y)

    @param.depends("function", watch=True)
    def _function_changed(self) -> None:
        entry = playground.functions[self.function]
        self._fn_opts = entry.options()
        self.fn_controls = {n: Control(self._fn_opts, n, self._set_option) for n in entry.params}
        self._fn_options.objects = [c.widget for c in self.fn_controls.values()]
        self._fn = playground.as_function(self.function_spec)
        for row in self.rows:  # a start from another function's view is meaningless here
            row.start = self._fn.start
        self._redraw_function()
        if self.rows:
            self._recompute()

    def _set_option(self, name: str, value: Any) -> None:
        try:
            fn = playground.as_function((self.function, {**option_values(self._fn_opts), name: value}))
        except ValueError as e:
            self.error = str(e)
            self.fn_controls[name].show(getattr(self._fn_opts, name))
            return
        self.error = ""
        setattr(self._fn_opts, name, value)
        self._fn = fn
        self._redraw_function()
        self._recompute()

    @param.depends("steps", watch=True)
    def _steps_changed(self) -> None:
        self._steps.show(self.steps)
        self._recompute()

    @param.depends("selected", watch=True)
    def _selected_changed(self) -> None:
        self._target.value = str(self.selected + 1)

    @param.depends("error", watch=True)
    def _show_error(self) -> None:
        self._error.object, self._error.visible = self.error, bool(self.error)

    def _recolor(self, row: _Row) -> None:
        line, dots, first = self._renderers[row.index]
        line.glyph.line_color = dots.glyph.line_color = dots.glyph.fill_color = first.glyph.fill_color = row.color.value

    # ---- drawing ------------------------------------------------------------------------------
    def _relayout(self) -> None:
        for i, row in enumerate(self.rows):
            row.index = i
            self._recolor(row)
        self._rows.objects = [r.layout for r in self.rows]
        self._target.options = [str(i + 1) for i in range(len(self.rows))]
        self.selected = min(self.selected, len(self.rows) - 1)
        self._target.value = str(self.selected + 1)
        self._add.disabled = len(self.rows) >= playground.MAX_OPTIMIZERS
        for i, renderers in enumerate(self._renderers):
            for r in renderers:
                r.visible = i < len(self.rows)

    def _redraw_function(self) -> None:
        xs, ys, z = playground.contour_grid(self._fn)
        self.grid.data = {"z": [z], "x0": [xs[0]], "y0": [ys[0]], "dw": [xs[-1] - xs[0]], "dh": [ys[-1] - ys[0]]}
        self._mapper.low, self._mapper.high = float(z.min()), float(z.max())
        self.contours.data = self._contour_lines(xs, ys, z)
        self.minima.data = {"x": [m[0] for m in self._fn.minima], "y": [m[1] for m in self._fn.minima]}
        x0, x1, y0, y1 = self._fn.box
        for rng, lo, hi in ((self.figure.x_range, x0, x1), (self.figure.y_range, y0, y1)):
            rng.update(start=lo, end=hi, reset_start=lo, reset_end=hi)  # "reset" returns to this function's box
        self.figure.title.text = f"{self.function}: log10 loss above the minimum"

    def _recompute(self) -> None:
        """Every path again (one kernel call), into the sources and the table."""
        try:
            paths = playground.trajectories(self._fn, [r.spec for r in self.rows],
                                            start=[r.start for r in self.rows], steps=self.steps)
        except ValueError as e:
            self.error = str(e)
            return
        self.paths = paths
        self.computed = (self._fn, paths)
        labels = [f"{i + 1} {p.optimizer}, lr {p.lr:.2g}" for i, p in enumerate(paths)]
        if labels != [item.label["value"] for item in self._legend.items]:  # new Bokeh models only when they change
            self._legend.items = [LegendItem(label=label, renderers=list(self._renderers[i][:2]))
                                  for i, label in enumerate(labels)]
        for i, path in enumerate(paths):
            self.sources[i].data = {"x": path.xy[:, 0], "y": path.xy[:, 1]}
            self.starts[i].data = {"x": [path.start[0]], "y": [path.start[1]]}
        self._table.object = pd.DataFrame({
            "#": range(1, len(paths) + 1),
            "optimizer": [p.optimizer for p in paths],
            "lr": [p.lr for p in paths],
            "final loss": [p.final_loss for p in paths],
            "status": [f"diverged at step {len(p.xy)}" if p.diverged else "ok" for p in paths],
            "fair-race lr": ["" if r.race_lr is None else f"{r.race_lr:.3g}" for r in self.rows],
        })
        for fn in self._changed:
            fn()

    def __panel__(self):
        return self._layout
