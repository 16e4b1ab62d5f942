"""The initialization and parametrization lab: signal propagation against theory, seed-to-seed fluctuations,
μP's coordinate check, μ-Transfer and super consistency, each on the run's own model family, and depth transfer
on the residual MLP."""
from __future__ import annotations

import numpy as np
import panel as pn
import param
from bokeh.palettes import Category10_10

from trainlab import Run, live
from trainlab.probes import SignalPropagation

from . import plots
from .base import LabPanel
from .feed import Feed

_DASH = {"sp": "dashed", "mup": "solid", "ntk": "dotted", "depth_mup": "dotdash"}


def _signal(snap: dict) -> dict:
    return {k: np.asarray(snap[k], object if k == "layer" else float) for k in ("layer", "depth", "std", "theory_std",
                                                                              "grad_norm")}


def _by_init(snap: dict) -> dict:
    """The fluctuation study as one multi-line source: NTK and pre-activation lines per initializer."""
    out = {"xs": [], "ys": [], "label": [], "color": [], "dash": []}
    for i, init in enumerate(dict.fromkeys(snap["init"])):
        rows = np.asarray(snap["init"]) == init
        for what, dash in (("ntk_rel_var", "solid"), ("preact_rel_var", "dashed")):
            out["xs"].append(np.asarray(snap["depth"], float)[rows])
            out["ys"].append(np.asarray(snap[what], float)[rows])
            out["label"].append(f"{init}: {'NTK' if what == 'ntk_rel_var' else 'pre-activations'}")
            out["color"].append(Category10_10[i % 10])
            out["dash"].append(dash)
    return out


def _coords(snap: dict) -> dict:
    """Each layer's mean |output| against width, a line per (parametrization, layer)."""
    out = {"xs": [], "ys": [], "label": [], "color": [], "dash": []}
    for par, d in snap["parametrizations"].items():
        modules = list(dict.fromkeys(d["module"]))
        for i, m in enumerate(modules):
            rows = np.asarray(d["module"]) == m
            out["xs"].append(np.asarray(d["width"], float)[rows])
            out["ys"].append(np.asarray(d["l1"], float)[rows])
            out["label"].append(f"{par}: {m}")
            out["color"].append(Category10_10[i % 10])
            out["dash"].append(_DASH.get(par, "solid"))
    return out


# A run whose mean loss is this many times that of each line's least-trained run (its smallest lr) has blown up
# without turning inf; drawn, it squashed the minima into the bottom of the log axis (10⁴ at 16 blocks, branches × 1)
BLOWN_UP = 10.0


def _lr_curves(snap: dict, key: str, group: str, by: str) -> dict:
    """An lr sweep's loss against lr, a line per `by` (width or depth), for the rows whose `key` is `group`; a
    diverged or blown-up run leaves a gap."""
    rows = snap["rows"]
    sel_group = np.asarray(rows[key]) == group
    values = sorted({int(v) for v in np.asarray(rows[by])[sel_group]})
    out = {"xs": [], "ys": [], "label": [], "color": []}
    for i, v in enumerate(values):
        sel = sel_group & (np.asarray(rows[by]) == v)
        order = np.argsort(np.asarray(rows["lr"], float)[sel])
        out["xs"].append(np.asarray(rows["lr"], float)[sel][order])
        out["ys"].append(np.asarray(rows["mean_train_loss"], float)[sel][order])
        out["label"].append(f"{by} {v}")
        out["color"].append(Category10_10[i % 10])
    start = max((ys[0] for ys in out["ys"] if np.isfinite(ys[0])), default=np.inf)
    out["ys"] = [np.where(np.isfinite(ys) & (ys <= BLOWN_UP * start), ys, np.nan) for ys in out["ys"]]
    return out


def _best_marks(snap: dict, key: str, group: str, by: str) -> dict:
    """The best lr of each line of `_lr_curves` (the live job's `best`), in that line's colour."""
    best = snap["best"]
    values = sorted({int(v) for v, g in zip(snap["rows"][by], snap["rows"][key]) if g == group})
    out = {"lr": [], "loss": [], "color": []}
    for g, v, lr, loss in zip(best[key], best[by], best["best_lr"], best["loss"]):
        if g == group and np.isfinite(loss):
            out["lr"].append(float(lr))
            out["loss"].append(float(loss))
            out["color"].append(Category10_10[values.index(int(v)) % 10])
    return out


