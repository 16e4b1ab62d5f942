"""The optimizer's internals (the optimizer lab): norms of scale-invariant weights and Adam's second moments."""
from __future__ import annotations

import copy
import math
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from .base import Columns, Probe, layer_columns

if TYPE_CHECKING:
    from trainlab.run import Run


_NORMS = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm,
          *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()))
_AFFINE = (nn.Linear, nn.modules.conv._ConvNd)
# parameter-free and positively homogeneous (m(c x) = c m(x) for c > 0): scale invariance passes through them
_HOMOGENEOUS = (nn.Identity, nn.Dropout, nn.ReLU, nn.LeakyReLU, nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d,
                nn.AvgPool2d, nn.Flatten, nn.Unflatten)


def scale_invariant_layers(model: nn.Module, x: torch.Tensor) -> list[str]:
    """Names of the Linear/Conv layers whose output goes straight into a normalization layer.

    Candidates come from tracing one forward pass: a layer whose next parameterized or
    non-homogeneous module call is a BatchNorm, LayerNorm, GroupNorm, InstanceNorm or RMSNorm.
    A trace cannot see functional operations between modules (a tanh, a residual sum), so each
    candidate is then confirmed on a copy in training mode: scaling its weight and bias by 2 must
    leave the model's output on `x` (a few examples) unchanged. Such weights get gradients
    orthogonal to them, so their norm only grows under SGD or Adam without decay.
    """
    order: list[nn.Module] = []
    twin = copy.deepcopy(model).double()  # float64 and a tiny eps: invariance holds to rounding
    x = x.double() if x.is_floating_point() else x  # token ids stay integers
    for m in twin.modules():
        if isinstance(m, _NORMS):
            m.eps = 1e-12
    hooks = [m.register_forward_hook(lambda m, i, o: order.append(m)) for m in twin.modules() if not list(m.children())]
    twin.train()  # BatchNorm normalizes by the batch only in training mode; the copy's statistics may move
    try:
        with torch.no_grad():
            ref = twin(x)
    finally:
        for h in hooks:
            h.remove()
    names = {m: n for n, m in twin.named_modules()}
    candidates, last = [], None
    for m in order:
        if isinstance(m, _NORMS) and last is not None:
            candidates.append(names[last])
        if isinstance(m, _HOMOGENEOUS):
            continue
        last = m if isinstance(m, _AFFINE) else None
    modules = dict(twin.named_modules())
    found = []
    with torch.no_grad():
        for name in dict.fromkeys(candidates):
            params = list(modules[name].parameters(recurse=False))
            torch._foreach_mul_(params, 2.0)
            out = twin(x)
            torch._foreach_div_(params, 2.0)
            if torch.allclose(out, ref, rtol=1e-6, atol=1e-9 * float(ref.abs().max())):
                found.append(name)
    return found


class ScaleInvariantNorm(Probe):
    """Norm of each scale-invariant layer's weight and bias together, in `scale_invariant_norm/<layer>`.

    For weights feeding a normalization layer (see `scale_invariant_layers`) the gradient is
    orthogonal to the weights, so a plain SGD step grows the norm: ||w + Δw||² = ||w||² + ||Δw||².
    A growing norm shrinks the effective step (the AdamP effect, Heo et al. 2021); weight decay
    or AdamP's projection holds it back.
    """

    name = "scale_invariant_norm"

    def __init__(self, every: int = 10):
        super().__init__(every)
        self._layers: list[str] | None = None

    def layers(self, run: Run) -> list[str]:
        """The run's scale-invariant layers (traced once, on a copy when asked from another thread)."""
        if self._layers is None:
            self._layers = scale_invariant_layers(run.model_copy(), run.data.sample(16)[0].to(run.device))
        return self._layers

    def columns(self, run: Run) -> Columns:
        return Columns(layer_columns(run, self.name, self.layers(run)))

    def measure(self, run: Run) -> dict[str, float]:
        out = {}
        for layer in self.layers(run):
            ps = run.layers[layer]
            out[f"scale_invariant_norm/{layer}"] = math.sqrt(math.fsum(float(p.detach().double().pow(2).sum()) for p in ps))
        return out


def second_moments(run: Run) -> dict[str, torch.Tensor]:
    """Per layer, the optimizer's second-moment estimate of every weight, bias-corrected where it can be.

    Adam's family keeps `exp_avg_sq` (v̂ = v / (1 - beta2^t) with the group's betas and the
    parameter's step count); RMSprop keeps `square_avg` (no bias correction). Empty for optimizers
    without one (SGD, Lion).
    """
    opt = run.torch_optimizer
    beta2 = {id(p): g["betas"][1] for g in opt.param_groups if "betas" in g for p in g["params"]}
    out = {}
    for layer, params in run.layers.items():
        parts = []
        for p in params:
            state = opt.state.get(p, {})
            v = state.get("exp_avg_sq", state.get("square_avg"))
            if not torch.is_tensor(v) or v.shape != p.shape:
                continue  # factored (Adafactor) or absent: not an element-wise second moment
            v = v.detach().double().flatten()
            step = state.get("step")
            if "exp_avg_sq" in state and step is not None and id(p) in beta2:
                v = v / (1 - beta2[id(p)] ** float(step))
            parts.append(v)
        if parts:
            out[layer] = torch.cat(parts)
    return out


class SecondMoment(Probe):
    """The distribution of the second-moment estimate v̂ (Adam's family), per layer.

    Columns `second_moment/<layer>`: the median of v̂ over the layer's weights (torch.median: the
    lower middle value for an even count). Snapshot
    `second_moment`: a histogram of log10 v̂ per layer over shared bin edges, as
    {"edges": (bins+1,), "counts": {layer: (bins,)}, "zeros": {layer: count of v̂ = 0}}.
    Adam's per-weight step is about lr / sqrt(v̂): the spread of log10 v̂ is the spread of steps.
    """

    name = "second_moment"

    def __init__(self, every: int = 50, bins: int = 40):
        super().__init__(every)
        if bins < 2:
            raise ValueError(f"bins must be >= 2, got {bins}")
        self.bins = bins

    def columns(self, run: Run) -> Columns:
        return Columns(layer_columns(run, self.name), snapshots=(self.name,))

    def measure(self, run: Run) -> dict[str, Any]:
        moments = second_moments(run)
        if not moments:
            return {}
        out: dict[str, Any] = {f"second_moment/{k}": float(v.median()) for k, v in moments.items()}
        logs = {k: torch.log10(v[v > 0]) for k, v in moments.items()}
        nonempty = [t for t in logs.values() if t.numel()]
        if nonempty:
            lo = min(float(t.min()) for t in nonempty)
            hi = max(float(t.max()) for t in nonempty)
            hi = hi if hi > lo else lo + 1.0
            edges = np.linspace(lo, hi, self.bins + 1)
            counts = {k: np.histogram(t.cpu().numpy(), bins=edges)[0] for k, t in logs.items()}
            zeros = {k: int((v == 0).sum()) for k, v in moments.items()}
            out["second_moment"] = {"edges": edges, "counts": counts, "zeros": zeros}
        return out
