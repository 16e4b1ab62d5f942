"""Pruning at initialization without losing the signal: per-unit rescaling of the kept weights, and the
per-layer activation variance to check it (after Hayou et al. 2021, "Robust Pruning at Initialization").

Pruning a fraction of each unit's incoming weights shrinks the variance of its pre-activation by about
that fraction, layer after layer, so a deep network pruned at init starts far from the edge of chaos.
`rescale_rows` multiplies each output unit's kept weights by sqrt(Σ w² dense / Σ w² kept), restoring its
incoming squared norm (so, for inputs of equal variance, its pre-activation variance).
"""
from __future__ import annotations

import torch
from torch import nn

from ..functional import record
from .structured import as_rows


def row_norms_sq(weight: torch.Tensor) -> torch.Tensor:
    """Σ_j w_ij² per output unit (conv: per output channel over in_channels × kernel)."""
    return as_rows(weight.detach()).pow(2).sum(1)


def rescale_rows(weight: torch.Tensor, dense_sq: torch.Tensor) -> None:
    """In place: each row of the (pruned) weight scaled back to its dense squared norm (rows left empty stay 0)."""
    kept = row_norms_sq(weight)
    factor = torch.where(kept > 0, (dense_sq / kept.clamp_min(torch.finfo(kept.dtype).tiny)).sqrt(),
                         torch.ones_like(kept))
    with torch.no_grad():
        weight.mul_(factor.reshape(-1, *([1] * (weight.ndim - 1))))


def activation_variance(model: nn.Module, x: torch.Tensor) -> dict[str, float]:
    """Variance of each Linear/Conv layer's output (its pre-activation) on the batch x, in eval mode, by layer name."""
    return record(model, x, lambda _, m: isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)),
                  lambda mod, inp, o: float(o.detach().var()))
