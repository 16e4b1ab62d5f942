"""Bokeh figures over a Feed's sources: they draw what the history holds and compute nothing.

`figure` and `legend` are the one way every panel makes a plot, so the lab tabs look alike.
"""
from __future__ import annotations

from bokeh.models import (ColumnDataSource, CustomJSTickFormatter, HoverTool, Label, LinearColorMapper, LogTickFormatter,
                          NumeralTickFormatter, Range1d)
from bokeh.palettes import Category10_10, RdBu11
from bokeh.plotting import figure as _bokeh_figure

TRAIN, VAL = "#1f77b4", "#d62728"
SIZE = dict(width=400, height=250)  # two side by side beside a lab's sidebar in a 1,500-pixel window
TOOLS = "pan,wheel_zoom,box_zoom,reset,save"

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


_WHOLE = ("layer", "depth", "rank")  # x axes of whole numbers: no ticks at 1.5


def figure(title: str, x_label: str = "step", y_label: str = "", *, log_x: bool = False, log_y: bool = False,
           hover: bool = False, **kw):
    """A figure of the lab's size and tools, without the Bokeh logo; `hover` adds a step/value tooltip.

    Log axes label only powers of ten when they span more than a decade, and at most a few values
    inside one, so labels never run into each other ("0.030.040.05")."""
    fig = _bokeh_figure(title=title, x_axis_label=x_label, y_axis_label=y_label,
                        x_axis_type="log" if log_x else "linear", y_axis_type="log" if log_y else "linear",
                        **{"tools": TOOLS, **SIZE, **kw})
    for axis, log, label in ((fig.xaxis, log_x, x_label), (fig.yaxis, log_y, y_label)):
        if log:
            axis.ticker.desired_num_ticks = 4
            axis.formatter = LogTickFormatter(min_exponent=3)
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


def legend(fig, location: str, outside: bool = False) -> None:
    """Click a legend entry to hide its curve; `outside` puts it right of the plot, off the curves."""
    fig.legend.click_policy = "hide"
    fig.legend.background_fill_alpha = 0.6
    fig.legend.label_text_font_size = "9pt"
    fig.legend.spacing, fig.legend.padding = 0, 4
    if outside:
        fig.legend.location = "top_left"
        fig.add_layout(fig.legend[0], "right")
        fig.width += 80
    else:
        fig.legend.location = location


def placeholder(fig, text: str) -> Label:
    """A note in the middle of an empty plot saying what will fill it; hide it when data arrives."""
    note = Label(x=fig.width / 2 - 10, y=fig.height / 2 - 40, x_units="screen", y_units="screen", text=text,
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
    fig = figure(title, "step", ylabel, log_y=log, hover=True, width=SIZE["width"] - 80)
    for i, layer in enumerate(layers):
        fig.line("step", layer, source=source, color=Category10_10[i % 10], legend_label=layer, line_width=1.5)
    if layers:  # a model without such layers gets an empty plot (its panel says why), not an empty legend
        legend(fig, "top_right", outside=True)
    return fig


def sparsity_map(title: str, source: ColumnDataSource, layers: list[str], every: int):
    """A heat map of one value in [0, 1] per layer (rows) and measured step (columns), from one streaming source
    whose columns are the layers: a cell per row of it, `every` steps wide (white 0, dark 1)."""
    from bokeh.models import ColorBar, FactorRange
    from bokeh.palettes import Viridis256
    from bokeh.core.properties import value
    from bokeh.transform import linear_cmap

    fig = _bokeh_figure(title=title, x_axis_label="step", y_range=FactorRange(*reversed(layers or ["-"])),
                        tools=TOOLS, width=SIZE["width"] + 60, height=SIZE["height"])
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
