"""Signal propagation while training (the initialization lab): per-layer activation scale and gradient norm
through depth, beside the infinite-width theory's prediction (`trainlab.analysis.signal.propagation`)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from torch import nn

from .base import Columns, Probe

if TYPE_CHECKING:
    from trainlab.run import Run


class SignalPropagation(Probe):
    """Every `every` steps, on a fixed sample of `n` training examples: columns `signal_std/<layer>` (the std
    of the layer's pre-activations) and `signal_grad/<layer>` (its weight gradient's norm), and the snapshot
    `signal`: arrays layer, depth, mean, std, grad_norm, theory_std (NaN where the theory does not apply)."""

    name = "signal"

    def __init__(self, every: int = 25, n: int = 256):
        super().__init__(every)
        if isinstance(n, bool) or not isinstance(n, int) or n < 2:
            raise ValueError(f"n must be a whole number of examples >= 2, got {n!r}")
        self.n = n
        self._sample = None

    @staticmethod
    def layers(run: Run) -> list[str]:
        return [n for n, m in run.model.named_modules() if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))]

    def columns(self, run: Run) -> Columns:
        layers = self.layers(run)
        return Columns({**{f"signal_std/{n}": n for n in layers}, **{f"signal_grad/{n}": n for n in layers}},
                       snapshots=("signal",))

    def measure(self, run: Run) -> dict[str, Any]:
        from trainlab.analysis.signal import propagation

        if self._sample is None:
            self._sample = run.data.fixed_sample(self.n, seed=0, device=run.device)
        frame = propagation(run.model, self._sample, loss_fn=run.loss_fn, n=self.n)
        out: dict[str, Any] = {}
        for row in frame.itertuples():
            out[f"signal_std/{row.layer}"] = float(row.std)
            out[f"signal_grad/{row.layer}"] = float(row.grad_norm)
        out["signal"] = {c: (frame[c].to_numpy(dtype=object) if c == "layer" else frame[c].to_numpy(dtype=np.float64))
                         for c in ("layer", "depth", "mean", "std", "grad_norm", "theory_std")}
        return out
