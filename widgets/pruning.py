"""The pruning lab: criterion, allocation, pattern, schedule and sparsity as live knobs on the run, the plan
drawn ahead beside the sparsity measured from the weights, and a compacted model's measured cost."""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import panel as pn
import param
from bokeh.models import ColumnDataSource, Span
from bokeh.palettes import Category10_10

from trainlab import Run, live
from trainlab import prune as P
from trainlab.probes import SparsityProbe
from trainlab.probes.pruning import SURVIVING, VARIANCE
from trainlab.prune.sparsifier import PATTERNS, SCOPES

from . import plots
from .base import LabPanel, plain
from .controls import Control
from .feed import Feed

_LAYERWISE = ("uniform", "er", "erk")  # allocations that set each layer's sparsity (scope "layer")
_EMPTY = np.array([])


class _Choice(param.Parameterized):
    """The pruning the panel asks for: the run's own while it prunes, the next one while it does not."""

    method = param.Selector(default="magnitude", objects=P.criteria.names(), doc="criterion: which weights matter")
    scope = param.Selector(default="global", objects=list(SCOPES),
                           doc="global: one threshold over all layers; layer: each layer pruned by its allocation")
    allocation = param.Selector(default="global", objects=P.allocations.names(),
                                doc="how sparsity is shared by the layers")
    pattern = param.Selector(default="unstructured", objects=list(PATTERNS),
                             doc="unstructured weights, N of every M (N:M), or 1×4 blocks")
    n = param.Integer(2, bounds=(1, None), softbounds=(1, 8), doc="N:M: weights kept of every M")
    m = param.Integer(4, bounds=(1, None), softbounds=(2, 16), doc="N:M: group size along the input dimension")
    sparsity = param.Number(0.9, bounds=(0, 1), inclusive_bounds=(True, False), softbounds=(0, 0.99), step=0.01,
                            doc="target (final) sparsity: the fraction of prunable weights that are zero")
    schedule = param.Selector(default="gradual", objects=P.prune_schedules.names(), doc="when to prune")


def _histogram(snap: dict | None) -> dict[str, np.ndarray]:
    """The surviving-weights snapshot as step-line columns: bin centres and one count column per layer."""
    if not snap:
        return {"x": _EMPTY}
    edges = snap["edges"]
    return {"x": (edges[:-1] + edges[1:]) / 2, **{k: np.asarray(v, float) for k, v in snap["counts"].items()}}


def _variance(snap: dict | None) -> dict[str, Any]:
    """The activation-variance snapshot as columns: layer position, name, variance before and after the pruning."""
    if not snap:
        return {"layer": _EMPTY, "name": [], "before": _EMPTY, "after": _EMPTY}
    return {"layer": np.arange(1, len(snap["layers"]) + 1), "name": list(snap["layers"]),
            "before": np.asarray(snap["before"], float), "after": np.asarray(snap["after"], float)}


def _ms(seconds: float) -> str:
    return f"{1000 * seconds:.3g} ms"


def _table(r: dict | None) -> pd.DataFrame:
    """The compact preview's numbers as rows: dense, compacted, their ratio."""
    if not r:
        return pd.DataFrame({"": [], "dense": [], "compact": [], "×": []})
    rows = [("parameters", f"{r['params_dense']:,}", f"{r['params']:,}", r["params"] / r["params_dense"]),
            ("MACs/example", f"{r['macs_dense']:,}", f"{r['macs']:,}", r["macs"] / r["macs_dense"]),
            (f"latency ({r['batch']})", _ms(r["latency_dense"]), _ms(r["latency"]), r["latency_ratio"])]
    return pd.DataFrame({"": [a for a, *_ in rows], "dense": [b for _, b, *_ in rows],
                         "compact": [c for *_, c, _ in rows], "×": [f"{d:.2f}" for *_, d in rows]})


