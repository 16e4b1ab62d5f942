"""Sparsity, measured: per-layer zeros counted from the weights, mask churn, the gradient reaching pruned weights."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from trainlab.prune.masks import mask_sparsity, masks, prunable, sparsity

from .base import Columns, Probe

if TYPE_CHECKING:
    from trainlab.run import Run


SURVIVING = "surviving_weights"  # the snapshots' names
VARIANCE = "activation_variance"


def _layer(weight_name: str) -> str:
    return weight_name.rsplit(".", 1)[0] if "." in weight_name else weight_name


class SparsityProbe(Probe):
    """Columns `sparsity/<layer>` (exact zeros of each prunable weight, from the weights, never the masks),
    `sparsity` (all of them together), `mask_churn` (fraction of mask entries the newest mask update
    changed, on the first measured step after it) and `pruned_grad_norm` (‖g‖ over pruned entries,
    before the step masks it: how hard training pushes to regrow them), `collapsed_layers` (layers keeping
    under 1 % of their weights: layer collapse), `mask_sparsity` (what the masks say; the weights' own
    zeros match it except while a mask decays) and `mask_decay` (that decay's β). Snapshots
    `surviving_weights`: a histogram of the nonzero weights per layer over shared bin edges, {"edges":
    (bins+1,), "counts": {layer: (bins,)}} (magnitude pruning carves a gap around 0 that training fills or
    keeps); `activation_variance`: each layer's pre-activation variance on the calibration batch right before
    and after the newest pruning, {"layers", "before", "after"} (pruning at init shrinks it layer after
    layer; a rescaling keeps it). Added by a run that prunes."""

    name = "sparsity"

    def __init__(self, every: int = 10, bins: int = 40):
        super().__init__(every)
        if bins < 2:
            raise ValueError(f"bins must be >= 2, got {bins}")
        self.bins, self._seen, self._variance = bins, (0, 0), None

    def before(self, run: Run) -> None:
        if run.pruning_state is not None:
            run.pruning_state.want_pruned_norm = True

    def measure(self, run: Run) -> dict[str, Any]:
        s = sparsity(run.model)
        out = {f"sparsity/{_layer(k)}": v for k, v in s.items() if k != "global"}
        out["sparsity"] = s["global"]
        pruning = run.pruning_state
        if masks(run.model):
            out["mask_sparsity"] = mask_sparsity(run.model)["global"]
        if pruning is not None:
            if pruning.sparsifier.beta is not None:
                out["mask_decay"] = pruning.sparsifier.beta
            if pruning.variance is not None and pruning.variance[0] != self._variance:
                self._variance = pruning.variance[0]
                out[VARIANCE] = pruning.variance[1]
            if pruning.pruned_norm is not None:
                out["pruned_grad_norm"], pruning.pruned_norm = pruning.pruned_norm, None
            out["collapsed_layers"] = pruning.collapsed
            updates = (pruning.sparsifier.updates, pruning.repairs)
            if updates != self._seen and pruning.churn is not None:
                out["mask_churn"] = pruning.churn
            self._seen = updates
        kept = {_layer(k): w.detach()[w.detach() != 0].cpu().numpy() for k, w in prunable(run.model).items()}
        nonempty = [v for v in kept.values() if v.size]
        if nonempty:
            lo, hi = min(float(v.min()) for v in nonempty), max(float(v.max()) for v in nonempty)
            edges = np.linspace(lo, hi if hi > lo else lo + 1.0, self.bins + 1)
            out[SURVIVING] = {"edges": edges, "counts": {k: np.histogram(v, bins=edges)[0]
                                                                  for k, v in kept.items()}}
        return out

    def state(self) -> dict[str, Any]:
        return {"seen": self._seen}

    def load_state(self, state: dict[str, Any], run: Run) -> None:
        self._seen = state["seen"]

    def columns(self, run: Run) -> Columns:
        scalars = {f"sparsity/{_layer(k)}": _layer(k) for k in prunable(run.model)}
        scalars.update(sparsity="all layers", mask_churn="mask churn", pruned_grad_norm="‖g‖ on pruned weights",
                       collapsed_layers="layers keeping < 1 %", mask_sparsity="the masks' sparsity",
                       mask_decay="β (mask decay)")
        return Columns(scalars, snapshots=(SURVIVING, VARIANCE))
