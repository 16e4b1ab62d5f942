"""Bokeh figures over a Feed's sources: they draw what the history holds and compute nothing.

`figure` and `legend` are the one way every panel makes a plot, so the lab tabs look alike.
"""
from __future__ import annotations

import textwrap

from bokeh.models import (ColumnDataSource, CustomJS, CustomJSTickFormatter, DataRange1d, GlyphRenderer, HoverTool,
                          Label, LinearColorMapper, Node, NumeralTickFormatter, Range1d)
from bokeh.models.tools import SelectTool
from bokeh.palettes import Category10_10, RdBu11
from bokeh.plotting import figure as _bokeh_figure

TRAIN, VAL = "#1f77b4", "#d62728"
SIZE = dict(width=400, height=250)  # a figure's size where nothing stretches it (a fixed-width figure, a notebook)
TOOLS = "save,pan,wheel_zoom,box_zoom,reset"  # save first: a short toolbar folds the last ones away
# A figure without a width of its own stretches across a grid cell: cells at least MIN_WIDTH wide, as many
# to a row as fit (two beside a lab's controls in a 1,400-pixel window, three in 1,920), a lone last one at
# most MAX_WIDTH. The flex item is the figure itself (Panel's FlexBox wraps each child in `display: contents`).
MIN_WIDTH, MAX_WIDTH = 340, 640
GRID_CELL = {"flex": f"1 1 {MIN_WIDTH + 20}px", "max-width": f"{MAX_WIDTH}px"}

# Bokeh's default labels of a linear axis take as many digits as its closest two ticks need, all in one
# form: "0.000e+0 1.000e+5 ..." for steps, "-1.500e-4 -1.000e-4 ..." for a landscape's directions, which
# run into each other. Steps read as 0, 200k, 1.2m; other values with at most four significant digits,
# and in exponent form (-1.5e-4) only when very small or large
_STEP_LABELS = "0.[000]a"
_LABELS = """
const a = Math.abs(tick);
if (a < 1e-12) return "0";
if (a >= 1e-3 && a < 1e5) return String(Number(tick.toPrecision(4)));
return tick.toExponential(2).replace(/\.?0+e/, "e");
"""


# A log axis fitted to a nearly constant series (SGD's effective lr: 0.05 ± 1e-6) would blow float noise up
# to the whole height, labelled 0.049999 0.05 0.050001. Auto-ranged, it spans at least LOG_SPAN decades
# around the data's middle; once someone zooms or pans (have_updated_interactively) it is left alone.
# DataRange1d's own min_interval cannot do this: zoom tools read it in data units and would refuse any zoom.
LOG_SPAN = 1.0
_MIN_DECADES = """
const r = cb_obj;
if (r.have_updated_interactively || !(r.start > 0) || !(r.end > 0)) return;
const lo = Math.log10(Math.min(r.start, r.end)), hi = Math.log10(Math.max(r.start, r.end));
if (hi - lo >= span - 1e-9) return;
const c = (lo + hi) / 2;
r.setv({start: 10 ** (c - span / 2), end: 10 ** (c + span / 2)});
"""
# LogTickFormatter names every tick by its nearest power of ten: inside one decade, where the ticker
# picks 0.02 0.05, it printed "0.1" at 0.05. Powers of ten read 0.001 ... 10000 and 10⁻⁴ beyond; other ticks
# read as numbers (0.05, 2e-4); where there are more than two, only 1, 2 and 5 times a power of ten
_RAISE = """
const sup = {"-": "⁻", "0": "⁰", "1": "¹", "2": "²", "3": "³", "4": "⁴", "5": "⁵", "6": "⁶", "7": "⁷", "8": "⁸", "9": "⁹"};
const raise = (r) => String(r).split("").map((c) => sup[c]).join("");
"""
_LOG_LABELS = _RAISE + """
if (!(tick > 0)) return "";
const power = (t) => Math.abs(Math.log10(t) - Math.round(Math.log10(t))) < 1e-6;
const e = Math.log10(tick), r = Math.round(e);
const m = tick / 10 ** Math.floor(e + 1e-9), readable = [1, 2, 5].some((k) => Math.abs(m - k) < 1e-6);
if (!readable && ticks.length > 2) return "";  // 0.01 0.02 0.03 0.04 ... reads 0.01 0.02 0.05; 1000 1500 2000 reads 1000 2000
if (power(tick)) {
  if (r >= -3 && r < 5) return String(Number((10 ** r).toPrecision(1)));  // as the other ticks read: 500 1000 2000
  return "10" + raise(r);
}
if (tick >= 1e-3 && tick < 1e5) return String(Number(tick.toPrecision(2)));
return tick.toExponential(1).replace(/\.0e/, "e").replace("e+", "e");
"""