def _follow(draw, key: str, group: str, by: str, empty: dict):
    return lambda snap: draw(snap, key, group, by) if snap else empty


def _sharpness(snap: dict, parametrization: str) -> dict:
    """Sharpness against step, a line per width, for one parametrization, and the stability threshold."""
    c = snap["curves"]
    par, width = np.asarray(c["parametrization"]), np.asarray(c["width"])
    out = {"xs": [], "ys": [], "label": [], "color": [], "dash": []}
    widths = sorted({int(w) for w, p in zip(width, par) if p == parametrization})
    for i, w in enumerate(widths):
        sel = (par == parametrization) & (width == w)
        out["xs"].append(np.asarray(c["step"], float)[sel])
        out["ys"].append(np.asarray(c["sharpness"], float)[sel])
        out["label"].append(f"width {w}")
        out["color"].append(Category10_10[i % 10])
        out["dash"].append("solid")
    if widths:
        sel = par == parametrization
        out["xs"].append(np.asarray(c["step"], float)[sel])
        out["ys"].append(np.asarray(c["threshold"], float)[sel])
        out["label"].append("stability threshold")
        out["color"].append("black")
        out["dash"].append("dashed")
    return out


def _empty_sharpness(parametrization: str):
    empty = {"xs": [], "ys": [], "label": [], "color": [], "dash": []}
    return lambda snap: _sharpness(snap, parametrization) if snap else empty


