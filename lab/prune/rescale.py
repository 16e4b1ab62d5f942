"""Pruning at initialization without losing the signal: rescalings of the kept weights by name, and the per-layer
activation variance to check them (after Hayou et al. 2021, "Robust Pruning at Initialization").

Pruning a fraction of each unit's incoming weights shrinks the variance of its pre-activation by about that
fraction, layer after layer, so a deep network pruned at init starts far from the edge of chaos. Two ways back,
both per output unit i of each pruned layer (a conv's output channel over in_channels × kernel):

- `norm`: the kept weights times sqrt(Σ_j w_ij² dense / Σ_j w_ij² kept): each unit's incoming squared norm as
  it was, so the pruned network has the dense one's variances (whatever its initialization);
- `eoc`, the paper's rescaling trick: the kept weights times ρ_i = 1 / sqrt(N_{l−1} mean_j(δ_ij W_ij²) / σ_w²),
  so Σ_j (ρ_i δ_ij W_ij)² = σ_w², the edge of chaos's σ_w² for the activation and the layer's σ_b (`eoc.py`:
  2 for ReLU). The pruned network is then initialized on the EOC, the variance flat through depth, even when
  the dense one was not (PyTorch's default init, σ_w² = 1/3). The authors' code (sAviOr287/imagenet_ICLR,
  pruner/SNIP.py) estimates the same ρ from each row's kept weights.
Rows left empty stay 0.
"""
from __future__ import annotations

import param
import torch
from torch import nn

from ..functional import record
from ..registry import Registry
from . import eoc
from .structured import as_rows

rescalings = Registry("rescaling")


def row_norms_sq(weight: torch.Tensor) -> torch.Tensor:
    """Σ_j w_ij² per output unit (conv: per output channel over in_channels × kernel)."""
    return as_rows(weight.detach()).pow(2).sum(1)


def rescale_rows(weight: torch.Tensor, target_sq: torch.Tensor | float) -> None:
    """In place: each row of the (pruned) weight scaled to the squared norm `target_sq` (per row, or one number)."""
    kept = row_norms_sq(weight)
    target = torch.as_tensor(target_sq, dtype=kept.dtype, device=kept.device)
    factor = torch.where(kept > 0, (target / kept.clamp_min(torch.finfo(kept.dtype).tiny)).sqrt(),
                         torch.ones_like(kept))
    with torch.no_grad():
        weight.mul_(factor.reshape(-1, *([1] * (weight.ndim - 1))))


@rescalings.register("norm")
def norm(model: nn.Module, weights: dict[str, nn.Parameter], dense_sq: dict[str, torch.Tensor]) -> None:
    """Each unit's kept weights back to its dense incoming squared norm (the dense network's variances)."""
    for k, w in weights.items():
        rescale_rows(w, dense_sq[k])


@rescalings.register(
    "eoc",
    activation=param.Selector(default="auto", objects=["auto", *eoc.ACTIVATIONS],
                              doc="the activation whose edge of chaos is the target (auto: the model's own)"),
    sigma_b=param.Number(None, bounds=(0, None), softbounds=(0, 1), allow_None=True,
                         doc="σ_b the EOC point is taken for (None: each layer's bias, its root mean square)"),
)
def edge_of_chaos(model: nn.Module, weights: dict[str, nn.Parameter], dense_sq=None, activation: str = "auto",
                  sigma_b: float | None = None) -> None:
    """Hayou et al.'s rescaling trick: each unit's kept weights scaled so Σ_j w_ij² = σ_w² on the edge of chaos."""
    act = eoc.model_activation(model) if activation == "auto" else activation
    for k, w in weights.items():
        module = model.get_submodule(k.rpartition(".")[0]) if "." in k else model
        sb = eoc.bias_sigma(module) if sigma_b is None else sigma_b
        rescale_rows(w, eoc.edge_of_chaos(act, round(sb, 6))[0])


def activation_variance(model: nn.Module, x: torch.Tensor) -> dict[str, float]:
    """Variance of each Linear/Conv layer's output (its pre-activation) on the batch x, in eval mode, by layer name."""
    return record(model, x, lambda _, m: isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)),
                  lambda mod, inp, o: float(o.detach().var()))
