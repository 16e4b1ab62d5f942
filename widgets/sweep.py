"""The sweep lab: a brushable parallel-coordinates plot, the metric against each setting, the best
configurations, and a run's curves on click, refreshed as results arrive."""
from __future__ import annotations

import time
from typing import Any

import numpy as np
import pandas as pd
import panel as pn
import param
from bokeh.models import BoxSelectTool, ColumnDataSource, FixedTicker, LinearColorMapper
from bokeh.palettes import Category10_10, Viridis256

from trainlab.experiment import parallel_axes

from . import plots
from .base import plain

# what a result row says about the run rather than how it was configured
RESULT_COLUMNS = {"status", "error", "steps", "seconds", "time", "train_loss", "train_acc", "val_loss", "val_acc",
                  "best_val_loss", "best_val_acc", "best_step", "mean_train_loss", "full_train_loss", "history", "curve",
                  "worker", "pid", "attempts", "name", "index", "id", "trial"}
_POLL_MS = 500  # results reach the page within a second of arriving
# the small plots are redrawn at most this often while results arrive (figures replaced every tick were never
# laid out by the browser: seen as empty, squashed plots in the served tab; now made anew only when their axes
# change)
_GRID_EVERY = 3.0


def _settings_of(frame: pd.DataFrame, metric: str) -> list[str]:
    """The configuration columns that vary across the sweep (a constant setting is no axis)."""
    out = []
    for c in frame.columns:
        if c in RESULT_COLUMNS or c == metric:
            continue
        if frame[c].map(repr).nunique() > 1:
            out.append(c)
    return out