class PruningPanel(LabPanel):
    """Pruning as live knobs on the run, its plan drawn ahead and its effect measured.

    The controls are `trainlab.prune`'s registries (criteria, allocations, pruning schedules with their
    declared options) and the Sparsifier's patterns; while the run prunes, a change goes to the run as
    `run.set(pruning=...)` (a new pruning, its schedule counting from now) or `run.set(sparsity=...)` (the
    same plan, a new final sparsity); a refused value is shown and the run keeps training as it was. The
    plots read the `SparsityProbe`'s declared columns (the run adds the probe when it starts pruning), the
    plan from `trainlab.prune.preview`, and the probe's histogram of the surviving weights. "Compact" previews
    the model with whole channels removed
    (`live.compact_preview`: `Compactor(run.model_copy()).preview(ratio)`, then latency measured against
    the dense model) as a job. "Repair" runs `live.repair` (DSnoT-style, training-free) as a job: the repaired
    masks reach the run between two steps, if the calibration loss fell (or always, as `repair_apply` says).
    """

    repair_apply = param.Selector(default="better", objects=list(live.REPAIR_APPLY),
                                  doc="when Repair hands its masks to the run: if the calibration loss fell, always, "
                                      "or never (a preview)")
    compact_ratio = param.Number(0.5, bounds=(0, 1), inclusive_bounds=(True, False), softbounds=(0, 0.9), step=0.05,
                                 doc="fraction of each hidden layer's channels (neurons) removed by compaction")

    job_results = {"Compact preview": (live.COMPACT, "press Preview compact"),
                   "Repair (DSnoT)": (live.REPAIR, "prune, then press Repair (DSnoT)")}

    def __init__(self, run: Run, feed: Feed | None = None, **params):
        super().__init__(run, feed, **params)
        self.choice = _Choice()
        self._method_options: dict = {}
        self._schedule_values: dict = dict(P.prune_schedules["gradual"].defaults())
        self._seen: dict | None = None  # the run's pruning last adopted into the controls
        self._on = False
        if run.pruning is not None:
            self._adopt(run.pruning)

        # controls: the choice's declared parameters, the schedule's declared options
        self.controls = {n: Control(self.choice, n, self._apply) for n in
                         ("method", "scope", "allocation", "pattern", "n", "m", "sparsity", "schedule")}
        self._options = pn.Column(sizing_mode="stretch_width")
        self._options_for: str | None = None
        self.toggle = pn.widgets.Button(label="Turn pruning on", color="primary", sizing_mode="stretch_width")
        self.toggle.on_click(lambda e: self.turn(not self._on))
        self.state = pn.pane.Markdown("", sizing_mode="stretch_width")
        self.collapse = pn.pane.Alert("", alert_type="warning", visible=False, sizing_mode="stretch_width")
        self._build_options()

        # compaction: a ratio, a job, a table
        self.ratio_control = self.control("compact_ratio")
        self.compact_button = pn.widgets.Button(label="Preview compact", color="primary", width=130)
        self.compact_button.on_click(lambda e: self.preview_compact())
        self.param.watch(lambda e: self.preview_compact(), "compact_ratio")
        slot = self.job_slot("compact", "Compact", [self.compact_button], describe=self._describe)
        self._wanted: float | None = None  # a ratio moved to while a preview ran: previewed next
        self.table = pn.pane.DataFrame(_table(None), index=False, sizing_mode="stretch_width", visible=False)
        self.compact_note = pn.pane.Markdown("", sizing_mode="stretch_width")
        self.compact_source = self.feed.snapshot(live.COMPACT, self._receive, None)

        # repair: one click, a job that hands its masks to the run between two steps
        self.repair_button = pn.widgets.Button(label="Repair (DSnoT)", color="primary", width=130)
        self.repair_button.on_click(lambda e: self.repair())
        self.repair_control = self.control("repair_apply")
        repair_slot = self.job_slot("repair", "Repair", [self.repair_button], describe=self._describe_repair)

        self.figures = self._figures()
        self.feed.on_tick(self._tick)
        self._tick()
        self._layout = self.layout(
            [pn.pane.Markdown("### Pruning"), self.toggle, self.state,
             *(self.controls[n].widget for n in ("method", "scope", "allocation", "pattern", "n", "m", "sparsity",
                                                  "schedule")), self._options, self.collapse,
             pn.pane.Markdown("### Repair without training"), self.repair_control.widget, repair_slot.panel(),
             pn.pane.Markdown("### Compact: remove whole channels"), self.ratio_control.widget, slot.panel(),
             self.table, self.compact_note],
            self.figures)
        self._ready()

    # ---- plots ------------------------------------------------------------------------------
    def _figures(self) -> list:
        feed, run = self.feed, self.run
        cols = SparsityProbe().columns(run).scalars  # history column -> name drawn
        layers = {k: v for k, v in cols.items() if k.startswith("sparsity/")}
        self.measured_name = cols["sparsity"]

        self.preview_source = ColumnDataSource({"step": _EMPTY, "sparsity": _EMPTY, "beta": _EMPTY})
        self._preview_key: tuple | None = None
        self.measured = feed.source({"sparsity": self.measured_name}, sparse=True)
        self._now = Span(location=run.steps, dimension="height", line_color="#555555", line_dash="dashed")
        plan = plots.figure("Sparsity: planned ahead, measured", "step", "sparsity", hover=True)
        plan.line("step", "sparsity", source=self.preview_source, color="#999999", line_width=2, line_dash="dotted",
                  legend_label="planned")
        plan.line("step", self.measured_name, source=self.measured, color=plots.TRAIN, line_width=2,
                  legend_label="measured (weights)")
        # a mask decay: the masks' sparsity is planned, the weights' own zeros wait for β to reach 0
        self.mask_name = cols["mask_sparsity"]
        self.mask_measured = feed.source({"mask_sparsity": self.mask_name}, sparse=True)
        plan.line("step", self.mask_name, source=self.mask_measured, color="#ff7f0e", line_width=1.5,
                  line_dash="dashed", legend_label="measured (masks)")
        plan.line("step", "beta", source=self.preview_source, color="#2ca02c", line_width=1.5, line_dash="dotdash",
                  legend_label="β (mask decay)")
        plan.add_layout(self._now)
        plots.legend(plan, "bottom_right")
        self.hint(plan, self.preview_source, "turn pruning on: its plan is drawn ahead here")

        self.per_layer = feed.source(layers, sparse=True)
        per = plots.sparsity_map("Sparsity per layer over time", self.per_layer, list(layers.values()),
                                 next((p.every for p in run.probes if isinstance(p, SparsityProbe)),
                                      SparsityProbe().every))
        self.hint(per, self.per_layer, "measured once pruning is on")

        self.churn_name = cols["mask_churn"]
        self.churn = feed.source({"mask_churn": self.churn_name}, sparse=True)
        churn = plots.figure("Mask churn: fraction changed per update", "step", "mask churn", hover=True)
        churn.line("step", self.churn_name, source=self.churn, color=plots.VAL, line_width=1.5)
        churn.scatter("step", self.churn_name, source=self.churn, color=plots.VAL, size=5)
        self.hint(churn, self.churn, "after each mask update (gradual, imp, set, rigl)")

        self.surviving = feed.snapshot(SURVIVING, _histogram, None)
        hist = plots.figure("Surviving (nonzero) weights", "weight", "count")
        for i, layer in enumerate(layers.values()):  # the probe's layer names, as its counts are keyed
            hist.step("x", layer, source=self.surviving, mode="center", color=Category10_10[i % 10],
                      legend_label=layer, line_width=1.5)
        plots.legend(hist, "top_right", outside=True)
        self.surviving_figure = hist
        self.hint(hist, self.surviving, "turn pruning on: its probe draws it")

        self.variance = feed.snapshot(VARIANCE, _variance, None)
        var = plots.figure("Activation variance per layer, at the newest pruning", "layer", "variance", log_y=True,
                           tooltips=[("layer", "@name"), ("before", "@before"), ("after", "@after")])
        var.line("layer", "before", source=self.variance, color="#999999", line_width=2, legend_label="before")
        var.scatter("layer", "before", source=self.variance, color="#999999", size=6)
        var.line("layer", "after", source=self.variance, color=plots.VAL, line_width=2, legend_label="after")
        var.scatter("layer", "after", source=self.variance, color=plots.VAL, size=6)
        plots.legend(var, "bottom_left")
        self.hint(var, self.variance, "at each pruning: pre-activation variance through depth (rescale keeps it)")

        y, label = ("val_acc", "validation accuracy") if run.data.task == "classification" else ("val_loss",
                                                                                                  "validation loss")
        self.quality = feed.source({"sparsity": "sparsity", y: y}, sparse=True)
        quality = plots.figure(f"{label.capitalize()} against sparsity", "sparsity", label)
        quality.scatter("sparsity", y, source=self.quality, color=plots.VAL, size=5, alpha=0.6)
        self.hint(quality, self.quality, f"turn pruning on: a point per validation (every {run.eval_every} steps)",
                  needs=("sparsity",))
        return [plan, per, churn, hist, var, quality]

    def _receive(self, snap: dict | None) -> dict[str, list]:
        """A compact preview arrived (on the UI's tick): its table; the carrier source holds the ratio."""
        self.table.object, self.table.visible = _table(snap), bool(snap)
        if snap:
            u = snap.get("unstructured")
            if u:
                self.compact_note.object = plain(
                    f"Unstructured zeros now: {u['zeros']:,} of {u['params']:,} weights ({u['sparsity']:.0%}), "
                    f"speed-up {u['speedup']:g}: dense kernels multiply them too. Only whole channels make the "
                    f"model smaller and faster.")
        return {"ratio": [snap["ratio"]] if snap else []}

    # ---- the pruning asked for ----------------------------------------------------------------
    def spec(self) -> dict[str, Any]:
        """The Sparsifier arguments the controls say (what `run.set(pruning=...)` gets)."""
        c = self.choice
        out = dict(method=(c.method, dict(self._method_options)), sparsity=c.sparsity, scope=c.scope,
                   allocation=c.allocation, schedule=(c.schedule, dict(self._schedule_values)), pattern=c.pattern)
        if c.pattern == "nm":
            out.update(n=c.n, m=c.m)
        return out

    def _adopt(self, spec: dict) -> None:
        """The run's pruning (set from Python, or ours once applied) into the controls."""
        method, opts = spec["method"]
        schedule, values = spec["schedule"]
        self._method_options, self._schedule_values = dict(opts), dict(values)
        with param.parameterized.discard_events(self.choice):
            self.choice.param.update(method=method, sparsity=spec["sparsity"], scope=spec["scope"],
                                     allocation=spec["allocation"], pattern=spec["pattern"], schedule=schedule,
                                     **{k: spec[k] for k in ("n", "m") if k in spec})
        for n, ctl in getattr(self, "controls", {}).items():
            ctl.show(getattr(self.choice, n))

    def turn(self, on: bool) -> bool:
        """Start pruning as the controls say (its schedule from now), or stop (masks removed)."""
        if on and not self.set_run(pruning=self.spec()):
            return False
        if not on and not self.set_run(pruning=None):
            return False
        self._on = on
        self._tick()
        return True

    def _apply(self, name: str, value: Any) -> None:
        """A control moved: a new pruning for the run (or the final sparsity alone) while it prunes; the next
        pruning (checked against the model) while it does not."""
        c = self.choice
        old = {k: getattr(c, k) for k in c.param if k != "name"}
        new = {**old, name: value}
        if name == "allocation":  # the scope follows the allocation: per-layer ones are layer-wise
            new["scope"] = "layer" if value in _LAYERWISE else "global"
        elif name == "scope" and (value == "layer") != (old["allocation"] in _LAYERWISE):
            new["allocation"] = "uniform" if value == "layer" else "global"
        if name == "method" and value != old["method"]:
            self._method_options = {}
        values = self._schedule_values
        if name == "schedule" and value != old["schedule"]:  # the options both declare carry over
            declared = P.prune_schedules[value].params
            values = {**P.prune_schedules[value].defaults(), **{k: v for k, v in values.items() if k in declared}}
        with param.parameterized.discard_events(c):
            c.param.update(**new)
        kept, self._schedule_values = self._schedule_values, values
        if self._on:
            ok = self.set_run(sparsity=value) if name == "sparsity" else self.set_run(pruning=self.spec())
        else:
            ok = self._check()
        if not ok:
            with param.parameterized.discard_events(c):
                c.param.update(**old)
            self._schedule_values = kept
        for n, ctl in self.controls.items():
            ctl.show(getattr(c, n))
        self._build_options()
        self._tick()

    def _check(self) -> bool:
        """The next pruning, checked against the model (a Sparsifier built, nothing pruned)."""
        try:
            P.as_sparsifier(self.run.model, self.spec())
        except ValueError as e:
            self.report(str(e))
            return False
        self.report("")
        return True

    def _build_options(self) -> None:
        """Controls for the options the chosen schedule declares."""
        name = self.choice.schedule
        if name == self._options_for and self._options.objects:
            for n, ctl in self.schedule_controls.items():
                ctl.show(self._schedule_values.get(n))
            return
        self._options_for = name
        entry = P.prune_schedules[name]
        opts = entry.options(**{k: v for k, v in self._schedule_values.items() if k in entry.params})
        self.schedule_controls = {n: Control(opts, n, self._set_option) for n in entry.params}
        self._options.objects = [c.widget for c in self.schedule_controls.values()]

    def _set_option(self, name: str, value: Any) -> None:
        old = self._schedule_values
        self._schedule_values = {**old, name: value}
        ok = self.set_run(pruning=self.spec()) if self._on else self._check()
        if not ok:
            self._schedule_values = old
            self.schedule_controls[name].show(old.get(name))
        self._tick()

    # ---- compaction ---------------------------------------------------------------------------
    def preview_compact(self):
        """The model compacted at `compact_ratio`, its parameters, MACs and latency against dense, as a job."""
        if self.slots["compact"].running:
            self._wanted = self.compact_ratio  # previewed when the running one is done
            return self.slots["compact"].job
        self._wanted = None
        return self.run_job(live.compact_preview, "compact", ratio=self.compact_ratio)

    @staticmethod
    def _describe(job) -> str:
        r = job.result.get(live.COMPACT) if job.result else None
        if r is None:
            return "No result."
        return (f"Ratio {r['ratio']:g}: {r['params'] / r['params_dense']:.2f}× the parameters, "
                f"latency {r['latency_ratio']:.2f}× dense (median of interleaved pairs, batch {r['batch']}).")

    # ---- repair -------------------------------------------------------------------------------
    def repair(self):
        """DSnoT-style repair of the run's masks (`live.repair`) as a job; its masks reach the run between two steps."""
        return self.run_job(live.repair, "repair", apply=self.repair_apply)

    @staticmethod
    def _describe_repair(job) -> str:
        r = job.result.get(live.REPAIR) if job.result else None
        if r is None:
            return "No result."
        ratios = ", ".join(f"{k.rsplit('.', 1)[0]} ×{v:.2g}" for k, v in zip(r["layers"], r["error_ratio"]))
        verdict = (f"applied: {r['swapped']} weights regrown and as many pruned" if r["applied"] else
                   "not applied: the loss rose (set 'always' to apply it anyway)" if r["apply"] == "better" else
                   "not applied (a preview)")
        return (f"Repair at step {r['step']}: expected reconstruction error {ratios}; calibration loss "
                f"{r['loss_before']:.4g} → {r['loss_after']:.4g}; output error against the weights before the "
                f"pruning {r['mse_before']:.4g} → {r['mse_after']:.4g}. {verdict}.")

    # ---- ticks ------------------------------------------------------------------------------
    def _horizon(self, start: int) -> int:
        """Steps the plan is drawn over: past its last declared step, doubled when the run gets near the end."""
        v = self._schedule_values
        last = v.get("rounds", 1) * v["period"] if "period" in v else max(
            (x for x in v.values() if isinstance(x, int)), default=0)
        steps = max(1000, int(1.2 * last))
        while steps < 1.1 * (self.run.steps - start):
            steps *= 2
        return steps

    def _tick(self) -> None:
        """On the UI's tick: adopt the run's pruning, the state line, the plan ahead, the alarm, the histogram."""
        run = self.run
        spec = run.pruning
        if spec != self._seen:
            self._seen = spec
            self._on = spec is not None
            if spec is not None:
                self._adopt(spec)
                self._build_options()
        label = "Turn pruning off" if self._on else "Turn pruning on"
        if self.toggle.label != label:
            self.toggle.label, self.toggle.button_type = label, ("warning" if self._on else "primary")
        nm = self.choice.pattern == "nm"
        for n in ("n", "m"):
            if self.controls[n].widget.visible != nm:
                self.controls[n].widget.visible = nm
        if self.controls["sparsity"].widget.disabled != nm:  # N:M fixes the sparsity at 1 - N/M
            self.controls["sparsity"].widget.disabled = nm
        state = run.pruning_state
        if state is None:
            text = ("*Pruning is off* (pending: it applies at the next step)." if self._on else
                    "*Pruning is off*: the controls choose the pruning *Turn pruning on* starts.")
        else:
            sp = state.sparsifier
            text = (f"**{plain(sp.method)}**, {plain(sp.allocation)}, {plain(sp.schedule_name)} from step {sp.start}: "
                    f"pruned to {sp.applied:.3g} of {sp.sparsity:.3g}. A change starts a new pruning from now; "
                    f"the sparsity slider keeps the plan.")
        if self.state.object != text:
            self.state.object = text
        # the "now" line moves with the plots (every plot tick, shown only): each move redraws its figure
        if (self._now.location != run.steps and self.feed.shown(self.group)
                and self.feed.ticks % self.feed.plot_every == 0):
            self._now.location = run.steps
        if state is not None:
            start = state.sparsifier.start
            steps = self._horizon(start)
            key = (repr(spec), start, steps)
            if key != self._preview_key:  # the core's preview does the math; the panel hands it to the plot
                self._preview_key = key
                data = P.preview(run.model, spec, steps, start=start)
                data.setdefault("beta", np.full(len(data["step"]), np.nan))  # β only for a mask decay
                self.preview_source.data = data
        elif self._preview_key is not None:
            self._preview_key = None
            self.preview_source.data = {"step": _EMPTY, "sparsity": _EMPTY, "beta": _EMPTY}
        collapsed = state.sparsifier.collapsed() if state is not None and state.collapsed else {}
        note = ("LAYER COLLAPSE: " + ", ".join(f"{plain(k)} keeps {100 * v:.2g} %" for k, v in collapsed.items())
                + ". A layer that keeps (almost) nothing cuts the signal: lower the sparsity, or choose an "
                  "allocation that keeps every layer alive (erk, lamp).") if collapsed else ""
        if self.collapse.object != note:
            self.collapse.object, self.collapse.visible = note, bool(note)
        if self._wanted is not None and not self.slots["compact"].running:
            self.preview_compact()

    def __panel__(self):
        return self._layout
