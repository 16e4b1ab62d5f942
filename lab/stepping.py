"""One optimizer step, in two halves, by how the optimizer steps: plain, closure, second-order, zeroth-order.

`gradients(run, xb, yb)` computes this batch's loss, output and global gradient norm (as tensors:
the run reads them in one device sync); the run checks them for divergence before anything moves.
`update(run, xb, yb)` then steps the optimizer (adding annealed gradient noise where the kind has
gradients) and returns the gradient norm to log when the kind measures its own (zeroth order's
two-point estimate), else None. A pruned run (`run.pruning_state`, `trainlab.prune.runtime`) has its
gradients masked right before the optimizer step and its weights right after it, in every kind
(zeroth order has no gradient: only its weights).
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable

import torch
from torch import nn

if TYPE_CHECKING:
    from .run import Run


class FlatGrads:
    """One zeroed buffer holding every gradient, each .grad a view into it.

    The divergence check needs the global gradient norm at every step; over one buffer it is one
    kernel instead of one per tensor plus a stack (measured: about 4% of a digits MLP step saved).
    This is torch's zero_grad(set_to_none=False) mode: backward accumulates into the views in
    place, and a parameter that gets no gradient in a step sees zeros, not None. Parameters of mixed
    dtype or device keep torch's usual separate gradients (`flat` is None).
    """

    def __init__(self, params: list[nn.Parameter]):
        self.params = params
        self.flat: torch.Tensor | None = None
        self.views: list[torch.Tensor] = []
        self.rebuild()

    def rebuild(self) -> None:
        params = self.params
        if not params or len({(p.dtype, p.device) for p in params}) != 1:
            self.flat, self.views = None, []
            return
        self.flat = torch.zeros(sum(p.numel() for p in params), dtype=params[0].dtype, device=params[0].device)
        self.views, offset = [], 0
        for p in params:
            p.grad = self.flat[offset : offset + p.numel()].view_as(p)
            self.views.append(p.grad)
            offset += p.numel()

    @property
    def intact(self) -> bool:
        """Every .grad is still its view (a create_graph backward or the user may have replaced them)."""
        return self.flat is not None and all(p.grad is v for p, v in zip(self.params, self.views))

    def zero(self, optimizer: torch.optim.Optimizer) -> torch.Tensor | None:
        """Zero the gradients; the flat buffer if it is intact, else None (zeroed per tensor this step)."""
        if self.intact:
            self.flat.zero_()
            return self.flat
        optimizer.zero_grad(set_to_none=True)
        return None

    def tensors(self) -> list[torch.Tensor]:
        """The gradient storage: the one buffer, or each parameter's own .grad."""
        return [self.flat] if self.intact else [p.grad for p in self.params if p.grad is not None]

    def norm(self, flat: torch.Tensor | None, loss: torch.Tensor) -> torch.Tensor:
        """The global gradient norm as a tensor (0, on the loss's device, when no parameter got a gradient)."""
        if flat is not None:
            return torch.linalg.vector_norm(flat)
        # torch._foreach_norm is what clip_grad_norm_ uses: one call for all tensors
        grads = [p.grad.detach() for p in self.params if p.grad is not None]
        return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads))) if grads else loss.detach() * 0


class AnnealedNoise:
    """Neelakantan et al. 2015: g += N(0, σ²), σ² = η / (1 + t)^γ, t the steps taken, from its own seeded generator."""

    def __init__(self, seed: int, device: torch.device):
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self.eta, self.gamma = 0.0, 0.55

    def add(self, grads: FlatGrads, steps: int) -> None:
        if self.eta <= 0:
            return
        std = math.sqrt(self.eta / (1 + steps) ** self.gamma)
        for g in grads.tensors():
            g.add_(torch.randn(g.shape, generator=self.generator, device=g.device, dtype=g.dtype), alpha=std)


class Plain:
    """backward(), then optimizer.step()."""

    def gradients(self, run: Run, xb: torch.Tensor, yb: torch.Tensor):
        flat = run.grads.zero(run.torch_optimizer)
        out = run.model(xb)
        loss = run.loss_fn(out, yb)
        loss.backward()
        return loss, out, run.grads.norm(flat, loss)

    def update(self, run: Run, xb: torch.Tensor, yb: torch.Tensor) -> float | None:
        if run.noise.eta > 0:
            run.noise.add(run.grads, run.steps)
        pruning = run.pruning_state
        if pruning is None:
            run.torch_optimizer.step()
            return None
        pruning.grads(run)
        run.torch_optimizer.step()
        pruning.weights()
        return None


class Closure(Plain):
    """step(closure): the closure recomputes loss and gradients on the same batch (LBFGS, AliG, bSAM)."""

    def update(self, run: Run, xb: torch.Tensor, yb: torch.Tensor) -> float | None:
        run.noise.add(run.grads, run.steps)

        def closure() -> torch.Tensor:
            with torch.enable_grad():
                run.grads.zero(run.torch_optimizer)
                loss = run.loss_fn(run.model(xb), yb)
                loss.backward()
            run.noise.add(run.grads, run.steps)
            if pruning is not None:
                pruning.grads(run)
            return loss

        pruning = run.pruning_state
        if pruning is not None:
            pruning.grads(run)
        run.torch_optimizer.step(closure)
        if pruning is not None:
            pruning.weights()
        return None


class SecondOrder:
    """Differentiable gradients (create_graph) for Hutchinson's Hessian-vector products (AdaHessian, SophiaH)."""

    def gradients(self, run: Run, xb: torch.Tensor, yb: torch.Tensor):
        run.grads.zero(run.torch_optimizer)
        out = run.model(xb)
        loss = run.loss_fn(out, yb)
        grads = torch.autograd.grad(loss, run.params, create_graph=True, allow_unused=True)
        for p, g in zip(run.params, grads):
            p.grad = torch.zeros_like(p) if g is None else g
        return loss, out, run.grads.norm(None, loss)

    def update(self, run: Run, xb: torch.Tensor, yb: torch.Tensor) -> float | None:
        run.noise.add(run.grads, run.steps)
        pruning = run.pruning_state
        if pruning is not None:
            pruning.grads_graph(run)
        run.torch_optimizer.step()
        if pruning is not None:
            pruning.weights()
        for p in run.params:  # drop the graph the gradients hold (and let model_copy deep-copy them)
            if p.grad is not None:
                p.grad = p.grad.detach()
        return None


class ZerothOrder:
    """No backward: the optimizer makes its own two forward passes; the run's forward is for the log."""

    def gradients(self, run: Run, xb: torch.Tensor, yb: torch.Tensor):
        with torch.no_grad():
            out = run.model(xb)
            loss = run.loss_fn(out, yb)
        return loss, out, loss.detach() * 0

    def update(self, run: Run, xb: torch.Tensor, yb: torch.Tensor) -> float | None:
        closure: Callable[[], torch.Tensor] = lambda: run.loss_fn(run.model(xb), yb)  # noqa: E731
        run.torch_optimizer.step(closure)
        if run.pruning_state is not None:
            run.pruning_state.weights()
        # the norm of the two-point estimate ĝ
        return math.sqrt(sum(g.get("estimate_norm", 0.0) ** 2 for g in run.torch_optimizer.param_groups))


KINDS = {"plain": Plain(), "closure": Closure(), "second_order": SecondOrder(), "zeroth_order": ZerothOrder()}
