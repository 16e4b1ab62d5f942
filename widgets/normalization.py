"""The normalization lab: BatchNorm's batch noise, the effective lr of scale-invariant weights, and the run's
model retrained with each normalization (the micro-batch effect)."""
from __future__ import annotations

from functools import partial

import numpy as np
import panel as pn
import param
from bokeh.palettes import Category10_10

from trainlab import Run, live
from trainlab.norms import norms as norm_registry
from trainlab.probes import BatchStatNoise, EffectiveLR
from trainlab.probes.normalization import batchnorm_layers

from . import plots
from .base import LabPanel
from .feed import Feed


def _curves(snap: dict) -> dict:
    """The comparison's curves as one multi-line source, one colour per normalization."""
    names = list(snap["curves"])
    return {"xs": [np.asarray(snap["curves"][n]["step"], float) for n in names],
            "ys": [np.asarray(snap["curves"][n]["train_loss"], float) for n in names],
            "norm": [f"{n} (B={snap['batch_size']})" for n in names],
            "color": [Category10_10[i % 10] for i in range(len(names))]}


class NormalizationPanel(LabPanel):
    """What normalization does to training, measured on the run.

    - "BatchNorm noise" turns on a `BatchStatNoise` probe: per BatchNorm layer, how much the batch mean and
      variance of its input move from batch to batch at the run's batch size, beside 1/√B (dashed). Drag the
      batch size down and watch it grow: BatchNorm's output depends on the batch an example came in.
    - "Effective lr" turns on an `EffectiveLR` probe: for each weight followed by a normalization layer, lr/‖w‖²
      (SGD) or lr/‖w‖ (Adam): as the weights grow, the step on their direction shrinks on its own.
    - "Compare norms" retrains the run's model from its initialization with each chosen normalization at the
      run's batch size and settings, on a background job, and draws the training losses as each finishes.
    The model's norm, initializer and parametrization are options of the model: the dashboard's model
    options, or `Run(model=("mlp", {"norm": ..., "init": ..., "parametrization": ...}))`.
    """

    every = param.Integer(25, bounds=(1, None), softbounds=(1, 200), doc="steps between live measurements")
    steps = param.Integer(300, bounds=(10, None), softbounds=(50, 2000), doc="Compare norms: steps per model")
    compare = param.ListSelector(default=[n for n in ("batchnorm", "groupnorm", "layernorm", "none")
                                          if n in norm_registry.names()],
                                 objects=norm_registry.names(), doc="Compare norms: the normalizations trained")

    job_results = {"Compare norms": (live.NORM_COMPARISON, "press Compare norms")}

    def __init__(self, run: Run, feed: Feed | None = None, **params):
        super().__init__(run, feed, **params)
        self.instruments = {"noise": BatchStatNoise(every=self.every), "lr": EffectiveLR(every=self.every)}
        self.toggles = {kind: pn.widgets.Toggle(label=label, value=False, width=w) for kind, label, w in
                        (("noise", "BatchNorm noise", 130), ("lr", "Effective lr", 100))}
        for kind, toggle in self.toggles.items():
            toggle.param.watch(partial(self._toggle, kind), "value")
        self.compare_button = pn.widgets.Button(label="Compare norms", color="primary", width=130)
        self.compare_button.on_click(lambda e: self.compare_norms())
        slot = self.job_slot("compare", "Compare norms", [self.compare_button])
        self.controls = {n: self.control(n) for n in ("every", "steps")}
        self.compare_choice = pn.widgets.MultiChoice.from_param(self.param.compare, name="normalizations compared",
                                                                sizing_mode="stretch_width")
        self.param.watch(self._every, "every")

        figs = [self._noise_figure(run), self._lr_figure(run), self._compare_figure()]
        self._layout = self.layout(
            [pn.pane.Markdown("### Normalization\nProbes (every k steps):"), pn.Row(*self.toggles.values()),
             self.controls["every"].widget,
             pn.pane.Markdown("The run's model retrained with each normalization, at its batch size:"),
             self.compare_choice, self.controls["steps"].widget, slot.panel()], figs)
        self.has_batchnorm = bool(batchnorm_layers(run.model))
        self.toggles["noise"].value = self.has_batchnorm
        self._ready()

    # ---- figures ---------------------------------------------------------------------------
    def _noise_figure(self, run: Run):
        columns = self.instruments["noise"].columns(run).scalars
        layers = [c for c in columns if c.startswith("bn_mean_noise/")]
        self.noise_source = self.feed.source(columns, sparse=True)
        fig = plots.figure("BatchNorm batch-mean noise", "step", "spread / channel std", log_y=True, hover=True)
        for i, col in enumerate(layers):
            fig.line("step", columns[col], source=self.noise_source, color=Category10_10[i % 10], line_width=1.5,
                     legend_label=columns[col])
        if layers:
            fig.line("step", "1/√B", source=self.noise_source, color="black", line_dash="dashed", line_width=1.5,
                     legend_label="1/√B (independent features)")
            plots.legend(fig, "top_right", outside=True)
        why = "turn on BatchNorm noise" if layers else "no BatchNorm layer (model option norm)"
        return self.hint(fig, self.noise_source, why)

    def _lr_figure(self, run: Run):
        columns = self.instruments["lr"].columns(run).scalars
        self.lr_source = self.feed.source(columns, sparse=True)
        fig = plots.per_layer("Effective lr of scale-invariant weights", "lr / ‖w‖^p", self.lr_source,
                              list(columns.values()))
        why = "turn on Effective lr" if columns else "no weight feeds a normalization layer"
        return self.hint(fig, self.lr_source, why)

    def _compare_figure(self):
        self.compare_source = self.feed.snapshot(live.NORM_COMPARISON, _curves, {"batch_size": 0, "curves": {}})
        fig = plots.figure("Training loss by normalization", "step", "train loss", log_y=True)
        fig.multi_line("xs", "ys", source=self.compare_source, color="color", legend_field="norm", line_width=1.5)
        plots.legend(fig, "top_right")
        return self.hint(fig, self.compare_source, "press Compare norms")

    # ---- actions ---------------------------------------------------------------------------
    def _every(self, event) -> None:
        for probe in self.instruments.values():
            probe.every = int(event.new)

    def _toggle(self, kind: str, event) -> None:
        (self.add_probe if event.new else self.drop_probe)(self.instruments[kind])

    def compare_norms(self):
        """Start the comparison as a background job (refused, and said why, for the user's own model)."""
        if not self.compare:
            self.report("choose at least one normalization to compare")
            return None
        if self.run.model_spec is None or "norm" not in self.run.model_spec[1]:
            self.report("Compare norms rebuilds the model with each normalization: it needs a registered model")
            return None
        self.report("")
        return self.run_job(live.norm_comparison, "compare", norms=tuple(self.compare), steps=self.steps)

    def __panel__(self):
        return self._layout
