"""AdAdaGrad's adaptive batch size: AdaGrad(-Norm) steps, and a gradient-variance test that grows the batch.

Lau, Liu, Kolar 2024, "AdAdaGrad: Adaptive Batch Size Schemes for Adaptive Gradient Methods", after
Byrd et al. 2012 (norm test) and Bollapragada, Byrd, Nocedal 2018 (augmented inner-product test).
With per-example gradients g_i (i in the batch B) and their mean g:

- norm test:    Σ_i ‖g_i − g‖² / (|B|−1) / |B|  ≤  η² ‖g‖²;
                on failure the batch becomes  ⌈Σ_i ‖g_i − g‖² / (|B|−1) / (η² ‖g‖²)⌉.
- inner-product test (augmented):  Var_i(⟨g_i, g⟩) / |B| ≤ θ² ‖g‖⁴  and
                Σ_i ‖g_i − (⟨g_i,g⟩/‖g‖²) g‖² / (|B|−1) / |B| ≤ ν² ‖g‖²;
                on failure the batch becomes the larger of the two sizes that would pass.

A ratio (left side over right side) ≤ 1 passes. The Run applies the test every k steps and moves
its own `batch_size` setting, so the history and the dashboard's slider show the growth.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .analysis import gradients


def per_example_grads(model: nn.Module, loss_fn, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(B, P): each example's gradient, flattened; computed by trainlab.analysis.gradients (eval mode:
    BatchNorm cannot normalize a batch of one)."""
    g = gradients.per_example_grads(model, loss_fn, X, y)
    return torch.cat([v.reshape(len(X), -1) for v in g.values()], dim=1)


def norm_test(G: torch.Tensor, eta: float) -> dict[str, float]:
    """Byrd et al.'s norm test on per-example gradients G (B, P): ratio (≤ 1 passes) and the batch size it asks for."""
    B = G.shape[0]
    g = G.mean(0)
    var = float(((G - g) ** 2).sum() / (B - 1))  # trace of the sample covariance
    gg = float(g @ g)
    need = var / (eta**2 * gg) if gg > 0 else math.inf
    return {"ratio": need / B, "batch_size": need}


def inner_product_test(G: torch.Tensor, theta: float, nu: float) -> dict[str, float]:
    """Bollapragada et al.'s augmented inner-product test: inner-product and orthogonality parts."""
    B = G.shape[0]
    g = G.mean(0)
    gg = float(g @ g)
    if gg == 0:
        return {"ratio": math.inf, "batch_size": math.inf}
    ip = G @ g  # (B,): its mean is ‖g‖²
    var_ip = float(((ip - gg) ** 2).sum() / (B - 1))
    orth = G - (ip / gg)[:, None] * g
    var_orth = float((orth**2).sum() / (B - 1))
    need = max(var_ip / (theta**2 * gg**2), var_orth / (nu**2 * gg))
    return {"ratio": need / B, "batch_size": need}


def next_batch_size(result: dict[str, float], current: int, cap: int) -> int:
    """The batch size after a test: grown to what the test asks for (capped) if it failed, else unchanged."""
    if result["ratio"] <= 1:
        return current
    need = result["batch_size"]
    return int(min(cap, math.ceil(need))) if math.isfinite(need) else cap


class AdaGradNorm(torch.optim.Optimizer):
    """AdaGrad-Norm (Ward, Wu, Bottou 2019): one step size for all weights, b² += ‖g‖², w ← w − lr/b · g.

    Args:
        lr: η, the step size's numerator.
        b0: initial accumulator b₀ > 0.
        weight_decay: L2 penalty added to the gradient.
    """

    def __init__(self, params, lr: float = 0.1, b0: float = 1e-2, weight_decay: float = 0.0):
        if not lr > 0:
            raise ValueError(f"Invalid learning rate: {lr}")
        if not b0 > 0:
            raise ValueError(f"Invalid b0: {b0} (must be > 0)")
        if weight_decay < 0:
            raise ValueError(f"Invalid weight_decay: {weight_decay}")
        super().__init__(params, dict(lr=lr, b0=b0, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            ps = [p for p in group["params"] if p.grad is not None]
            if not ps:
                continue
            grads = [p.grad + group["weight_decay"] * p if group["weight_decay"] else p.grad for p in ps]
            sq = torch.stack(torch._foreach_norm(grads)).square().sum()
            state = self.state[ps[0]]  # one accumulator per group, kept with its first tensor (saved in state_dict)
            if "b2" not in state:
                state["b2"] = torch.tensor(group["b0"] ** 2, dtype=sq.dtype, device=sq.device)
            state["b2"].add_(sq)
            torch._foreach_add_(ps, torch._foreach_div(grads, state["b2"].sqrt()), alpha=-group["lr"])
        return loss
