"""Layer allocations by name: from per-layer scores and a target sparsity to masks.

Each entry is `allocate(scores, sparsity, shapes, context=None) -> {name: bool mask}`: `scores` name ->
importance (higher kept; a block mask passes block scores), `shapes` the weights' own shapes (what ER/ERK
read), `context` what a data-driven allocation needs (`adaptive`: the model and a calibration batch).
"""
from __future__ import annotations

import math

import torch

from ..registry import Registry

allocations = Registry("allocation")


def keep_top(scores: torch.Tensor, density: float) -> torch.Tensor:
    """Keep the round(density * n) largest scores (ties: the earlier entry)."""
    n = scores.numel()
    k = min(n, max(0, int(round(density * n))))
    keep = torch.zeros(n, dtype=torch.bool, device=scores.device)
    if k:
        keep[torch.topk(scores.reshape(-1).float(), k, sorted=False).indices] = True
    return keep.reshape(scores.shape)


def by_density(scores: dict, densities: dict) -> dict:
    return {k: keep_top(s, densities[k]) for k, s in scores.items()}


@allocations.register("uniform")
def uniform(scores, sparsity, shapes, context=None):
    """Every layer at the same sparsity (layer-wise scope)."""
    return by_density(scores, {k: 1 - sparsity for k in scores})


@allocations.register("global")
def global_(scores, sparsity, shapes, context=None):
    """One threshold over all layers' raw scores (global scope)."""
    flat = torch.cat([s.reshape(-1).float() for s in scores.values()])
    k = int(round((1 - sparsity) * flat.numel()))
    keep = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    if k:
        keep[torch.topk(flat, k, sorted=False).indices] = True
    out, i = {}, 0
    for name, s in scores.items():
        out[name] = keep[i: i + s.numel()].reshape(s.shape)
        i += s.numel()
    return out


def erk_densities(shapes: dict, sparsity: float, kernel: bool = True) -> dict[str, float]:
    """Evci et al. 2020 (RigL), Erdős–Rényi(-Kernel): density_l = ε (Σ dims_l) / (Π dims_l), ε chosen so the
    model keeps (1 - sparsity) of its weights; a layer whose density would exceed 1 is made dense and ε
    solved again over the rest (their code's loop). Without `kernel` (ER) only (n_in + n_out)/(n_in n_out)."""
    def raw(shape):
        dims = list(shape) if kernel else list(shape[:2])  # ER: output and input channels only
        return sum(dims) / math.prod(dims)

    n = {k: math.prod(s) for k, s in shapes.items()}
    dense: set[str] = set()
    while True:
        budget = (1 - sparsity) * sum(n.values()) - sum(n[k] for k in dense)
        rest = [k for k in shapes if k not in dense]
        eps = budget / sum(raw(shapes[k]) * n[k] for k in rest) if rest else 0.0
        over = [k for k in rest if eps * raw(shapes[k]) > 1]
        if not over:
            break
        dense.update(over)  # RigL makes every layer past 1 dense at once, then solves again
    return {k: 1.0 if k in dense else eps * raw(shapes[k]) for k in shapes}


@allocations.register("erk")
def erk(scores, sparsity, shapes, context=None):
    """Erdős–Rényi-Kernel densities (Evci et al. 2020), each layer pruned by its own scores to its density."""
    return by_density(scores, erk_densities(shapes, sparsity, kernel=True))


@allocations.register("er")
def er(scores, sparsity, shapes, context=None):
    """Erdős–Rényi densities (n_in + n_out)/(n_in n_out) (Mocanu et al. 2018), no kernel term."""
    return by_density(scores, erk_densities(shapes, sparsity, kernel=False))


def lamp_scores(scores: torch.Tensor) -> torch.Tensor:
    """Lee et al. 2021: with w² sorted ascending, LAMP(u) = w_u² / Σ_{v ≥ u} w_v² (w the score)."""
    sq = scores.reshape(-1).double().pow(2)
    order = torch.argsort(sq, stable=True)
    s = sq[order]
    tail = torch.flip(torch.cumsum(torch.flip(s, [0]), 0), [0])
    out = torch.empty_like(sq)
    out[order] = s / tail.clamp_min(torch.finfo(torch.float64).tiny)
    return out.reshape(scores.shape)


@allocations.register("lamp")
def lamp(scores, sparsity, shapes, context=None):
    """LAMP (Lee et al. 2021): one global threshold over per-layer LAMP scores (each layer keeps its largest)."""
    return global_({k: lamp_scores(s) for k, s in scores.items()}, sparsity, shapes)


from . import adaptive as _adaptive  # noqa: E402,F401  (registers "adaptive")
