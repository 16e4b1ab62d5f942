"""AdaGrad-Norm (Ward, Wu & Bottou 2019), the optimizer AdAdaGrad's adaptive batch size pairs with."""
from __future__ import annotations

import torch
from pytorch_optimizer.base.optimizer import BaseOptimizer


class AdaGradNorm(torch.optim.Optimizer):
    """AdaGrad-Norm (Ward, Wu, Bottou 2019): one step size for all weights, b² += ‖g‖², w ← w − lr/b · g.

    Args:
        lr: η, the step size's numerator.
        b0: initial accumulator b₀ > 0.
        weight_decay: L2 penalty added to the gradient.
    """

    def __init__(self, params, lr: float = 0.1, b0: float = 1e-2, weight_decay: float = 0.0):
        BaseOptimizer.validate_positive(lr, "lr")
        BaseOptimizer.validate_positive(b0, "b0")
        BaseOptimizer.validate_non_negative(weight_decay, "weight_decay")
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
