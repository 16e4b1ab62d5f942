"""Normalization, measured: the noise of BatchNorm's batch statistics, and the effective learning rate of
scale-invariant weights.

- `BatchStatNoise`: BatchNorm normalizes each example by statistics of the batch it came in, so a small
  batch adds noise to every activation (the micro-batch effect). Per BatchNorm layer, on `batches` fresh
  batches of the run's batch size B: the spread across batches of the per-channel batch mean (in units of
  the channel's standard deviation) and of the (biased) batch variance BatchNorm divides by (relative to the
  channel's variance). For independent Gaussian features they are 1/√B and √(2(B−1))/B: the columns
  `*_theory` draw those beside.
  GroupNorm, LayerNorm and RMSNorm see one example at a time and have no such noise.
- `EffectiveLR`: a weight followed by a normalization layer only matters through its direction, so its
  angular step is what trains: lr/‖w‖² under SGD (its gradient shrinks as 1/‖w‖, and the step is taken
  along it), lr/‖w‖ under Adam-like optimizers (whose step size does not follow the gradient's scale). As
  ‖w‖ grows, the effective lr decays without any schedule (van Laarhoven 2017; Hoffer et al. 2018).
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import nn

from .base import Columns, Probe
from .internals import ScaleInvariantNorm

if TYPE_CHECKING:
    from trainlab.run import Run

_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def batchnorm_layers(model: nn.Module) -> list[str]:
    """Names of the model's BatchNorm modules, in order."""
    return [n for n, m in model.named_modules() if isinstance(m, _BATCHNORMS)]


def _channel_stats(inp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and (biased) variance over every axis but the channel axis (1), as BatchNorm takes them."""
    dims = [0, *range(2, inp.ndim)]
    return inp.mean(dims), inp.var(dims, unbiased=False)


def batch_stat_noise(model: nn.Module, batches: list[torch.Tensor]) -> dict[str, tuple[float, float]]:
    """For each BatchNorm layer: (spread of the batch mean / channel std, spread of the batch variance /
    channel variance), averaged over channels, across the given batches (each a model input).

    The inputs reaching each layer are recorded in eval mode (the layers before it normalize with their
    running statistics, so the noise measured is the layer's own, not compounded)."""
    names = batchnorm_layers(model)
    means: dict[str, list] = {n: [] for n in names}
    variances: dict[str, list] = {n: [] for n in names}
    pooled: dict[str, list] = {n: [] for n in names}
    modules = dict(model.named_modules())
    handles = []
    for n in names:
        def hook(mod, inp, out, n=n):
            x = inp[0].detach().double()
            m, v = _channel_stats(x)
            means[n].append(m)
            variances[n].append(v)
            pooled[n].append(x.transpose(0, 1).reshape(x.shape[1], -1))
        handles.append(modules[n].register_forward_hook(hook))
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            for xb in batches:
                model(xb)
    finally:
        model.train(was)
        for h in handles:
            h.remove()
    out = {}
    for n in names:
        everything = torch.cat(pooled[n], 1)  # all batches together: the channel's own mean and variance
        var = everything.var(1, unbiased=False).clamp_min(1e-30)
        m, v = torch.stack(means[n]), torch.stack(variances[n])
        out[n] = (float((m.std(0) / var.sqrt()).mean()), float((v.std(0) / var).mean()))
    return out


class BatchStatNoise(Probe):
    """Columns `bn_mean_noise/<layer>` and `bn_var_noise/<layer>` for each BatchNorm layer, with
    `bn_mean_noise_theory` = 1/√B and `bn_var_noise_theory` = √(2(B−1))/B for the run's batch size B now.
    Measured on `batches` batches drawn with the probe's own generator (the run's sampling is untouched)."""

    name = "bn_noise"

    def __init__(self, every: int = 50, batches: int = 8, seed: int = 0):
        super().__init__(every)
        if batches < 2:
            raise ValueError(f"batches must be >= 2 (a spread needs two), got {batches}")
        self.batches, self.generator = batches, torch.Generator().manual_seed(seed)

    def columns(self, run: Run) -> Columns:
        layers = batchnorm_layers(run.model)
        cols = {f"bn_mean_noise/{n}": n for n in layers} | {f"bn_var_noise/{n}": f"{n} (variance)" for n in layers}
        if layers:
            cols |= {"bn_mean_noise_theory": "1/√B", "bn_var_noise_theory": "√(2(B−1))/B"}
        return Columns(cols)

    def measure(self, run: Run) -> dict[str, float]:
        if not batchnorm_layers(run.model):
            return {}
        b = max(2, min(int(run.batch_size), run.data.n_examples))
        xs = [run.data.random_sample(b, self.generator, run.device)[0] for _ in range(self.batches)]
        out = {}
        for n, (mean_noise, var_noise) in batch_stat_noise(run.model, xs).items():
            out[f"bn_mean_noise/{n}"], out[f"bn_var_noise/{n}"] = mean_noise, var_noise
        out["bn_mean_noise_theory"], out["bn_var_noise_theory"] = 1 / math.sqrt(b), math.sqrt(2 * (b - 1)) / b
        return out


def adam_like(optimizer: torch.optim.Optimizer) -> bool:
    """True when the optimizer keeps a second-moment estimate (its steps do not scale with the gradient)."""
    return any(k in s for s in optimizer.state.values() for k in ("exp_avg_sq", "square_avg", "exp_avg_sq_row"))


class EffectiveLR(ScaleInvariantNorm):
    """Columns `effective_lr/<layer>` for each scale-invariant layer: lr/‖w‖² (SGD-like) or lr/‖w‖ (Adam-like),
    with the lr the last step used (schedules included)."""

    name = "effective_lr"

    def columns(self, run: Run) -> Columns:
        return Columns({f"effective_lr/{n}": n for n in self.layers(run)})

    def measure(self, run: Run) -> dict[str, float]:
        power = 1 if adam_like(run.torch_optimizer) else 2
        norms = super().measure(run)
        return {f"effective_lr/{k.split('/', 1)[1]}": run.current_lr / max(v, 1e-30) ** power for k, v in norms.items()}
