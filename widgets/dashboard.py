"""The training dashboard: choosers, live settings, and plots that stream while the run trains."""
from __future__ import annotations

import time
from functools import partial
from typing import Any

import numpy as np
import panel as pn
import param
from bokeh.models import ColumnDataSource
from panel.viewable import Viewer

from trainlab import Run, datasets, models, share
from trainlab.optimizers import optimizers
from trainlab.probes import DeadUnits, DecisionBoundary, GradNorm

from . import export, lazy, plots
from .base import plain
from .controls import Control
from .feed import Feed
from .labs import LABS
from .text import Status

_CUSTOM = "(your own)"
_REGISTRIES = {"data": datasets, "model": models}
_CLASS_COLORS = ["#b2182b", "#2166ac"]  # red for class 0, blue for class 1, as the boundary's palette
def _last(values) -> float:
    """The newest finite value of a column (NaN if none): sparse columns share rows with others."""
    v = np.asarray(values, dtype=float)
    finite = v[np.isfinite(v)]
    return float(finite[-1]) if finite.size else np.nan


def _image(snapshot: dict) -> dict:
    """A boundary snapshot as the columns of a Bokeh image glyph."""
    x, y = snapshot["x"], snapshot["y"]
    return {"z": [snapshot["z"]], "x0": [x[0]], "y0": [y[0]], "dw": [x[-1] - x[0]], "dh": [y[-1] - y[0]]}


