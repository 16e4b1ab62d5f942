"""Layer-adaptive sparsity by dynamic programming (Xu et al. 2023, "Efficient Joint Optimization of
Layer-Adaptive Weight Pruning in Deep Neural Networks").

For each layer l and density d on a grid, the output distortion δ_l(d) = mean ‖f(x; W with only layer l
pruned to d) − f(x; W)‖² on a calibration batch (each layer pruned by its own scores). The paper shows
the distortions add up (δ(joint) ≈ Σ_l δ_l; `additivity` measures it), so the allocation minimizing the
total is a knapsack: choose one density per layer, Σ_l d_l n_l ≤ (1 − s) N, minimize Σ_l δ_l(d_l), solved
by dynamic programming over the budget in `buckets` units. O(L · buckets · levels) after L · levels
forward passes.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from ..functional import eval_mode
from .allocations import allocations, by_density, keep_top

LEVELS = 20     # densities 1/20, 2/20, ..., 1 (density 0 is never chosen: no layer collapses)
BUCKETS = 400   # the budget's resolution


def _masked_output(model: nn.Module, x, weights: dict, keeps: dict) -> torch.Tensor:
    saved = {k: weights[k].detach().clone() for k in keeps}
    try:
        with torch.no_grad():
            for k, keep in keeps.items():
                weights[k].mul_(keep)
            return model(x)
    finally:
        with torch.no_grad():
            for k, w in saved.items():
                weights[k].copy_(w)


def distortion_curves(model, weights: dict, scores: dict, x, levels: int = LEVELS) -> tuple[np.ndarray, dict]:
    """(densities, {name: δ_l at each density}): the output distortion of pruning each layer alone."""
    densities = np.arange(1, levels + 1) / levels
    with eval_mode(model):
        dense = _masked_output(model, x, weights, {})
        curves = {}
        for k in scores:
            curves[k] = np.array([float((_masked_output(model, x, weights, {k: keep_top(scores[k], d)}) - dense)
                                        .pow(2).sum(-1).mean()) for d in densities])
    return densities, curves


def additivity(model, weights: dict, scores: dict, x, densities: dict) -> tuple[float, float]:
    """(Σ_l δ_l(d_l), δ of all layers pruned together): near-equal when the distortions are additive."""
    with eval_mode(model):
        dense = _masked_output(model, x, weights, {})

        def delta(keeps):
            return float((_masked_output(model, x, weights, keeps) - dense).pow(2).sum(-1).mean())

        keeps = {k: keep_top(scores[k], d) for k, d in densities.items()}
        return sum(delta({k: v}) for k, v in keeps.items()), delta(keeps)


def knapsack(curves: dict, densities: np.ndarray, sizes: dict, budget: float, buckets: int = BUCKETS) -> dict:
    """The density per layer minimizing Σ δ_l(d_l) with Σ d_l n_l ≤ budget (dynamic programming)."""
    names = list(curves)
    unit = sum(sizes.values()) / buckets
    cap = int(math.floor(budget / unit + 1e-9))
    inf = float("inf")
    best = np.full(cap + 1, inf)
    best[0] = 0.0
    choice = []
    for k in names:
        cost = [int(math.ceil(d * sizes[k] / unit - 1e-9)) for d in densities]
        new, pick = np.full(cap + 1, inf), np.full(cap + 1, -1)
        for j, (c, dist) in enumerate(zip(cost, curves[k])):
            if c > cap:
                continue
            cand = best[: cap + 1 - c] + dist
            better = cand < new[c:]
            new[c:][better], pick[c:][better] = cand[better], j
        best = new
        choice.append(pick)
    if not np.isfinite(best).any():
        raise ValueError("allocation 'adaptive': the budget cannot give every layer its smallest density "
                         f"1/{len(densities)}; lower the sparsity")
    b = int(np.argmin(best))
    out = {}
    for k, pick in zip(reversed(names), reversed(choice)):
        j = int(pick[b])
        out[k] = float(densities[j])
        b -= int(math.ceil(densities[j] * sizes[k] / unit - 1e-9))
    return out


@allocations.register("adaptive")
def adaptive(scores, sparsity, shapes, context=None):
    """Xu et al. 2023: per-layer densities minimizing the summed output distortion under the global budget (DP)."""
    if context is None or context.get("batch") is None:
        raise ValueError("allocation 'adaptive' needs a calibration batch: Sparsifier.step(step, batch=(x, y)) "
                         "(a Run passes its fixed sample)")
    model, weights, x = context["model"], context["weights"], context["batch"][0]
    densities, curves = distortion_curves(model, weights, scores, x)
    sizes = {k: s.numel() for k, s in scores.items()}
    d = knapsack(curves, densities, sizes, (1 - sparsity) * sum(sizes.values()))
    return by_density(scores, d)
