"""What one step did, per layer: the gradient norm, the update relative to the weights, the effective step size."""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from .base import Columns, Probe, by_layer, grad_norms, layer_columns

if TYPE_CHECKING:
    from trainlab.run import Run


class GradNorm(Probe):
    """Per-layer gradient norm, in columns `grad_norm/<layer>` (the global norm is logged every step)."""

    name = "grad_norm"

    def measure(self, run: Run) -> dict[str, float]:
        return by_layer(run, torch.stack(grad_norms(run)).tolist(), "grad_norm")

    def columns(self, run: Run) -> Columns:
        return Columns(layer_columns(run, self.name))


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
        num = by_layer(run, torch.stack(delta).tolist(), self.name)
        den = by_layer(run, torch.stack(base).tolist(), self.name)
        self._before = []
        return self.divide(num, den)

    def columns(self, run: Run) -> Columns:
        return Columns(layer_columns(run, self.name))

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


class EffectiveStep(_StepSize):
    """Per-layer effective step size ||Δw|| / ||g|| of one step, in columns `effective_lr/<layer>`.

    The lr that plain gradient descent would need to move the layer as far as the optimizer did:
    exactly the lr for SGD without momentum or decay; momentum, Adam's 1/sqrt(v), weight decay and
    the schedule all show in it.
    """

    name = "effective_lr"

    def scale(self, run: Run) -> list[torch.Tensor]:
        return grad_norms(run)

    @staticmethod
    def divide(num, den):
        return {k: num[k] / den[k] for k in num if den[k] > 0}  # a layer with no gradient has no step size


class DeadUnits(Probe):
    """The fraction of each ReLU layer's units that are zero for every example of the step's batch, in
    columns `dead_units/<layer>`: units that have died (a large lr pushed their inputs below zero for
    good) get no gradient and never come back. Measured on the step's own forward pass (hooks on the
    measuring steps only), so it costs no extra forward."""

    name = "dead_units"

    def __init__(self, every: int = 50):
        super().__init__(every)
        self._seen: dict[str, torch.Tensor] = {}
        self._hooks: list = []

    @staticmethod
    def units(run: Run) -> dict[str, nn.Module]:
        return {n: m for n, m in run.model.named_modules() if isinstance(m, (nn.ReLU, nn.ReLU6))}

    def columns(self, run: Run) -> Columns:
        return Columns(layer_columns(run, self.name, self.units(run)))

    def before(self, run: Run) -> None:
        self._seen = {}

        def hook(name):
            def record(module, args, out):
                if torch.is_tensor(out) and out.ndim >= 2:
                    alive = (out.detach() > 0).flatten(2).any(-1) if out.ndim > 2 else out.detach() > 0
                    self._seen[name] = alive.any(0)  # a unit (or channel) active for some example
            return record

        self._hooks = [m.register_forward_hook(hook(n)) for n, m in self.units(run).items()]

    def measure(self, run: Run) -> dict[str, float]:
        for h in self._hooks:
            h.remove()
        self._hooks = []
        return {f"{self.name}/{n}": 1.0 - float(a.float().mean()) for n, a in self._seen.items()}