class TrainingDashboard(Viewer):
    """Train a Run and watch it: data, model and optimizer choosers, live settings, streaming plots.

    In a notebook it displays inline (after `pn.extension(inline=True)`) and as an ipywidget
    (`pn.ipywidget(dashboard)`); `trainlab serve` builds one per browser session.
    """

    run = param.ClassSelector(class_=Run, doc="the run shown and controlled")
    period = param.Integer(100, bounds=(20, 5000), doc="milliseconds between plot updates (10 a second)")
    error = param.String("", doc="the last rejected change, shown until the next accepted one")
    notice = param.String("", doc="what the last button did (a rollback), shown until the next change")
    idle_timeout = param.Number(0, bounds=(0, None), doc="seconds without anyone touching the page after which a "
                                                          "training run is paused (a served lab's limit; 0: never)")

    def __init__(self, run: Run | None = None, *, live: bool = True, **params):
        """`live=False` builds the dashboard without starting its page updates (a served lab's dashboards built
        ahead, off the event loop, have no page yet): `go_live()` starts them."""
        super().__init__(run=run if run is not None else Run(), **params)
        self._live = live
        self._data = pn.widgets.Select(label="data")
        self._model = pn.widgets.Select(label="model")
        self._data.param.watch(partial(self._choose, "data"), "value")
        self._model.param.watch(partial(self._choose, "model"), "value")
        self._data_options = pn.Column(sizing_mode="stretch_width")
        self._model_options = pn.Column(sizing_mode="stretch_width")
        self.start_button = pn.widgets.Button(label="Start", color="success", width=90)
        self.pause_button = pn.widgets.Button(label="Pause", color="warning", width=90)
        self.reset_button = pn.widgets.Button(label="Reset", width=90)
        self.rollback_button = pn.widgets.Button(label="Roll back", width=90,
                                                 description="weights and optimizer state back to the newest restore "
                                                             "point (before the last settings change, or 100 steps back)")
        self._touched = time.monotonic()
        self.start_button.on_click(lambda e: (self.touch(), self.run.start()))
        self.pause_button.on_click(lambda e: self.run.pause())
        self.reset_button.on_click(lambda e: self.reset())
        self.rollback_button.on_click(lambda e: self.rollback())
        self.status = Status("", alert_type="secondary", sizing_mode="stretch_width")
        self._controls = pn.Column(sizing_mode="stretch_width")
        self._more_controls = pn.Column(sizing_mode="stretch_width")
        # switching optimizer carries over the per-weight state both use (adam -> adamw keeps its
        # moments) only when this is checked; the history's event says which happened
        self.keep_state = pn.widgets.Checkbox(label="keep optimizer state on switch", value=False)
        self.usual_lr_button = pn.widgets.Button(label="use the optimizer's usual lr", visible=False,
                                                 sizing_mode="stretch_width")
        self.usual_lr_button.on_click(lambda e: self.use_usual_lr())
        self._plots = pn.FlexBox(sizing_mode="stretch_width")
        sidebar = pn.Column(
            pn.pane.Markdown("### trainlab"), self._data, self._data_options, self._model, self._model_options,
            self._controls,
            lazy.card(self._more_controls, title="More: gradient noise, adaptive batch size",
                      sizing_mode="stretch_width"),
            pn.Row(self.start_button, self.pause_button, self.reset_button), pn.Row(self.rollback_button), width=330,
        )
        # the Training tab's plots in a grid, its Export card below them (each lab's ends its own controls)
        training = pn.Column(self._plots, pn.Row(export.card(lambda: self.run.history.frame(),
                                                             lambda: export.figures_in(self._plots.objects)), width=330),
                             sizing_mode="stretch_width")
        # dynamic: the browser holds only the shown tab's views. Every built tab's views made each update cost
        # more, on every tab (measured with all seven built: Pause on Training 0.58 s, 0.31 s dynamic; on
        # Spectrum with its probes 0.25 s); a tab shown again is rendered anew from its sources
        self.tabs = pn.Tabs(("Training", training), *((lab.title, pn.Column()) for lab in LABS), dynamic=True,
                            sizing_mode="stretch_width")
        self.tabs.param.watch(self._open_tab, "active")
        self.labs: dict[str, Any] = {}  # tab title -> its panel, once opened
        self._layout = pn.Row(sidebar, pn.Column(self.status, self.tabs, sizing_mode="stretch_width"),
                              sizing_mode="stretch_width")
        self.feed: Feed | None = None
        self._attach(self.run)

    # ---- building ---------------------------------------------------------------------------
    def _attach(self, run: Run) -> None:
        """Build the controls, plots and feed of `run` (on start and when data or model change)."""
        if self.feed is not None:
            self.feed.stop()
        for i, lab in enumerate(LABS):
            if lab.needs_run and lab.title in self.labs:  # a lab of the old run: rebuilt for the new one when shown
                self.labs.pop(lab.title).close()
                self.tabs[i + 1] = (lab.title, pn.Column())
        self.run = run
        self._choosing = True
        for chooser, spec, registry in ((self._data, run.data.spec, datasets), (self._model, run.model_spec, models)):
            names = registry.names() if spec else [_CUSTOM, *registry.names()]
            chooser.options, chooser.value = names, spec[0] if spec else _CUSTOM
        self._choosing = False
        self._build_spec_controls()
        self.feed = Feed(run.history, period=self.period)
        self.feed.on_tick(self._refresh)
        self._build_controls()
        with self.feed.group("Training"):
            self._plots.objects = self._build_plots(run)
        # what the status line warns about, followed whatever tab is shown
        dead = DeadUnits().columns(run).scalars if any(isinstance(p, DeadUnits) for p in run.probes) else {}
        self._health_source = self.feed.source({"grad_norm": "grad_norm", **dead}, sparse=True)
        self.feed.tick()  # the run's past goes in before the first render: a notebook view would miss it
        if self._live:
            self.feed.start()
        self._open_tab()

    def open_lab(self, title: str):
        """The lab under this tab, built on first use with the dashboard's run and feed."""
        if title not in self.labs:
            i, lab = next((i, lab) for i, lab in enumerate(LABS) if lab.title == title)
            self.labs[title] = lab.build(self.run, self.feed)
            self.tabs[i + 1] = (title, self.labs[title])
            if "opened" in self.labs[title].param:  # the Runs tab reopened or forked a stored run: show it
                self.labs[title].param.watch(lambda e: e.new is not None and self.open_run(e.new), "opened")
        return self.labs[title]

    def _open_tab(self, *events) -> None:
        title = "Training" if self.tabs.active == 0 else LABS[self.tabs.active - 1].title
        if self.tabs.active > 0:
            self.open_lab(title)
        self.feed.show(title)  # only the tab in view gets plot data: hidden plots cost the browser nothing

    def _specs(self) -> dict[str, tuple[str, dict] | None]:
        return {"data": self.run.data.spec, "model": self.run.model_spec}

    def _build_spec_controls(self) -> None:
        """Controls for the options the data set and model entries declare (noise, width, norm, ...)."""
        self.spec_controls: dict[str, dict[str, Control]] = {}
        for kind, box in (("data", self._data_options), ("model", self._model_options)):
            spec = self._specs()[kind]
            if spec is None:  # the user's own data or model: nothing to rebuild it from
                box.objects = []
                continue
            entry = _REGISTRIES[kind][spec[0]]
            options = entry.options(**spec[1])
            self.spec_controls[kind] = {n: Control(options, n, partial(self._set_option, kind)) for n in entry.params}
            box.objects = [c.widget for c in self.spec_controls[kind].values()]

    def _build_controls(self) -> None:
        run = self.run
        self.controls: dict[str, Control] = {}
        for owner, names in ((run, ["optimizer", "lr", "batch_size"]),
                             (run.opt_params, [n for n in run.opt_params.param if n != "name"])):
            for n in names:
                self.controls[n] = Control(owner, n, self._apply)
        self._opt_shown = run.optimizer
        self._controls.objects = [self.controls["optimizer"].widget, self.keep_state, self.usual_lr_button,
                                  *(c.widget for n, c in self.controls.items() if n != "optimizer")]
        more = [n for n in run.SETTABLE if n not in self.controls]
        for n in more:
            self.controls[n] = Control(run, n, self._apply)
        self._more_controls.objects = [self.controls[n].widget for n in more]

    def _build_plots(self, run: Run) -> list:
        feed, figs = self.feed, []
        train, val = feed.source(["train_loss", "train_acc", "lr"]), feed.source(["val_loss", "val_acc"], sparse=True)
        events = feed.marks("event")  # switches, rollbacks, schedule changes: a dashed line where they happened
        figs.append(plots.train_val("Loss", "loss", train, val, "train_loss", log=True))
        if run.data.task == "classification":
            figs.append(plots.train_val("Accuracy", "accuracy", train, val, "train_acc", legend_at="bottom_right"))
        figs.append(plots.single("Learning rate", "learning rate", train, "lr", log=True))
        for fig in figs:
            fig.vspan(x="step", source=events, line_color="#888888", line_dash="dashed", line_width=1)
        columns = GradNorm().columns(run).scalars
        grads = feed.source(columns, sparse=True)
        figs.append(plots.per_layer("Gradient norm per layer", "gradient norm", grads, list(columns.values())))
        probe = next((p for p in run.probes if isinstance(p, DecisionBoundary)), None)
        if probe is not None:
            grid = feed.snapshot(probe.columns(run).snapshots[0], _image, initial=probe.blank(run))
            X, y = run.data.X.cpu().numpy(), run.data.y.cpu().numpy()
            points = ColumnDataSource({"x1": X[:, 0], "x2": X[:, 1], "color": np.array(_CLASS_COLORS)[y % 2]})
            figs.append(plots.boundary(grid, points))
        for fig in figs:
            plots.tidy(fig)
        return [pn.pane.Bokeh(f) for f in figs]

    # ---- events -----------------------------------------------------------------------------
    def _apply(self, name: str, value: Any) -> None:
        """A control moved: hand the value to run.set; a rejection is shown and the run is unchanged."""
        extra = {"state": "keep" if self.keep_state.value else "reset"} if name == "optimizer" else {}
        try:
            self.run.set(**{name: value}, **extra)
            self.error = self.notice = ""
            self.feed.soon()
        except ValueError as e:
            self.error = str(e)
        self._refresh()

    def _choose(self, kind: str, event) -> None:
        """Data set or model chosen: its options carry over where the new entry declares them."""
        if self._choosing or event.new == _CUSTOM:
            return
        old = self._specs()[kind]
        declared = _REGISTRIES[kind][event.new].params
        options = {k: v for k, v in (old[1] if old else {}).items() if k in declared}
        if not self._replace(**{kind: (event.new, options)}):
            self._choosing = True
            event.obj.value = event.old
            self._choosing = False

    def _set_option(self, kind: str, name: str, value: Any) -> None:
        """A data or model option moved: the same run, rebuilt with it."""
        spec = self._specs()[kind]
        if not self._replace(**{kind: (spec[0], {**spec[1], name: value})}):
            self.spec_controls[kind][name].show(spec[1][name])

    def _replace(self, data=None, model=None) -> bool:
        """A fresh run with the old one's settings (training on if it was); False, and the error shown, if refused."""
        old = self.run
        data = data or old.data.spec or old.data
        model = model or old.model_spec or old.model
        try:
            new = Run(model=model, data=data, seed=old.seed, device=old.device, **old.settings())
        except ValueError as e:
            self.error = str(e)
            self._refresh()
            return False
        running = old.status == "running"
        old.stop()
        self.error = ""
        self._attach(new)
        if running:
            new.start()
        return True

    def open_run(self, run: Run) -> None:
        """Show and control `run` instead (a run reopened from the store); the old one stops."""
        old = self.run
        old.stop()
        parent = run.parent
        if parent and parent["run"] is None:  # a fork of a live run that no store recorded
            what = f"the fork at step {parent['step']} of an unsaved run"
        elif parent:
            what = f"the fork of {parent['run']} at step {parent['step']}"
        else:
            what = f"the reopened run at step {run.steps}"
        self.error, self.notice = "", f"Showing {what}; press Start to go on training it."
        self._attach(run)
        old.close()

    def reset(self) -> None:
        self.run.reset()
        self._refresh()

    def _offer_usual_lr(self, old: str) -> None:
        """After a switch, say which lr the new optimizer usually takes when the run's is far from it."""
        run, usual = self.run, optimizers[self.run.optimizer].meta.usual_lr
        if not 1 / 3 <= run.lr / usual <= 3:
            self.notice = (f"Switched {old} -> {run.optimizer}: it usually trains with lr {usual:g}; the run kept "
                           f"lr {run.lr:g}, which may suit it badly (press 'use ... usual lr').")

    def use_usual_lr(self) -> None:
        self._apply("lr", optimizers[self.run.optimizer].meta.usual_lr)

    def _health(self, run: Run) -> str:
        """What the newest measurements say is wrong that the status would not: lr 0, dead units, no gradient."""
        if run.steps and run.current_lr == 0:
            name = run.schedule[0]
            return (f"lr is 0: the schedule {name} has reached its end (it started at step {run.schedule_start}); "
                    f"choose another schedule or raise min_fraction")
        data = self._health_source.data
        if not len(data["step"]):
            return ""
        dead = {k: last for k, v in data.items() if k not in ("step", "grad_norm") and np.isfinite(last := _last(v))}
        worst = max(dead, key=dead.get) if dead else None
        if worst is not None and dead[worst] >= 0.9:
            return (f"{dead[worst]:.0%} of {worst}'s ReLUs are dead (silent for a whole batch): they get no gradient "
                    f"and stop learning; lower the lr, roll back, or reset")
        g = _last(data["grad_norm"])
        if np.isfinite(g) and g < 1e-10:
            return f"the gradient has vanished (norm {g:.1e}): training has stopped; roll back or reset"
        return ""

    def rollback(self) -> None:
        """The run's weights and optimizer state back to its newest restore point (say, before a blow-up)."""
        self.notice = f"Weights and optimizer state rolled back to step {self.run.rollback()}."
        self._refresh()

    def go_live(self) -> None:
        """A page shows this dashboard from now on: its updates start (on the page's event loop) and its idle
        clock with them."""
        self._live = True
        self.touch()
        self.feed.start()

    def touch(self) -> None:
        """Someone used the page: the idle clock starts again."""
        self._touched = time.monotonic()

    def _pause_if_idle(self) -> None:
        idle = time.monotonic() - self._touched
        if self.idle_timeout and self.run.status == "running" and idle > self.idle_timeout:
            self.run.pause()
            self.notice = (f"Paused: nobody has used this page for {idle / 60:.0f} minutes (this server pauses idle "
                           f"runs to keep the machine for the others). Press Start to go on.")

    def _sharing(self) -> str:
        """On a shared server, how many runs take turns at training, when some are waiting."""
        shared = share.current()
        if shared is None or self.run.status != "running":
            return ""
        n = shared.contending()
        if n <= shared.concurrent:
            return ""
        slots = "one run steps" if shared.concurrent == 1 else f"{shared.concurrent} runs step"
        return f" · {n} runs take turns: on this server {slots} at a time"

    def _refresh(self) -> None:
        """On the UI's tick: show the run's status and move controls to its current settings."""
        self._pause_if_idle()
        run = self.run
        if run.optimizer != self._opt_shown:  # switched: this optimizer has other knobs
            self._offer_usual_lr(self._opt_shown)
            self._build_controls()
        settings = run.settings()
        for name, control in self.controls.items():
            control.show(settings[name])
        usual = optimizers[run.optimizer].meta.usual_lr
        self.usual_lr_button.visible = not 1 / 3 <= run.lr / usual <= 3
        self.usual_lr_button.label = f"use {run.optimizer}'s usual lr {usual:g}"
        # the lr the optimizer steps with now (a schedule moves it; the slider shows the base lr)
        text = f"**{run.status}** · step {run.steps} · lr {run.current_lr:.4g}{self._sharing()}"
        kind = {"running": "success", "paused": "warning", "stopped": "secondary", "idle": "secondary"}[run.status]
        if run.message:
            text += f" · {plain(run.message)}"
            kind = "danger" if "diverged" in run.message else kind
        warning = self._health(run)
        if warning:
            text += f"\n\n⚠ {plain(warning)}"
            kind = "danger" if kind != "danger" and run.status == "running" else kind
        if self.notice:
            text += f"\n\n{plain(self.notice)}"
        if self.error:  # a rejected value is the user's own text: escaped, never markup
            text += f"\n\nRejected: {plain(self.error)}"
            kind = "danger"
        if self.status.object != text:
            self.status.object, self.status.alert_type = text, kind

    def tick(self) -> None:
        """One UI update (the periodic callback calls this about 10 times a second)."""
        self.feed.tick()

    def close(self) -> None:
        """Stop the plot updates and the training thread (a session ended)."""
        if self.feed is not None:
            self.feed.stop()
        for lab in self.labs.values():
            if hasattr(lab, "close"):
                lab.close()
        self.run.stop()

    def __panel__(self):
        return self._layout
