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


class AdaptiveBatch:
    """The run's step hook for the adaptive batch size: every `every` steps, the variance test on this
    batch's per-example gradients (after the backward pass, before the update); when it fails, the run's
    own `batch_size` grows to what the test asks for (capped), so the history and the dashboard follow.

    Adds `batch_size` to every row and `batch_test` (the ratio; <= 1 passes) to the tested ones.
    """

    def __init__(self, kind: str, every: int, eta: float, cap: int):
        if kind not in ("norm", "inner_product"):
            raise ValueError(f"adaptive_batch must be 'norm' or 'inner_product', got {kind!r}")
        self.kind, self.every, self.eta, self.cap = kind, every, eta, cap

    def __call__(self, run, xb: torch.Tensor, yb: torch.Tensor, step: int) -> dict[str, float]:
        row = {"batch_size": len(yb)}
        if step % self.every:
            return row
        G = per_example_grads(run.model, run.loss_fn, xb, yb)
        result = norm_test(G, self.eta) if self.kind == "norm" else inner_product_test(G, self.eta, self.eta)
        new = next_batch_size(result, run.batch_size, self.cap)
        if new > run.batch_size:
            run.note(f"batch size {run.batch_size} -> {new} ({self.kind} test failed: ratio {result['ratio']:.3g} > 1)")
            run.set(batch_size=new)
        row["batch_test"] = result["ratio"]
        return row