# a base-2 log axis (an lr grid of powers of two) reads 2⁻⁸ 2⁻⁴ 2⁰ 2⁴, ticks only at whole powers
_LOG2_LABELS = _RAISE + """
const e = Math.log2(tick);
return tick > 0 && Math.abs(e - Math.round(e)) < 1e-6 ? "2" + raise(Math.round(e)) : "";
"""

_WHOLE = ("layer", "depth", "rank")  # x axes of whole numbers: no ticks at 1.5


def figure(title: str, x_label: str = "step", y_label: str = "", *, log_x: bool | int = False, log_y: bool = False,
           hover: bool = False, **kw):
    """A figure of the lab's tools (a toolbar beside the plot: above it, beside a long title, it folded the save
    button away), without the Bokeh logo; `hover` adds a step/value tooltip. Without a `width` it fills a cell of the lab's grid (see GRID_CELL).

    Log axes label only powers of ten when they span more than a decade, and at most a few values
    inside one, so labels never run into each other ("0.030.040.05"); `log_x=2` labels powers of two instead."""
    size = {"height": SIZE["height"]}
    if "width" not in kw:
        size.update(width=SIZE["width"], sizing_mode="stretch_width", min_width=MIN_WIDTH, styles=dict(GRID_CELL))
    fig = _bokeh_figure(title=title, x_axis_label=x_label, y_axis_label=y_label,
                        x_axis_type="log" if log_x else "linear", y_axis_type="log" if log_y else "linear",
                        **{"tools": TOOLS, **size, **kw})
    for axis, log, label, rng in ((fig.xaxis, log_x, x_label, fig.x_range), (fig.yaxis, log_y, y_label, fig.y_range)):
        if log:
            axis.ticker.desired_num_ticks = 6
            axis.formatter = CustomJSTickFormatter(code=_LOG2_LABELS if log == 2 else _LOG_LABELS)
            if log == 2:
                axis.ticker.update(base=2, mantissas=[1])
            if isinstance(rng, DataRange1d):  # a callback of its own: a model belongs to one document
                widen = CustomJS(args={"span": LOG_SPAN}, code=_MIN_DECADES)
                rng.js_on_change("start", widen)
                rng.js_on_change("end", widen)
        elif label == "step":
            axis.formatter = NumeralTickFormatter(format=_STEP_LABELS)
        else:
            axis.formatter = CustomJSTickFormatter(code=_LABELS)
    if x_label in _WHOLE and not log_x:
        fig.xaxis.ticker.min_interval = 1
    if hover:
        fig.add_tools(HoverTool(tooltips=[("step", "@step{0}"), ("value", "$y{0.0000}")], mode="vline"))
    fig.toolbar.logo = None
    return fig


def legend(fig, location: str = "top_right", outside: bool = True) -> None:
    """Click a legend entry to hide its curve. Outside (the default) it sits right of the plot, off the
    curves; `outside=False` keeps it inside at `location` (a plot whose corner is always free)."""
    if not fig.legend:
        return
    box = fig.legend[0]
    box.click_policy = "hide"
    box.background_fill_alpha = 0.6
    box.label_text_font_size = "9pt"
    box.spacing, box.padding = 0, 4
    box.glyph_width, box.label_standoff = 16, 3
    if outside and box not in fig.right and box not in fig.below:
        box.location = "top_left"
        if box in fig.center:
            fig.center.remove(box)
        # beside the plot, unless its labels are long ("λ_max(P⁻¹H) (adaptive)"): there it would leave a
        # 340-pixel cell a plot 130 pixels wide, so it goes below, and the figure grows by its height
        if max(map(len, _labels(box)), default=0) > LONG_LABEL:
            fig.add_layout(box, "below")
            fig.height += 16 * len(box.items) + 8
        else:
            fig.add_layout(box, "right")
    elif not outside:
        box.location = location


LONG_LABEL = 14  # characters


def _labels(box) -> list[str]:
    """A legend's labels as text (a label read from a data column counts as short: its values are unknown here)."""
    return [getattr(item.label, "value", "") or "" for item in box.items if item.label is not None]


def tidy(fig) -> None:
    """Every lab figure's last touch: a legend the panel left as Bokeh made it goes outside, click-to-hide; its
    curves leave their faded copies to the page: the glyph for a muted legend entry, and the one for points not
    selected where nothing can select (no select or tap tool).

    Bokeh's plotting API builds both copies for every glyph, two of the six models a curve costs, and a served
    page pays about a millisecond of server time per model (built, then serialized): "auto" has BokehJS make
    the same faded glyphs in the browser instead (legends here hide rather than mute)."""
    if fig.legend and fig.legend[0].click_policy == "none":
        legend(fig)
    selects = any(isinstance(t, SelectTool) for t in fig.tools)
    for r in fig.renderers:
        if isinstance(r, GlyphRenderer):
            r.muted_glyph = "auto"
            if not selects:
                r.nonselection_glyph = "auto"


