"""Bokeh figures over a Feed's sources: they draw what the history holds and compute nothing.

`figure` and `legend` are the one way every panel makes a plot, so the lab tabs look alike.
"""
from __future__ import annotations

from bokeh.models import ColumnDataSource, HoverTool, LinearColorMapper
from bokeh.palettes import Category10_10, RdBu11
from bokeh.plotting import figure as _bokeh_figure

TRAIN, VAL = "#1f77b4", "#d62728"
SIZE = dict(width=430, height=250)
TOOLS = "pan,wheel_zoom,box_zoom,reset,save"


def figure(title: str, x_label: str = "step", y_label: str = "", *, log_x: bool = False, log_y: bool = False,
           hover: bool = False, **kw):
    """A figure of the lab's size and tools, without the Bokeh logo; `hover` adds a step/value tooltip."""
    fig = _bokeh_figure(title=title, x_axis_label=x_label, y_axis_label=y_label,
                        x_axis_type="log" if log_x else "linear", y_axis_type="log" if log_y else "linear",
                        **{"tools": TOOLS, **SIZE, **kw})
    if hover:
        fig.add_tools(HoverTool(tooltips=[("step", "@step{0}"), ("value", "$y{0.0000}")], mode="vline"))
    fig.toolbar.logo = None
    return fig


def legend(fig, location: str) -> None:
    """Click a legend entry to hide its curve."""
    fig.legend.location = location
    fig.legend.click_policy = "hide"
    fig.legend.background_fill_alpha = 0.6


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
    """One line per layer, from one source whose columns are the layers."""
    fig = figure(title, "step", ylabel, log_y=log, hover=True)
    for i, layer in enumerate(layers):
        fig.line("step", layer, source=source, color=Category10_10[i % 10], legend_label=layer, line_width=1.5)
    legend(fig, "top_right")
    return fig


def boundary(grid: ColumnDataSource, points: ColumnDataSource, title: str = "Decision boundary"):
    """The model's class-1 probability as an image, the training points over it."""
    fig = figure(title, "x1", "x2", width=430, height=380, match_aspect=True, tools="pan,wheel_zoom,reset,save")
    # Bokeh orders RdBu11 blue to red; reversed, p = 0 (class 0) is red and p = 1 (class 1) is blue
    mapper = LinearColorMapper(palette=list(reversed(RdBu11)), low=0, high=1)
    fig.image(image="z", x="x0", y="y0", dw="dw", dh="dh", source=grid, color_mapper=mapper, alpha=0.7)
    fig.scatter("x1", "x2", source=points, color="color", line_color="white", size=6)
    fig.x_range.range_padding = fig.y_range.range_padding = 0
    return fig
