"""Export from the page: histories and job results as CSV or Parquet downloads, plots as PNG or SVG.

`card` is every Export card: the run's history (when there is one), the newest result of each of the panel's
jobs (`Result`: disabled, saying what makes it, until there is one; the file named after the step it was
computed at), and the SVG switch for the plots' save buttons.

Plots are saved by the browser that draws them: the toolbar's save button writes what the figure's
canvas shows, a PNG, or an SVG once the figure draws with `output_backend="svg"` (the SVG toggle
switches a panel's figures). Bokeh's Python-side `export_png`/`export_svg` would need Selenium and
a WebDriver on the server, which a headless teaching server or Binder does not have; the browser
already has everything, so saving stays there.
"""
from __future__ import annotations

import html
import io
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import pandas as pd
import panel as pn
import pyarrow as pa

from trainlab.store.format import history_table, parquet_bytes

from . import lazy


def csv_bytes(frame: pd.DataFrame) -> io.BytesIO:
    return io.BytesIO(frame.to_csv(index=False).encode())


def parquet(frame: pd.DataFrame) -> io.BytesIO:
    """A frame as Parquet with the store's column types (numbers int64/float64, text; booleans stay booleans):
    a history's object columns mix strings and NaN, which pyarrow would refuse as they are."""
    flags = [c for c in frame.columns if pd.api.types.is_bool_dtype(frame[c])]
    table = history_table({c: frame[c].tolist() for c in frame.columns if c not in flags})
    for c in flags:
        table = table.add_column(list(frame.columns).index(c), c, pa.array(frame[c].tolist(), pa.bool_()))
    return io.BytesIO(parquet_bytes(table))


def downloads(frame: Callable[[], pd.DataFrame], name: str, label: str = "History",
              widths: tuple[int, int] = (140, 150), margin: tuple[int, int] = (5, 10)) -> list[pn.widgets.FileDownload]:
    """CSV and Parquet download buttons for the frame `frame()` returns when clicked (`name`.csv/.parquet)."""
    return _buttons(lambda: (name, frame()), name, label, widths, margin)


def _buttons(read: Callable[[], tuple[str, pd.DataFrame]], name: str, label: str,
             widths: tuple[int, int] = (140, 150), margin: tuple[int, int] = (5, 10)) -> list[pn.widgets.FileDownload]:
    """The CSV and Parquet buttons over `read()` -> (file name without extension, frame), read once per click: the
    file is named after the frame it holds."""
    out = []
    for (ext, encode), width in zip((("csv", csv_bytes), ("parquet", parquet)), widths):
        kind = {"csv": "CSV", "parquet": "Parquet"}[ext]
        button = pn.widgets.FileDownload(filename=f"{name}.{ext}", label=f"{label} {kind}" if label else kind,
                                         width=width, margin=margin)

        def transfer(button=button, ext=ext, encode=encode) -> io.BytesIO:
            got, frame = read()
            button.filename = f"{got}.{ext}"  # FileDownload reads it after the callback returns
            return encode(frame)
        button.callback = transfer
        out.append(button)
    return out


@dataclass(frozen=True)
class Result:
    """A job's newest result in the Export card: `latest()` is None while there is none, else a value that `frame`
    turns into rows and `name` into a file name (a new value, by identity, renames the file); `missing` says what
    makes one ("press LR range test")."""

    label: str
    latest: Callable[[], Any]
    frame: Callable[[Any], pd.DataFrame]
    name: Callable[[Any], str]
    missing: str
    describe: Callable[[Any], str] = lambda value: ""


class Results:
    """The Export card's job results: per Result a line saying what it holds, and CSV/Parquet buttons, disabled
    until it has one. `refresh()` (on the owner's tick) redraws only what changed."""

    def __init__(self, results: Iterable[Result]):
        self.results = list(results)
        self._shown: list[Any] = [object()] * len(self.results)
        self.notes, self.buttons, rows = [], [], []
        for r in self.results:
            note = pn.pane.HTML("", sizing_mode="stretch_width", margin=(6, 10, 0, 10), styles={"font-size": "0.85em"})
            buttons = _buttons(lambda r=r: self._read(r), r.label.replace(" ", "_"), "", widths=(70, 85), margin=(4, 10))
            self.notes.append(note)
            self.buttons.append(buttons)
            rows.append(pn.Column(note, pn.Row(*buttons, margin=0), margin=0, sizing_mode="stretch_width"))
        self.panel = pn.Column(*rows, margin=0, sizing_mode="stretch_width")
        self.refresh()

    @staticmethod
    def _read(r: Result) -> tuple[str, pd.DataFrame]:
        value = r.latest()
        if value is None:
            raise ValueError(f"{r.label}: nothing to export yet ({r.missing} first)")
        return r.name(value), r.frame(value)

    def refresh(self) -> None:
        for i, r in enumerate(self.results):
            value = r.latest()
            if value is self._shown[i]:
                continue
            self._shown[i] = value
            label = html.escape(r.label)
            if value is None:
                self.notes[i].object = f"<b>{label}</b>: {html.escape(r.missing)} first"
            else:
                more = r.describe(value)
                self.notes[i].object = f"<b>{label}</b>" + (f": {html.escape(more)}" if more else "")
                name = r.name(value)
                for b, ext in zip(self.buttons[i], ("csv", "parquet")):
                    b.filename = f"{name}.{ext}"
            for b in self.buttons[i]:
                b.disabled = value is None


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


def card(history: Callable[[], pd.DataFrame] | None, figures: Callable[[], Iterable], name: str = "history",
         results: Iterable[Result] = (), refresh: Callable[[Callable[[], None]], Any] | None = None,
         what: str = "the job results", heading: str = "The newest result of each job:") -> pn.Card:
    """Every Export card: the run's history as CSV/Parquet (when `history` is given), the newest result of each
    job (`results`, under `heading`, called `what` in the title: kept current by `refresh(fn)`, which registers
    `fn` to be called whenever one may have changed, a Feed's `on_tick`), and the plots as SVG."""
    note = pn.pane.Markdown("Each plot's save button (its toolbar) writes a PNG, or an SVG with the box ticked.",
                            sizing_mode="stretch_width", styles={"font-size": "0.85em"})
    parts, title = [], []
    if history is not None:  # both on one row of the sidebar
        parts.append(pn.FlexBox(*downloads(history, name, widths=(120, 135), margin=(5, 5)), margin=(0, 5)))
        title.append("this run's history")
    results = list(results)
    if results:
        section = Results(results)
        if refresh is not None:
            refresh(section.refresh)
        parts += [pn.pane.Markdown(heading, margin=(8, 10, 0, 10)), section.panel]
        title.append(what)
    title.append("the plots")
    return lazy.card(*parts, svg_toggle(figures), note, title=f"Export: {', '.join(title)}",
                     sizing_mode="stretch_width")