def placeholder(fig, text: str, width: int = 40) -> Label:
    """A note in the middle of an empty plot's frame (wrapped to fit the narrowest cell) saying what will
    fill it; hide it when data arrives."""
    note = Label(x=Node.frame.center, y=Node.frame.center, anchor="center", text=textwrap.fill(text, width),
                 text_align="center", text_color="#777777", text_font_size="10pt", text_font_style="italic")
    fig.add_layout(note)
    return note


def train_val(title: str, ylabel: str, train: ColumnDataSource, val: ColumnDataSource, y: str, log: bool = False,
              legend_at: str = "top_right"):
    """A training curve and its validation points, joined."""
    fig = figure(title, "step", ylabel, log_y=log, hover=True)
    fig.line("step", y, source=train, color=TRAIN, legend_label="train", line_width=1.5)
    val_y = "val_" + y.removeprefix("train_")
    fig.line("step", val_y, source=val, color=VAL, legend_label="validation", line_width=2)
    fig.scatter("step", val_y, source=val, color=VAL, legend_label="validation", size=5)
    legend(fig, legend_at)
    return fig


def single(title: str, ylabel: str, source: ColumnDataSource, y: str, log: bool = False):
    fig = figure(title, "step", ylabel, log_y=log, hover=True)
    fig.line("step", y, source=source, color=TRAIN, line_width=2)
    return fig


def per_layer(title: str, ylabel: str, source: ColumnDataSource, layers: list[str], log: bool = True):
    """One line per layer, from one source whose columns are the layers (the legend beside the plot)."""
    fig = figure(title, "step", ylabel, log_y=log, hover=True)
    for i, layer in enumerate(layers):
        fig.line("step", layer, source=source, color=Category10_10[i % 10], legend_label=layer, line_width=1.5)
    if layers:  # a model without such layers gets an empty plot (its panel says why), not an empty legend
        legend(fig)
    return fig


def sparsity_map(title: str, source: ColumnDataSource, layers: list[str], every: int):
    """A heat map of one value in [0, 1] per layer (rows) and measured step (columns), from one streaming source
    whose columns are the layers: a cell per row of it, `every` steps wide (white 0, dark 1)."""
    from bokeh.models import ColorBar, FactorRange
    from bokeh.palettes import Viridis256
    from bokeh.core.properties import value
    from bokeh.transform import linear_cmap

    fig = _bokeh_figure(title=title, x_axis_label="step", y_range=FactorRange(*reversed(layers or ["-"])),
                        tools=TOOLS, height=SIZE["height"], width=SIZE["width"],
                        sizing_mode="stretch_width", min_width=MIN_WIDTH, styles=dict(GRID_CELL))
    fig.xaxis.formatter = NumeralTickFormatter(format=_STEP_LABELS)
    fig.toolbar.logo = None
    for layer in layers:
        fig.rect("step", value(layer), width=every, height=0.92, source=source, line_color=None,
                 fill_color=linear_cmap(layer, list(reversed(Viridis256)), 0, 1))
    if layers:
        fig.add_layout(ColorBar(color_mapper=linear_cmap(layers[0], list(reversed(Viridis256)), 0, 1)["transform"],
                                width=8, title="sparsity"), "right")
    fig.add_tools(HoverTool(tooltips=[("step", "@step{0}")] + [(layer, f"@{{{layer}}}{{0.000}}") for layer in layers]))
    return fig


def boundary(grid: ColumnDataSource, points: ColumnDataSource, title: str = "Decision boundary"):
    """The model's class-1 probability as an image that fills the plot, the training points over it."""
    (x0,), (y0,), (dw,), (dh,) = (grid.data[k] for k in ("x0", "y0", "dw", "dh"))
    fig = figure(title, "x1", "x2", width=400, height=380, tools="pan,wheel_zoom,reset,save",
                 x_range=Range1d(x0, x0 + dw), y_range=Range1d(y0, y0 + dh))
    # Bokeh orders RdBu11 blue to red; reversed, p = 0 (class 0) is red and p = 1 (class 1) is blue
    mapper = LinearColorMapper(palette=list(reversed(RdBu11)), low=0, high=1)
    fig.image(image="z", x="x0", y="y0", dw="dw", dh="dh", source=grid, color_mapper=mapper, alpha=0.7)
    fig.scatter("x1", "x2", source=points, color="color", line_color="white", size=6)
    return fig