class InitPanel(LabPanel):
    """How initialization and parametrization shape the signal and which lr works at which width.

    - "Signal propagation" (on by default) measures, every k steps on a fixed batch, the std of each layer's
      pre-activations through depth, beside the infinite-width theory for the weights' C_W, C_b and the
      activation (dashed: flat at criticality, growing or fading off it) and the same at initialization
      (dotted), and each layer's gradient norm.
    - "Fluctuations vs depth": how much the empirical NTK and the pre-activations vary from seed to seed at
      init, Gaussian against orthogonal weights (Gaussian's grows with depth, orthogonal's stays flat).
    - "Coordinate check": the model at widths 64 … 2048, a few steps each under SP and μP: each layer's mean
      |output| against width (μP's lines are flat; SP's later layers grow with width).
    - "μ-Transfer": one short run per width and lr under SP and μP, on worker processes over the machine's cores
      (`trainlab.pool`; Cancel drops the queued runs): the loss against lr per width, as the runs finish. Under
      μP the best lr stays where it is as the model widens; under SP it moves.
    - "Super consistency": the sharpness along training at widths 32, 128, 512 under μP and SP, at the run's
      (SGD-like) optimizer and lr (Noci et al. 2024): μP's lines coincide, at a large enough lr all at 2/lr.
    - "Depth transfer": the residual MLP at depths 2 … 16, its branches scaled by 1, 1/√L and 1/L, the blocks'
      lr swept on the run's data and optimizer (the embedding and read-out at a fixed lr): the loss against lr
      per depth, a figure per multiplier. Only 1/√L's best lr holds across depth (with SGD).
    The model's `init` and `parametrization` (with `base_width` for μP) are options of the model: the
    dashboard's model options, or `Run(model=("mlp", {"init": "lsuv", "parametrization": "mup", ...}))`.
    """

    every = param.Integer(25, bounds=(1, None), softbounds=(1, 200), doc="steps between signal measurements")
    steps = param.Integer(60, bounds=(5, None), softbounds=(20, 500), doc="μ-Transfer: steps per run")

    job_results = {"Signal at init": (live.SIGNAL_INIT, "turn on Signal propagation"),
                   "Fluctuations vs depth": (live.FLUCTUATIONS, "press Fluctuations vs depth"),
                   "Coordinate check": (live.COORD_CHECK, "press Coordinate check"),
                   "μ-Transfer": (live.MU_TRANSFER, "press μ-Transfer"),
                   "Super consistency": (live.SHARPNESS_CURVES, "press Super consistency"),
                   "Depth transfer": (live.DEPTH_TRANSFER, "press Depth transfer")}

    def __init__(self, run: Run, feed: Feed | None = None, **params):
        super().__init__(run, feed, **params)
        self.probe = SignalPropagation(every=self.every)
        self.toggle = pn.widgets.Toggle(label="Signal propagation", value=False, width=150)
        self.toggle.param.watch(self._toggle, "value")
        self.param.watch(lambda e: setattr(self.probe, "every", int(e.new)), "every")
        self.buttons = {}
        slots = []
        for kind, label, fn in (("fluctuations", "Fluctuations vs depth", self.fluctuations),
                                ("coord", "Coordinate check", self.coord_check),
                                ("transfer", "μ-Transfer", self.mu_transfer),
                                ("sharpness", "Super consistency", self.super_consistency),
                                ("depth", "Depth transfer", self.depth_transfer)):
            button = pn.widgets.Button(label=label, width=160)
            button.on_click(lambda e, fn=fn: fn())
            self.buttons[kind] = button
            slots.append(self.job_slot(kind, label, [button]))
        self.controls = {n: self.control(n) for n in ("every", "steps")}
        figs = [self._signal_figure(), self._grad_figure(), self._fluct_figure(), self._coord_figure(),
                *self._transfer_figures(), *self._sharpness_figures(), *self._depth_figures()]
        self._layout = self.layout(
            [pn.pane.Markdown("### Initialization & μP\nLive, every k steps:"), self.toggle,
             self.controls["every"].widget,
             pn.pane.Markdown("At initialization, across seeds, Gaussian against orthogonal weights:"),
             slots[0].panel(),
             pn.pane.Markdown("Across widths (64 … 2048), under SP and μP, with the run's optimizer and lr:"),
             slots[1].panel(), self.controls["steps"].widget, slots[2].panel(),
             pn.pane.Markdown("The sharpness along training at widths 32, 128, 512 (SGD-like optimizers; 2x the steps):"),
             slots[3].panel(),
             pn.pane.Markdown("The residual MLP at depths 2 … 16 with branches scaled by 1, 1/√L, 1/L, on the run's "
                              "data and optimizer: the best lr lines up across depth only for 1/√L"),
             slots[4].panel()], figs)
        self.toggle.value = True  # cheap: one forward and backward of a fixed batch every k steps
        self._ready()

    # ---- figures ---------------------------------------------------------------------------
    def _signal_figure(self):
        empty = {"layer": [], "depth": [], "std": [], "theory_std": [], "grad_norm": []}
        self.signal_source = self.feed.snapshot(live.SIGNAL, _signal, empty)
        self.init_source = self.feed.snapshot(live.SIGNAL_INIT, _signal, empty)
        fig = plots.figure("Signal through depth", "layer", "pre-activation std", log_y=True)
        fig.line("depth", "std", source=self.signal_source, color=plots.TRAIN, line_width=2, legend_label="now")
        fig.scatter("depth", "std", source=self.signal_source, color=plots.TRAIN, size=5, legend_label="now")
        fig.line("depth", "std", source=self.init_source, color="#777777", line_dash="dotted", line_width=2,
                 legend_label="at init")
        fig.line("depth", "theory_std", source=self.init_source, color="black", line_dash="dashed", line_width=1.5,
                 legend_label="theory (infinite width)")
        plots.legend(fig, "top_left", outside=True)
        return self.hint(fig, self.signal_source, "turn on Signal propagation")

    def _grad_figure(self):
        fig = plots.figure("Gradient norm through depth", "layer", "‖∂L/∂W‖", log_y=True)
        fig.line("depth", "grad_norm", source=self.signal_source, color=plots.VAL, line_width=2, legend_label="now")
        fig.line("depth", "grad_norm", source=self.init_source, color="#777777", line_dash="dotted", line_width=2,
                 legend_label="at init")
        plots.legend(fig, "top_left", outside=True)
        return self.hint(fig, self.signal_source, "turn on Signal propagation")

    def _fluct_figure(self):
        self.fluct_source = self.feed.snapshot(live.FLUCTUATIONS, _by_init, {"init": [], "depth": [],
                                                                              "ntk_rel_var": [], "preact_rel_var": []})
        fig = plots.figure("Seed-to-seed fluctuations at init", "depth", "relative variance")
        fig.multi_line("xs", "ys", source=self.fluct_source, color="color", line_dash="dash", legend_field="label",
                       line_width=1.8)
        plots.legend(fig, "top_left")
        return self.hint(fig, self.fluct_source, "press Fluctuations vs depth")

    def _coord_figure(self):
        self.coord_source = self.feed.snapshot(live.COORD_CHECK, _coords, {"parametrizations": {}})
        fig = plots.figure("Coordinate check (solid μP, dashed SP)", "width", "mean |output|", log_x=True, log_y=True)
        fig.multi_line("xs", "ys", source=self.coord_source, color="color", line_dash="dash", legend_field="label",
                       line_width=1.8)
        plots.legend(fig, "top_left")
        return self.hint(fig, self.coord_source, "press Coordinate check")

    def _lr_figures(self, name: str, key: str, by: str, titles: dict[str, str], press: str, x_label: str = "lr",
                    log_x: bool | int = True):
        """Loss against lr, one figure per `key` value (a parametrization, a branch multiplier), a line per `by`,
        each line's best lr marked; returns the figures and, by `key` value, their curves' and marks' sources."""
        figs, curves, marks = [], {}, {}
        for group, title in titles.items():
            curves[group] = self.feed.snapshot(name, _follow(_lr_curves, key, group, by,
                                                             {"xs": [], "ys": [], "label": [], "color": []}), None)
            marks[group] = self.feed.snapshot(name, _follow(_best_marks, key, group, by,
                                                            {"lr": [], "loss": [], "color": []}), None)
            fig = plots.figure(title, x_label, "mean train loss", log_x=log_x, log_y=True)
            fig.multi_line("xs", "ys", source=curves[group], color="color", legend_field="label", line_width=1.8)
            fig.scatter("lr", "loss", source=marks[group], color="color", line_color="black", marker="diamond",
                        size=11, legend_label="best lr")
            plots.legend(fig, "top_right")
            figs.append(self.hint(fig, curves[group], press))
        return figs, curves, marks

    def _transfer_figures(self):
        figs, self.transfer_sources, self.transfer_marks = self._lr_figures(
            live.MU_TRANSFER, "parametrization", "width",
            {"sp": "SP: loss against lr by width", "mup": "μP: loss against lr by width"}, "press μ-Transfer")
        return figs

    def _depth_figures(self):
        figs, self.depth_sources, self.depth_marks = self._lr_figures(
            live.DEPTH_TRANSFER, "branch", "depth",
            {"1": "Branches × 1: loss against lr by depth", "1/sqrt(L)": "Branches × 1/√L: loss against lr by depth",
             "1/L": "Branches × 1/L: loss against lr by depth"}, "press Depth transfer", "the blocks' lr", log_x=2)
        return figs

    def _sharpness_figures(self):
        figs, self.sharpness_sources = [], {}
        for par, title in (("mup", "μP: sharpness by width"), ("sp", "SP: sharpness by width")):
            src = self.feed.snapshot(live.SHARPNESS_CURVES, _empty_sharpness(par), None)
            self.sharpness_sources[par] = src
            fig = plots.figure(title, "step", "λ_max (under μP: scaled by the per-layer multipliers)")
            fig.multi_line("xs", "ys", source=src, color="color", line_dash="dash", legend_field="label",
                           line_width=1.8)
            plots.legend(fig, "bottom_right")
            figs.append(self.hint(fig, src, "press Super consistency"))
        return figs

    # ---- actions ---------------------------------------------------------------------------
    def _toggle(self, event) -> None:
        if event.new:
            self.add_probe(self.probe)
            try:  # one forward and backward of a fixed batch: done here, not queued behind a server's long jobs
                live.compute(live.signal_at_init, self.run, progress=False)
            except Exception as e:  # the user's own model may not run on the sample: say so, keep the rest
                self.report(f"signal at init: {type(e).__name__}: {e}")
        else:
            self.drop_probe(self.probe)

    def _needs(self, option: str, what: str) -> bool:
        spec = self.run.model_spec
        if spec is None or option not in spec[1]:
            self.report(f"{what} rebuilds the model: it needs a registered model with a {option} option")
            return False
        self.report("")
        return True

    def fluctuations(self):
        return self.run_job(live.fluctuations, "fluctuations") if self._needs("depth", "Fluctuations vs depth") else None

    def coord_check(self):
        return self.run_job(live.coord_check, "coord") if self._needs("parametrization", "The coordinate check") else None

    def mu_transfer(self):
        if not self._needs("parametrization", "μ-Transfer"):
            return None
        return self.run_job(live.mu_transfer, "transfer", steps=self.steps)

    def super_consistency(self):
        if not self._needs("parametrization", "Super consistency"):
            return None
        return self.run_job(live.super_consistency, "sharpness", steps=2 * self.steps)

    def depth_transfer(self, **options):
        """Depth transfer (`live.depth_transfer`): works whatever the run's model, since it trains the residual MLP."""
        return self.run_job(live.depth_transfer, "depth", **options)

    def __panel__(self):
        return self._layout
