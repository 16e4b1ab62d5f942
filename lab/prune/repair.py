"""Training-free repair of a pruned model, DSnoT-style (Zhang et al. 2024, "Dynamic Sparse No Training"):
swap pruned and kept weights of each Linear layer to shrink the expected reconstruction error.

For a row i of W (dense) with mask M and calibration inputs X (mean μ, column norms ‖X_j‖), the expected
error of the sparse row is Δ_i = Σ_j (1 − M_ij) W_ij μ_j. Each cycle, every row still improving regrows
the pruned weight j that brings Δ_i nearest 0 and prunes the kept weight k (k ≠ j) of least Wanda score
|W_ik|·‖X_k‖ among those that leave |Δ_i| smaller than before the swap; a row with no such pair stops.
Each row keeps its count of weights (its sparsity), regrown weights take their dense values. Linear layers
only (DSnoT's setting); inputs are captured in one forward pass of the pruned model.
"""
from __future__ import annotations

import torch
from torch import nn

from ..functional import record
from .masks import masks as _masks
from .masks import set_mask


def expected_error(dense: torch.Tensor, keep: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
    """Δ per row: Σ_j (1 − M_ij) W_ij μ_j."""
    return ((~keep) * dense) @ mu


def repair_layer(dense: torch.Tensor, keep: torch.Tensor, x: torch.Tensor, cycles: int = 50) -> torch.Tensor:
    """A new mask for one Linear weight (out, in) from its dense values and inputs x (n, in)."""
    dense, keep = dense.double(), keep.clone()
    x = x.reshape(-1, x.shape[-1]).double()
    mu, wanda_col = x.mean(0), x.norm(dim=0)
    contrib = dense * mu                      # W_ij μ_j: what regrowing j removes from Δ, or pruning j adds
    wanda = dense.abs() * wanda_col
    rows = torch.arange(dense.shape[0])
    active = torch.ones(dense.shape[0], dtype=torch.bool)
    big = torch.tensor(float("inf"), dtype=torch.float64)
    for _ in range(cycles):
        delta = ((~keep) * contrib).sum(1)
        grow_err = torch.where(~keep, (delta[:, None] - contrib).abs(), big)
        j = grow_err.argmin(1)
        after_grow = delta - contrib[rows, j]
        final = (after_grow[:, None] + contrib).abs()
        ok = keep & (final < delta.abs()[:, None] - 1e-15)
        ok[rows, j] = False
        score = torch.where(ok, wanda, big)
        k = score.argmin(1)
        swap = active & ok.any(1) & (~keep).any(1)
        if not swap.any():
            break
        r = rows[swap]
        keep[r, j[swap]] = True
        keep[r, k[swap]] = False
        active &= swap
    return keep


def repair(model: nn.Module, dense: dict[str, torch.Tensor], x: torch.Tensor, cycles: int = 50) -> dict[str, float]:
    """Repair every masked Linear weight of `model` in place (masks and weights); `dense` name -> the weights before
    pruning. Returns the mean |Δ| per layer after/before (below 1: the expected error shrank)."""
    masked = _masks(model)
    taken = record(model, x, lambda name, m: isinstance(m, nn.Linear) and f"{name}.weight" in masked,
                   lambda mod, inp, o: inp[0].detach())
    inputs = {f"{name}.weight": xin for name, xin in taken.items()}
    params, ratio = dict(model.named_parameters()), {}
    for k, xin in inputs.items():
        w, old = dense[k].to(xin.device), masked[k]
        new = repair_layer(w, old, xin, cycles)
        mu = xin.reshape(-1, xin.shape[-1]).double().mean(0)
        before = expected_error(w.double(), old, mu).abs().mean()
        after = expected_error(w.double(), new, mu).abs().mean()
        ratio[k] = float(after / before) if before > 0 else 1.0
        with torch.no_grad():
            params[k].copy_(torch.where(new & ~old, w.to(params[k].dtype), params[k].detach()))
        set_mask(model, k, new)
    return ratio
