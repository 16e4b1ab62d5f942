"""Gradient statistics from per-example gradients: the gradient noise scale and the gradient SNR.

Per-example gradients come from `torch.func`: `vmap` over `grad` of the loss of one example
(through `functional_call`), in chunks so memory stays at chunk x parameters. The model is
evaluated in eval mode (BatchNorm's running statistics: a per-example loss has no batch).

Definitions, for B per-example gradients g_i with mean ḡ:
- tr(Σ) estimate  S = 1/(B-1) Σ_i |g_i - ḡ|²   (unbiased for the trace of the per-example covariance)
- |G|² estimate   |ḡ|² - S/B                   (unbiased for the squared norm of the true gradient)
- noise_scale     B_simple = S / |G|²          (McCandlish, Kaplan, Amodei et al. 2018, "An
  empirical model of large-batch training": the batch size at which gradient noise and signal
  balance; a ratio of unbiased estimates, NaN when the |G|² estimate is not positive)
- grad_snr        the mean over parameters j of ḡ_j² / σ_j², σ_j² = 1/(B-1) Σ_i (g_ij - ḡ_j)²
  (the per-parameter gradient signal-to-noise ratio of Liu et al. 2020, "Understanding why neural
  networks generalize well through GSNR of parameters"), over the parameters with σ_j > 0; per
  layer in `grad_snr/<layer>`.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.func import grad, vmap
from trainlab.functional import Functional, eval_mode, trainable


def per_example_grads(model: nn.Module, loss_fn, X: torch.Tensor, y: torch.Tensor,
                      chunk: int = 64) -> dict[str, torch.Tensor]:
    """{parameter name: (B, *shape)} gradients of loss_fn on each example alone (a batch of one)."""
    f = Functional(model)
    if len(X) == 0:
        raise ValueError("no examples: per-example gradients need at least one")
    params = f.detached()

    def loss_one(ps, x, t):
        loss = loss_fn(f(ps, x.unsqueeze(0)), t.unsqueeze(0))
        if loss.numel() != 1:
            raise ValueError(f"loss_fn must return a scalar; it returned shape {tuple(loss.shape)}")
        return loss.reshape(())

    fn = vmap(grad(loss_one), in_dims=(None, 0, 0))
    with eval_mode(model):
        parts = [fn(params, X[i : i + chunk], y[i : i + chunk]) for i in range(0, len(X), chunk)]
    return {n: torch.cat([p[n] for p in parts]) for n in params}


def gradient_stats(model: nn.Module, loss_fn, X: torch.Tensor, y: torch.Tensor, layers: dict[str, list[str]] | None = None,
                   chunk: int = 64) -> dict[str, float]:
    """noise_scale, grad_snr (and grad_snr/<layer> for `layers`: {layer: [parameter names]}),
    trace_cov and grad_sq (the two estimates B_simple is the ratio of), from the B examples given."""
    B = len(X)
    if B < 2:
        raise ValueError(f"gradient statistics need at least 2 examples, got {B}")
    named = trainable(model)
    # running sums over chunks: memory stays at chunk x parameters
    total = {n: torch.zeros_like(p, dtype=torch.float64) for n, p in named}
    square = {n: torch.zeros_like(p, dtype=torch.float64) for n, p in named}
    for i in range(0, B, chunk):
        g = per_example_grads(model, loss_fn, X[i : i + chunk], y[i : i + chunk], chunk)
        for n in total:
            gi = g[n].to(torch.float64)
            total[n] += gi.sum(0)
            square[n] += gi.pow(2).sum(0)
    mean = {n: total[n] / B for n in total}
    var = {n: (square[n] - B * mean[n].pow(2)).clamp_min(0) / (B - 1) for n in total}  # per parameter, unbiased
    trace_cov = float(sum(v.sum() for v in var.values()))
    grad_sq = float(sum(m.pow(2).sum() for m in mean.values())) - trace_cov / B
    out = {"trace_cov": trace_cov, "grad_sq": grad_sq,
           "noise_scale": trace_cov / grad_sq if grad_sq > 0 else math.nan,
           "grad_snr": _snr([mean[n] for n in mean], [var[n] for n in var])}
    for layer, names in (layers or {}).items():
        out[f"grad_snr/{layer}"] = _snr([mean[n] for n in names], [var[n] for n in names])
    return out


def _snr(means: list[torch.Tensor], variances: list[torch.Tensor]) -> float:
    m = torch.cat([t.reshape(-1) for t in means])
    v = torch.cat([t.reshape(-1) for t in variances])
    ok = v > 0
    return float((m[ok].pow(2) / v[ok]).mean()) if bool(ok.any()) else math.nan


def noise_scale(model: nn.Module, loss_fn, data, chunk: int = 64) -> float:
    """B_simple = tr(Σ)/|G|² over the examples of `data` (an (X, y) pair), from unbiased estimates."""
    X, y = data
    return gradient_stats(model, loss_fn, X, y, chunk=chunk)["noise_scale"]


__all__ = ["gradient_stats", "noise_scale", "per_example_grads", "trainable"]