class SweepPanel(pn.viewable.Viewer):
    """A sweep's results as they arrive (a `trainlab.sweep` Sweep, anything with `.results()`, or a DataFrame).

    Drag a box along an axis of the parallel-coordinates plot (box select; hold shift for more) to keep the
    configurations inside it: the other lines dim and the table lists only the kept ones. Lines are coloured by
    the metric (darker is lower). lr-like axes are logarithmic. Click a row of the table to draw that run's
    training curve, when the sweep kept its history.
    """

    metric = param.String("val_loss", doc="the result column the colours, the grid and the table rank by")
    top = param.Integer(10, bounds=(1, None), doc="rows in the best-configurations table")
    poll = param.Boolean(True, doc="refresh on a periodic callback of its own once shown (off: its owner calls "
                                   "refresh(), as the dashboard's Sweeps tab does on its tick)")

    def __init__(self, sweep: Any, **params):
        super().__init__(**params)
        self.sweep = sweep
        self.frame = pd.DataFrame()
        self.settings: list[str] = []
        self.brushed: set[int] | None = None  # configuration indices inside every brush (None: no brush)
        self.lines = ColumnDataSource({"xs": [], "ys": [], "metric": [], "alpha": [], "row": []})
        self.points = ColumnDataSource({"x": [], "y": [], "row": []})
        self.ticks = ColumnDataSource({"x": [], "y": [], "text": []})
        self.curve = ColumnDataSource({"step": [], "train_loss": [], "val_loss": []})
        self.mapper = LinearColorMapper(palette=Viridis256, low=0, high=1, nan_color="#bbbbbb")
        self.parallel = self._parallel_figure()
        # a Row: figures made anew inside a FlexBox after the page loaded rendered squashed to nothing (seen in
        # the served Sweeps tab); a sweep has a few settings, so a row of 300-pixel plots fits
        self.grid = pn.Row(sizing_mode="stretch_width")
        self.table = pn.widgets.Tabulator(pd.DataFrame(), disabled=True, selectable=1, height=260,
                                          sizing_mode="stretch_width", show_index=False)
        self.table.param.watch(self._pick, "selection")
        self.status = pn.pane.Markdown("", sizing_mode="stretch_width")
        self.cancel_button = pn.widgets.Button(label="Cancel sweep", width=120, visible=hasattr(sweep, "cancel"))
        self.cancel_button.on_click(lambda e: self.sweep.cancel())
        self.points.selected.on_change("indices", self._brush)
        curve = plots.figure("Picked run", "step", "loss", log_y=True, hover=True)
        curve.line("step", "train_loss", source=self.curve, color=plots.TRAIN, legend_label="train")
        curve.line("step", "val_loss", source=self.curve, color=plots.VAL, legend_label="validation", line_width=2)
        plots.legend(curve, "top_right")
        curve.legend.visible = False  # a legend of nothing drawn yet: the note says what fills the plot
        self.curve_note = plots.placeholder(curve, "pick a run in the table below to draw its training curve")
        self.curve_fig = curve
        self._shown: tuple | None = None
        self._grid_at, self._grid_stale = -float("inf"), False
        self._grid_key, self._grid_sources = None, {}
        self._callback = None
        self.refresh()

    @classmethod
    def preset(cls, name: str, base: dict | None = None, **options) -> SweepPanel:
        """Start a built-in study (`trainlab.sweeps.presets`: lr_optimizer, batch_lr, width_lr,
        sparsity_criterion) on the local cluster and return a panel drawing it as it runs."""
        import trainlab
        from trainlab.sweeps import presets

        sweep_options = {k: options.pop(k) for k in ("workers", "scheduler", "store", "seeds") if k in options}
        study = presets.build(name, base, **options)
        return cls(trainlab.sweep(**study, **sweep_options), metric="val_acc" if name == "sparsity_criterion" else "val_loss")

    # ---- data ------------------------------------------------------------------------------
    def results(self) -> pd.DataFrame:
        return self.sweep.copy() if isinstance(self.sweep, pd.DataFrame) else self.sweep.results()

    def refresh(self) -> None:
        """Redraw if the results changed (rows arrived or statuses moved)."""
        frame = self.results().reset_index(drop=True)
        state = (len(frame), tuple(frame["status"]) if "status" in frame else ())
        if state != self._shown:
            self._shown = state
            self.frame = frame
            self._draw()
        ended = getattr(self.sweep, "done", True)  # a frame, or a sweep with nothing more to come
        if self._grid_stale and (ended or time.monotonic() - self._grid_at >= _GRID_EVERY):
            self._grid_stale, self._grid_at = False, time.monotonic()
            self._draw_grid(self._ok())
        self._say()

    def _ok(self) -> pd.DataFrame:
        f = self.frame
        if "status" in f:
            f = f[f["status"] == "finished"] if self.metric in f else f.iloc[:0]
        return f[f[self.metric].notna()] if self.metric in f else f.iloc[:0]

    def _draw(self) -> None:
        self.settings = _settings_of(self.frame, self.metric)
        ok = self._ok()
        columns = [*self.settings, self.metric]
        if ok.empty or not self.settings:
            for s in (self.lines, self.points, self.ticks):
                s.data = {k: [] for k in s.data}
            self._grid_stale = True
            self._draw_table(ok)
            return
        axes = parallel_axes(ok, columns, self._base_config())
        xs = list(range(len(columns)))
        rows = ok.index.to_list()
        ys = np.column_stack([axes[c]["values"] for c in columns])
        metric = ok[self.metric].to_numpy(float)
        self.mapper.low, self.mapper.high = float(np.nanmin(metric)), float(np.nanmax(metric) or 1)
        keep = self.brushed
        self.lines.data = {"xs": [xs] * len(rows), "ys": [list(y) for y in ys], "metric": list(metric),
                           "alpha": [0.9 if keep is None or r in keep else 0.08 for r in rows], "row": rows}
        self.points.data = {"x": [x for _ in rows for x in xs], "y": list(ys.ravel()),
                            "row": [r for r in rows for _ in xs]}
        self.ticks.data = {"x": [i for i, c in enumerate(columns) for _ in axes[c]["ticks"]],
                           "y": [t for c in columns for t in axes[c]["ticks"]],
                           "text": [lab for c in columns for lab in axes[c]["labels"]]}
        self.parallel.xaxis.ticker = FixedTicker(ticks=xs)
        self.parallel.xaxis.major_label_overrides = {i: (f"{c} (log)" if axes[c]["kind"] == "log" else c)
                                                     for i, c in enumerate(columns)}
        self._grid_stale = True
        self._draw_table(ok)

    def _base_config(self) -> dict[str, Any]:
        """Enough of a configuration to find the declared parameter behind each axis (model name, optimizer)."""
        f = self.frame
        cfg = {}
        for kind in ("model", "data"):
            if kind in f and f[kind].notna().any():
                cfg[kind] = (str(f[kind].dropna().iloc[0]), {})
        if "optimizer" in f and f["optimizer"].notna().any():
            cfg["optimizer"] = str(f["optimizer"].dropna().iloc[0])
        return cfg

    def _draw_grid(self, ok: pd.DataFrame) -> None:
        """The metric against each setting, one small plot per axis (log where the setting is lr-like). The plots
        are made again only when their axes or groups change; new results only change their sources (a page
        is sent the new points, not a new figure's models)."""
        if ok.empty:
            self.grid.objects, self._grid_key = [], None
            return
        axes = parallel_axes(ok, self.settings, self._base_config())
        # the first setting of names (an optimizer, a pruning criterion) colours the points and joins them,
        # averaged over the rest, into one curve per name: accuracy against sparsity per criterion
        by = next((c for c in self.settings if axes[c]["kind"] == "category"), None)
        groups = {c: [None] if by is None or by == c else list(dict.fromkeys(ok[by].astype(str))) for c in self.settings}
        key = (self.metric, by, tuple((c, axes[c]["kind"], tuple(groups[c]),
                                       tuple(axes[c]["ticks"]) if axes[c]["kind"] == "category" else ())
                                      for c in self.settings))
        data = {c: [self._grid_points(ok, axes, c, by, g) for g in groups[c]] for c in self.settings}
        if key == self._grid_key:
            for c in self.settings:
                for (points, mean), (point_source, mean_source) in zip(data[c], self._grid_sources[c]):
                    point_source.data = points
                    if mean_source is not None:
                        mean_source.data = mean
            return
        figs, self._grid_sources = [], {}
        for c in self.settings:
            kind = axes[c]["kind"]
            fig = plots.figure(f"{self.metric} vs {c}", c, self.metric, log_x=kind == "log", width=300, height=220)
            self._grid_sources[c] = []
            for i, (g, (points, mean)) in enumerate(zip(groups[c], data[c])):
                color = plots.TRAIN if g is None else Category10_10[i % 10]
                point_source = ColumnDataSource(points)
                fig.scatter("x", "y", source=point_source, size=6, color=color, alpha=0.7,
                            **({} if g is None else {"legend_label": g}))
                mean_source = None
                if mean is not None:
                    mean_source = ColumnDataSource(mean)
                    fig.line("x", "y", source=mean_source, color=color, line_width=1.5)
                self._grid_sources[c].append((point_source, mean_source))
            if by is not None and by != c:
                plots.legend(fig, "top_right")
            if kind == "category":
                fig.xaxis.ticker = FixedTicker(ticks=axes[c]["ticks"])
                fig.xaxis.major_label_overrides = dict(zip(axes[c]["ticks"], axes[c]["labels"]))
            figs.append(pn.pane.Bokeh(fig))
        self.grid.objects, self._grid_key = figs, key

    def _grid_points(self, ok: pd.DataFrame, axes: dict, c: str, by: str | None, g: str | None):
        """Setting `c`'s plot, group `g`: its points, and (a group of names over numbers) their mean per value."""
        kind = axes[c]["kind"]
        x = ok[c].to_numpy(float) if kind != "category" else np.asarray(axes[c]["values"])
        rows = np.ones(len(ok), bool) if g is None else (ok[by].astype(str) == g).to_numpy()
        y = ok[self.metric].to_numpy(float)[rows]
        points = {"x": x[rows], "y": y}
        if g is None or kind == "category":
            return points, None
        mean = pd.DataFrame(points).groupby("x")["y"].mean()
        return points, {"x": mean.index.to_numpy(), "y": mean.to_numpy()}

    @property
    def _higher(self) -> bool:
        """Whether a higher metric is better (accuracies)."""
        return "acc" in self.metric

    def _draw_table(self, ok: pd.DataFrame) -> None:
        shown = ok if self.brushed is None else ok[ok.index.isin(self.brushed)]
        cols = [c for c in dict.fromkeys([*self.settings, self.metric, "val_acc", "best_step", "seconds"]) if c in shown]
        best = (shown.sort_values(self.metric, ascending=not self._higher).head(self.top)[cols].round(5) if cols
                else shown.iloc[:0])
        self.table.value = best.reset_index().rename(columns={"index": "row"}) if not best.empty else best

    def _say(self) -> None:
        f = self.frame
        n = len(f)
        status = f["status"].value_counts().to_dict() if "status" in f else {}
        progress = getattr(self.sweep, "progress", None)
        total = getattr(progress, "total", None) if progress is not None else None
        text = f"{n}{f'/{total}' if total else ''} results"
        if status:
            text += " · " + ", ".join(f"{v} {k}" for k, v in sorted(status.items()))
        ok = self._ok()
        if not ok.empty:
            best = ok.loc[ok[self.metric].idxmax() if self._higher else ok[self.metric].idxmin()]
            text += f" · best {self.metric} {best[self.metric]:.4g} (" + ", ".join(
                f"{c}={best[c]}" for c in self.settings) + ")"
        self.status.object = plain(text)

    # ---- interaction -----------------------------------------------------------------------
    def _brush(self, attr, old, new) -> None:
        """Selected axis points → per axis, the configurations inside its brush; kept: inside every brush."""
        if not new:
            self.brushed = None
        else:
            rows, xs = np.asarray(self.points.data["row"]), np.asarray(self.points.data["x"])
            ys = np.asarray(self.points.data["y"], float)
            keep = None
            for axis in np.unique(xs[new]):
                sel = [i for i in new if xs[i] == axis]
                lo, hi = ys[sel].min(), ys[sel].max()
                inside = {int(r) for r, x, y in zip(rows, xs, ys) if x == axis and lo <= y <= hi}
                keep = inside if keep is None else keep & inside
            self.brushed = keep
        self.lines.data = {**self.lines.data, "alpha": [0.9 if self.brushed is None or r in self.brushed else 0.08
                                                        for r in self.lines.data["row"]]}
        self._draw_table(self._ok())

    def _pick(self, event) -> None:
        if not event.new or self.table.value.empty:
            return
        row = int(self.table.value.iloc[event.new[0]]["row"])
        doc = pn.state.curdoc
        if doc is not None and doc.session_context is not None:
            # a widget's event runs without the document's lock: a raw Bokeh source changes on the next tick,
            # under it (changed here, the server raised and the curve never showed)
            doc.add_next_tick_callback(lambda: self.show_run(row))
        else:
            self.show_run(row)

    def show_run(self, row: int) -> None:
        """Draw result `row`'s training curve (from its kept history, or the sweep's `curves(index)`)."""
        history = None
        if "history" in self.frame and isinstance(self.frame.loc[row, "history"], pd.DataFrame):
            history = self.frame.loc[row, "history"]
        elif hasattr(self.sweep, "curves"):  # a running Sweep: live rows while it trains, its thinned curve once ended
            history = self.sweep.curves(int(self.frame.loc[row, "index"]) if "index" in self.frame else row)
        drawn = history is not None and not history.empty
        self.curve_note.visible, self.curve_fig.legend.visible = not drawn, drawn
        if not drawn:
            self.curve.data = {"step": [], "train_loss": [], "val_loss": []}
            self.curve_note.text = f"run {row} has no training curve to draw"
            return
        self.curve.data = {k: history[k].to_numpy(float) if k in history else np.full(len(history), np.nan)
                           for k in ("step", "train_loss", "val_loss")}
        self.curve_fig.title.text = f"Run {row}: " + ", ".join(f"{c}={self.frame.loc[row, c]}" for c in self.settings)

    # ---- figures and layout ----------------------------------------------------------------
    def _parallel_figure(self):
        fig = plots.figure("Parallel coordinates (box-select along an axis to brush)", "", "",
                           tools="reset,save", width=760, height=320, x_range=(-0.3, 6.3), y_range=(-0.08, 1.08))
        fig.multi_line("xs", "ys", source=self.lines, line_width=1.6, line_alpha="alpha",
                       line_color={"field": "metric", "transform": self.mapper})
        points = fig.scatter("x", "y", source=self.points, size=5, color="#444444", alpha=0.5,
                             selection_color="#d62728", nonselection_alpha=0.3)
        fig.add_tools(BoxSelectTool(renderers=[points], dimensions="height"))
        fig.text("x", "y", "text", source=self.ticks, text_font_size="8pt", x_offset=4, text_baseline="middle",
                 color="#555555")
        fig.yaxis.visible = False
        fig.ygrid.visible = False
        return fig

    def tick(self) -> None:
        """One refresh, with the parallel plot's x range fitted to the axes."""
        self._periodic()

    def _periodic(self) -> None:
        self.refresh()
        columns = len(self.settings) + 1
        self.parallel.x_range.start, self.parallel.x_range.end = -0.3, max(columns - 1, 1) + 0.6

    def start(self) -> None:
        """Poll the sweep's results (in a served page or a notebook); stops with the session."""
        if self._callback is None:
            self._callback = pn.state.add_periodic_callback(self._periodic, period=_POLL_MS)

    def stop(self) -> None:
        if self._callback is not None:
            self._callback.stop()
            self._callback = None

    def __panel__(self):
        if self.poll:
            self.start()
        return pn.Column(pn.Row(self.status, self.cancel_button, sizing_mode="stretch_width"),
                         pn.Row(pn.pane.Bokeh(self.parallel), pn.pane.Bokeh(self.curve_fig)),
                         pn.pane.Markdown("#### Best configurations (click a row for its curves)"), self.table,
                         pn.pane.Markdown(f"#### {self.metric} against each setting"), self.grid,
                         sizing_mode="stretch_width")
