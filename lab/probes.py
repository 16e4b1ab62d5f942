"""Probes: measurements taken every k steps that add columns to the run's history.

A probe's `measure(run)` runs on the training thread right after an optimizer step whose number
is a multiple of `every`, and returns a dict: scalars become columns of that step's row, other
values (arrays, dicts of arrays) become the newest snapshot under their key. `before(run)` runs
before that step's update, for probes that compare before and after. Curvature, spectrum and
sparsity probes plug in the same way.
"""
from __future__ import annotations

import copy
import math
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

if TYPE_CHECKING:
    from .run import Run


class Probe:
    """Base class: override `measure` (and `before` if the probe needs the weights before the step)."""

    name = "probe"

    def __init__(self, every: int = 10):
        if not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be a whole number of steps >= 1, got {every!r}")
        self.every = every

    def before(self, run: Run) -> None:
        """Called before the optimizer step on measuring steps."""

    def measure(self, run: Run) -> dict[str, Any]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(every={self.every})"


def _by_layer(run: Run, values: list[float], prefix: str) -> dict[str, float]:
    """Per-tensor norms (aligned with run.params) combined into per-layer norms."""
    out, i = {}, 0
    for layer, params in run.layers.items():
        out[f"{prefix}/{layer}"] = math.sqrt(math.fsum(v * v for v in values[i : i + len(params)]))
        i += len(params)
    return out


def _grad_norms(run: Run) -> list[torch.Tensor]:
    """Per-tensor gradient norms, aligned with run.params (0 for a parameter without a gradient)."""
    return torch._foreach_norm([p.grad if p.grad is not None else torch.zeros_like(p) for p in run.params])


class GradNorm(Probe):
    """Per-layer gradient norm, in columns `grad_norm/<layer>` (the global norm is logged every step)."""

    name = "grad_norm"

    def measure(self, run: Run) -> dict[str, float]:
        norms = _grad_norms(run)
        return _by_layer(run, torch.stack(norms).tolist(), "grad_norm")


class _StepSize(Probe):
    """Per-layer ||w_after - w_before|| of one step divided by a per-layer scale: the weights before
    the step (UpdateRatio) or the gradient (EffectiveStep). Measured on the weights themselves, so
    it is right for any optimizer."""

    def before(self, run: Run) -> None:
        self._before = [p.detach().clone() for p in run.params]

    def scale(self, run: Run) -> list[torch.Tensor]:
        raise NotImplementedError

    def measure(self, run: Run) -> dict[str, float]:
        # foreach ops: one dispatch for all tensors instead of one per tensor (3x faster here)
        delta = torch._foreach_norm(torch._foreach_sub([p.detach() for p in run.params], self._before))
        base = self.scale(run)
        num = _by_layer(run, torch.stack(delta).tolist(), self.name)
        den = _by_layer(run, torch.stack(base).tolist(), self.name)
        self._before = []
        return self.divide(num, den)

    @staticmethod
    def divide(num: dict[str, float], den: dict[str, float]) -> dict[str, float]:
        raise NotImplementedError


class UpdateRatio(_StepSize):
    """Per-layer ||w_after - w_before|| / ||w_before|| of one step, in columns `update_ratio/<layer>`
    (a rule of thumb puts healthy values near 1e-3)."""

    name = "update_ratio"

    def scale(self, run: Run) -> list[torch.Tensor]:
        return torch._foreach_norm(self._before)

    @staticmethod
    def divide(num, den):
        return {k: num[k] / max(den[k], 1e-12) for k in num}


class DecisionBoundary(Probe):
    """The model's class-1 probability (or predicted class, for more than two) on a grid over 2-D data.

    The snapshot `boundary` holds `x`, `y` (grid coordinates) and `z` (shape (len(y), len(x))).
    """

    name = "boundary"

    def __init__(self, every: int = 10, resolution: int = 60, margin: float = 0.25):
        super().__init__(every)
        if resolution < 2:
            raise ValueError(f"resolution must be >= 2, got {resolution}")
        self.resolution, self.margin = resolution, margin
        self._grid = None

    def _setup(self, run: Run) -> None:
        X = run.data.X.detach().cpu().numpy()
        lo, hi = X.min(0), X.max(0)
        pad = self.margin * (hi - lo)
        self.x = np.linspace(lo[0] - pad[0], hi[0] + pad[0], self.resolution)
        self.y = np.linspace(lo[1] - pad[1], hi[1] + pad[1], self.resolution)
        gx, gy = np.meshgrid(self.x, self.y)  # (ny, nx) each
        self._grid = torch.tensor(np.stack([gx.ravel(), gy.ravel()], 1), dtype=torch.float32, device=run.device)

    def blank(self, run: Run) -> dict[str, np.ndarray]:
        """The grid with no prediction yet (z = 0.5), for a plot drawn before the first measurement."""
        if self._grid is None:
            self._setup(run)
        return {"x": self.x, "y": self.y, "z": np.full((len(self.y), len(self.x)), 0.5)}

    def measure(self, run: Run) -> dict[str, Any]:
        if not run.data.is_2d:
            return {}
        if self._grid is None:
            self._setup(run)
        was_training = run.model.training
        run.model.eval()
        try:
            with torch.no_grad():
                out = run.model(self._grid)
        finally:
            run.model.train(was_training)
        z = out.softmax(1)[:, 1] if out.shape[1] == 2 else out.argmax(1).float()
        z = z.reshape(len(self.y), len(self.x)).cpu().numpy()
        return {"boundary": {"x": self.x, "y": self.y, "z": z}}


def default_probes(run: Run) -> list[Probe]:
    probes: list[Probe] = [GradNorm(10), UpdateRatio(25)]  # Δw/w drifts slowly: every 25 steps is plenty
    if run.data.is_2d and run.data.task == "classification":
        probes.append(DecisionBoundary(10))
    return probes


# ---- optimizer internals (the optimizer lab) ---------------------------------------------------
class EffectiveStep(_StepSize):
    """Per-layer effective step size ||Δw|| / ||g|| of one step, in columns `effective_lr/<layer>`.

    The lr that plain gradient descent would need to move the layer as far as the optimizer did:
    exactly the lr for SGD without momentum or decay; momentum, Adam's 1/sqrt(v), weight decay and
    the schedule all show in it.
    """

    name = "effective_lr"

    def scale(self, run: Run) -> list[torch.Tensor]:
        return _grad_norms(run)

    @staticmethod
    def divide(num, den):
        return {k: num[k] / den[k] for k in num if den[k] > 0}  # a layer with no gradient has no step size


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
    x = x.double()
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
