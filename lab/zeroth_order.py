"""Zeroth-order SGD: a two-point (SPSA / MeZO) gradient estimate from two forward passes, no backward.

Spall 1992 (SPSA); Malladi et al. 2023, "Fine-Tuning Language Models with Just Forward Passes" (MeZO):
with z ~ N(0, I) drawn from a seeded generator,

    ĝ = (L(w + εz) − L(w − εz)) / (2ε) · z,     w ← w − lr · (ĝ + λ w).

E[ĝ] → ∇L as ε → 0 (E[z zᵀ] = I), so it is an unbiased-in-the-limit, high-variance gradient.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from pytorch_optimizer.base.optimizer import BaseOptimizer


def perturbation(params: list[torch.Tensor], seed: int, step: int) -> list[torch.Tensor]:
    """The step's direction z, one standard normal tensor per parameter, reproducible from (seed, step)."""
    gen = torch.Generator(device="cpu").manual_seed(seed * 1_000_003 + step)
    return [torch.randn(p.shape, generator=gen, dtype=p.dtype).to(p.device) for p in params]


@torch.no_grad()
def projected_gradient(loss: Callable[[], torch.Tensor], params: list[torch.Tensor], z: list[torch.Tensor],
                       eps: float) -> tuple[float, float, float]:
    """(ĝ·z-coefficient, L(w+εz), L(w−εz)): the directional derivative along z by central differences.

    The weights are restored exactly (from a copy) afterwards.
    """
    saved = [p.detach().clone() for p in params]
    torch._foreach_add_(params, z, alpha=eps)
    plus = float(loss())
    torch._foreach_add_(params, z, alpha=-2 * eps)
    minus = float(loss())
    for p, s in zip(params, saved):
        p.copy_(s)
    return (plus - minus) / (2 * eps), plus, minus


class ZerothOrderSGD(torch.optim.Optimizer):
    """Zeroth-order SGD (SPSA/MeZO two-point estimate): step(closure) where closure() only evaluates the loss.

    Args:
        lr: step size.
        eps: perturbation scale ε of the two evaluations w ± εz.
        weight_decay: L2 penalty added to the estimate.
        seed: seeds z; the same seed gives the same directions, step by step.
    """

    def __init__(self, params, lr: float = 1e-3, eps: float = 1e-3, weight_decay: float = 0.0, seed: int = 0):
        BaseOptimizer.validate_positive(lr, "lr")
        BaseOptimizer.validate_positive(eps, "eps")
        BaseOptimizer.validate_non_negative(weight_decay, "weight_decay")
        super().__init__(params, dict(lr=lr, eps=eps, weight_decay=weight_decay, seed=seed, step=0))

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None):
        if closure is None:
            raise ValueError("ZerothOrderSGD needs closure(): a function returning the loss on the current batch "
                             "(no backward is needed)")
        for group in self.param_groups:
            ps = [p for p in group["params"]]
            z = perturbation(ps, group["seed"], group["step"])
            coef, plus, minus = projected_gradient(closure, ps, z, group["eps"])
            group["step"] += 1
            group["last_estimate"] = coef
            group["estimate_norm"] = abs(coef) * math.sqrt(sum(float(v.square().sum()) for v in z))
            if not math.isfinite(coef):
                continue  # a non-finite loss: leave the weights; the run's divergence check sees the loss
            if group["weight_decay"]:
                torch._foreach_mul_(ps, 1 - group["lr"] * group["weight_decay"])
            torch._foreach_add_(ps, z, alpha=-group["lr"] * coef)
        return (plus + minus) / 2
