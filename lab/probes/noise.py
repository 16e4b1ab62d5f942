"""Gradient noise while the run trains: the noise scale B_simple and the gradient signal-to-noise ratio."""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from trainlab.analysis.gradients import gradient_stats

from .base import Columns, Probe, layer_columns

if TYPE_CHECKING:
    from trainlab.run import Run


class GradientNoise(Probe):
    """Every k steps: `noise_scale`, `grad_snr` and `grad_snr/<layer>` at the current weights.

    Each measurement draws `examples` training examples at random (its own generator, so the
    run's sampling is untouched) and computes their per-example gradients after the step.
    """

    name = "gradient_noise"

    def __init__(self, every: int = 25, examples: int = 256, seed: int = 0):
        super().__init__(every)
        if not isinstance(examples, int) or examples < 2:
            raise ValueError(f"examples must be a whole number >= 2, got {examples!r}")
        self.examples = examples
        self._gen = torch.Generator().manual_seed(seed)

    def state(self) -> dict:
        return {"generator": self._gen.get_state()}

    def load_state(self, state: dict, run: Run) -> None:
        self._gen.set_state(state["generator"])

    def columns(self, run: Run) -> Columns:
        return Columns({"noise_scale": "noise_scale", "grad_snr": "grad_snr", **layer_columns(run, "grad_snr")})

    def measure(self, run: Run) -> dict[str, float]:
        X, y = run.data.random_sample(self.examples, self._gen, device=run.device)
        ids = {id(p): n for n, p in run.model.named_parameters()}
        layers = {layer: [ids[id(p)] for p in ps] for layer, ps in run.layers.items()}
        stats = gradient_stats(run.model, run.loss_fn, X, y, layers)
        return {k: v for k, v in stats.items() if k not in ("trace_cov", "grad_sq")}
