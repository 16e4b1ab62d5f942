"""Export from the page: histories as CSV or Parquet downloads, plots as PNG or SVG.

Plots are saved by the browser that draws them: the toolbar's save button writes what the figure's
canvas shows, a PNG, or an SVG once the figure draws with `output_backend="svg"` (the SVG toggle
switches a panel's figures). Bokeh's Python-side `export_png`/`export_svg` would need Selenium and
a WebDriver on the server, which a headless teaching server or Binder does not have; the browser
already has everything, so saving stays there.
"""
from __future__ import annotations

import io
from typing import Callable, Iterable

import pandas as pd
import panel as pn

from trainlab.store.format import history_table, parquet_bytes


def csv_bytes(frame: pd.DataFrame) -> io.BytesIO:
    return io.BytesIO(frame.to_csv(index=False).encode())


def parquet(frame: pd.DataFrame) -> io.BytesIO:
    """A history frame as Parquet with the store's column types (numbers int64/float64, events as text):
    its object columns mix strings and NaN, which pyarrow would refuse as they are."""
    return io.BytesIO(parquet_bytes(history_table({c: frame[c].tolist() for c in frame.columns})))


def downloads(frame: Callable[[], pd.DataFrame], name: str, label: str = "History") -> list[pn.widgets.FileDownload]:
    """CSV and Parquet download buttons for the frame `frame()` returns when clicked (`name`.csv/.parquet)."""
    return [pn.widgets.FileDownload(callback=lambda: csv_bytes(frame()), filename=f"{name}.csv",
                                    label=f"{label} CSV", width=140),
            pn.widgets.FileDownload(callback=lambda: parquet(frame()), filename=f"{name}.parquet",
                                    label=f"{label} Parquet", width=150)]


def svg_toggle(figures: Callable[[], Iterable]) -> pn.widgets.Checkbox:
    """A checkbox drawing `figures()` as SVG while ticked, so their save buttons write .svg instead of .png
    (off by default: SVG redraws of streaming curves cost the browser more than a canvas)."""
    box = pn.widgets.Checkbox(label="plots as SVG (the save button then writes .svg)")

    def switch(event) -> None:
        for fig in figures():
            fig.output_backend = "svg" if event.new else "canvas"
    box.param.watch(switch, "value")
    return box


def figures_in(objects: Iterable) -> list:
    """The Bokeh figures among `objects` (figures, or Panel layouts and panes holding them)."""
    from bokeh.models import Plot

    out = []
    for obj in objects:
        if isinstance(obj, Plot):
            out.append(obj)
        elif hasattr(obj, "select"):
            out += [p.object for p in obj.select(pn.pane.Bokeh) if isinstance(p.object, Plot)]
    return list(dict.fromkeys(out))


def card(history: Callable[[], pd.DataFrame], figures: Callable[[], Iterable], name: str = "history") -> pn.Card:
    """What every lab's sidebar ends with: the run's history as CSV/Parquet, and its plots as SVG."""
    note = pn.pane.Markdown("Each plot's save button (its toolbar) writes a PNG, or an SVG with the box ticked.",
                            sizing_mode="stretch_width", styles={"font-size": "0.85em"})
    return pn.Card(pn.FlexBox(*downloads(history, name)), svg_toggle(figures), note,
                   title="Export: this run's history, the plots", collapsed=True, sizing_mode="stretch_width")
