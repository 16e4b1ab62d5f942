"""Finite-width fluctuations at initialization: how much one network differs from the next.

At infinite width, a network's pre-activation statistics and its neural tangent kernel (NTK) are
deterministic; at finite width they vary from seed to seed, and how much depends on depth and on the
weights' distribution. With Gaussian weights each layer multiplies a squared norm by an independent
χ²-like factor, so the across-seed relative variance adds up layer after layer (≈ depth/width, Hanin &
Nica 2019); orthogonal weights preserve norms exactly, so for linear networks it does not grow at all
and for smooth activations it stays far lower (Saxe et al. 2014; Pennington et al. 2017).

Both measures build each seed's network from the model registry (the same configuration, seed apart).
The empirical NTK is computed on a subsample: `m` points (the full kernel of 256 points over a few
hundred thousand parameters takes over a minute on CPU).
"""
from __future__ import annotations

from typing import Any

import pandas as pd
import torch
from torch import nn
from torch.func import functional_call, jacrev, vmap

from ..data import Data
from ..jobs import Cancelled, Progress, as_progress


def _build(spec: tuple[str, dict[str, Any]], data: Data, seed: int) -> nn.Module:
    from ..models import models

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return models.build(spec[0], data, **spec[1]).double().eval()


def _inputs(data: Data, n: int) -> torch.Tensor:
    """n fixed training inputs on the CPU (these small models are built there), in float64 unless they are tokens."""
    x = data.fixed_sample(n)[0].cpu()
    return x.double() if x.is_floating_point() else x


def _preacts(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Every Linear/Conv layer's output on x, in order (the read-out included)."""
    out, hooks = [], [m.register_forward_hook(lambda mod, i, o: out.append(o.detach().flatten(1)))
                      for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return out


def _relative_variance(samples: torch.Tensor) -> float:
    """E‖s − E s‖² / ‖E s‖² over the first (seed) axis: the across-seed spread relative to the mean."""
    mean = samples.mean(0)
    return float((samples - mean).pow(2).sum(tuple(range(1, samples.ndim))).mean() / mean.pow(2).sum().clamp_min(1e-300))


def preactivation_fluctuations(spec: tuple[str, dict[str, Any]], data: Data, seeds: int = 8, n: int = 64,
                               progress: bool | Progress = False) -> pd.DataFrame:
    """Per layer: the across-seed relative variance of each example's mean squared pre-activation q = ‖z‖²/width,
    averaged over `n` fixed examples. A tidy frame: layer (1 = first), depth fraction, rel_var, q (the mean)."""
    x = _inputs(data, n)
    p = as_progress(progress, seeds, "pre-activations across seeds")
    per_seed = []
    for s in range(seeds):
        per_seed.append(torch.stack([z.pow(2).mean(1) for z in _preacts(_build(spec, data, s), x)]))  # (layers, n)
        p.update()
    q = torch.stack(per_seed)  # (seeds, layers, n)
    rows = [{"layer": i + 1, "rel_var": float((q[:, i].var(0, unbiased=True) / q[:, i].mean(0).pow(2)).mean()),
             "q": float(q[:, i].mean())} for i in range(q.shape[1])]
    return pd.DataFrame(rows)


def empirical_ntk(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Θ(x_i, x_j) = Σ_c ⟨∂f_c(x_i)/∂θ, ∂f_c(x_j)/∂θ⟩ / C over all parameters: an (m, m) matrix."""
    params = {k: v.detach() for k, v in model.named_parameters()}

    def f(p, xi):
        return functional_call(model, p, (xi.unsqueeze(0),)).squeeze(0)

    jac = vmap(jacrev(f), in_dims=(None, 0))(params, x)  # each (m, C, *shape)
    flat = torch.cat([j.flatten(2) for j in jac.values()], 2)  # (m, C, P)
    return torch.einsum("icp,jcp->ij", flat, flat) / flat.shape[1]


def ntk_fluctuations(spec: tuple[str, dict[str, Any]], data: Data, seeds: int = 8, m: int = 16,
                     progress: bool | Progress = False) -> dict[str, float]:
    """The empirical NTK on `m` fixed examples for each seed: its across-seed relative variance
    E‖Θ − EΘ‖²_F / ‖EΘ‖²_F, and the mean kernel's trace / m (its scale)."""
    x = _inputs(data, m)
    p = as_progress(progress, seeds, "empirical NTK across seeds")
    kernels = []
    for s in range(seeds):
        kernels.append(empirical_ntk(_build(spec, data, s), x))
        p.update()
    k = torch.stack(kernels)
    return {"rel_var": _relative_variance(k), "scale": float(k.mean(0).diagonal().mean())}


def depth_study(model: str, data: Data, depths: list[int], inits: list[str] = ("kaiming", "orthogonal"),
                seeds: int = 8, m: int = 16, progress: bool | Progress = True, **options) -> pd.DataFrame:
    """For each initializer and depth: the NTK's relative variance and the last hidden layer's pre-activation
    relative variance across seeds. A tidy frame: init, depth, ntk_rel_var, preact_rel_var.

    A tqdm bar by default (it takes seconds: 14 s for the dashboard's four depths); cancelling `progress`
    stops it between two (init, depth) cells with Cancelled (a study missing some depths would mislead)."""
    p = as_progress(progress, len(depths) * len(inits), "fluctuations against depth")
    rows = []
    for init in inits:
        for depth in depths:
            if p.cancelled:
                p.close()
                raise Cancelled("the fluctuation study was cancelled")
            spec = (model, {**options, "depth": depth, "init": init})
            pre = preactivation_fluctuations(spec, data, seeds=seeds)
            rows.append({"init": init, "depth": depth, "ntk_rel_var": ntk_fluctuations(spec, data, seeds, m)["rel_var"],
                         "preact_rel_var": float(pre["rel_var"].iloc[-2] if len(pre) > 1 else pre["rel_var"].iloc[-1])})
            p.update()
    p.close()
    return pd.DataFrame(rows)
