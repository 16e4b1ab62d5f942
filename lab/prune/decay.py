"""Mask decay for N:M training: the masks of Progressive Gradient Flow's MDGF (Bambhaniya et al. 2024, "Progressive
Gradient Flow for Robust N:M Sparsity Training in Transformers"), inside the mask contract.

MDGF trains dense weights W behind the forward weight W ⊙ (M + β_t (1 − M)): pruned weights are scaled by a
factor β_t that decays to 0 instead of being zeroed, and the N:M mask M is recomputed from |W| so it can change.
The contract keeps one tensor per weight and the dense module's forward, so here the stored weight *is* the
forward's, W̃ = W ⊙ (M + β(1 − M)). While β > 0 the dense W is W̃ / (M + β(1 − M)): every k steps its
magnitudes give the new N:M mask and W̃ is written again with the new β and mask. Between two of them the
step multiplies pruned gradients by β² and leaves the weights alone (for plain SGD exactly MDGF's update seen
through β: ΔW̃ = β ΔW = −lr β² ∂L/∂W̃; adaptive optimizers take the same direction). When β reaches 0 the
pruned weights are exactly 0 and the masks stay fixed: the contract's usual state.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .masks import set_mask
from .structured import nm_mask

SHAPES = ("linear", "cosine", "exponential")
FLOOR = 0.01  # exponential decay: from 1 to this at the end, then 0


def beta(shape: str, progress: float) -> float:
    """β at this fraction of the decay (0: start, 1: end): 1 → 0, exactly 0 from the end on."""
    if progress >= 1:
        return 0.0
    if progress <= 0:
        return 1.0
    if shape == "linear":
        return 1.0 - progress
    if shape == "cosine":
        return 0.5 * (1 + math.cos(math.pi * progress))
    return FLOOR ** progress


def factor(keep: torch.Tensor, b: float, dtype: torch.dtype) -> torch.Tensor:
    """M + β (1 − M): what the forward weight is of the dense one, entry by entry."""
    return keep.to(dtype) * (1 - b) + b  # in the weight's dtype: β exactly as the weights see it


def recompute(model: nn.Module, weights: dict[str, nn.Parameter], old: dict[str, torch.Tensor] | None,
              beta_old: float, beta_new: float, n: int, m: int) -> int:
    """New N:M masks from the dense weights' magnitudes, the weights written at `beta_new`; the mask entries changed.

    `old` are the masks the weights were written with at `beta_old` (None: none yet, the weights are dense)."""
    changed = 0
    with torch.no_grad():
        for k, w in weights.items():
            prev = None if old is None else old.get(k)
            if prev is None:
                dense = w.detach().clone()
            else:  # a weight written at β = 0 has no dense value left: it stays 0
                f = factor(prev, beta_old, w.dtype)
                dense = torch.where(f > 0, w.detach() / f.clamp_min(torch.finfo(w.dtype).tiny), 0.0)
            keep = nm_mask(dense, n, m)
            if prev is not None:
                changed += int((keep != prev).sum())
            w.copy_(dense)
            set_mask(model, k, keep, pruned=beta_new)
    return changed
