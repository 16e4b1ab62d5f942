"""Pruning inside a Run: the Sparsifier stepped between steps, gradients and weights masked around the update.

The Run owns one `Pruning` (or None). `between(run)` runs before each step (the schedule may prune);
`grads(run)` runs after the backward pass and any gradient noise, right before the optimizer step;
`weights()` right after it. Together they cost two in-place multiplies a step (one on the flat gradient
buffer, one foreach over the masked weights) and leave momentum and Adam state at zero where pruned.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .masks import Masked, masks, remove_masks, set_mask
from .rescale import activation_variance
from .sparsifier import Sparsifier, as_sparsifier

if TYPE_CHECKING:
    from ..run import Run

CALIBRATION = 256  # examples data-driven criteria (gradient, SNIP, GraSP) score on: the run's fixed sample


class Pruning:
    """A run's sparsifier and its masks as the step sees them."""

    def __init__(self, sparsifier: Sparsifier):
        self.sparsifier = sparsifier
        self.masked: Masked | None = None
        self.want_pruned_norm = False   # set by SparsityProbe.before: measure the gradient reaching pruned weights
        self.pruned_norm: float | None = None
        self.churn: float | None = None  # fraction of mask entries changed by the newest update
        self.collapsed = 0               # layers keeping < 1 % of their weights after the newest update
        self.dense: dict[str, torch.Tensor] | None = None  # the prunable weights right before the newest pruning
        self.variance: tuple[int, dict] | None = None  # (step, per-layer activation variance before/after it)
        self.repairs = 0                 # repairs applied (`apply_repair`): mask updates of their own

    @classmethod
    def of(cls, run: Run, spec: Any) -> Pruning | None:
        sp = as_sparsifier(run.model, spec)
        return None if sp is None else cls(sp)

    def refresh(self, run: Run) -> None:
        """Align the step's masks with the model's buffers (after pruning, loading or an optimizer rebuild)."""
        b = self.sparsifier.beta  # a mask decay under way: pruned gradients scaled by β², not zeroed
        self.masked = Masked(run.model, run.params, run.grads.flat, pruned=b * b if b else 0.0)
        if self.masked:
            self.masked.state(run.torch_optimizer)
            self.masked.weights()

    def between(self, run: Run) -> None:
        """Before a step: prune when the schedule asks; the change goes in the next row's `event`."""
        sp = self.sparsifier
        if sp.due(run.steps) is None:
            return
        before = {k: v.clone() for k, v in sp.masks.items()} if sp.updates else {}
        batch = _Once(lambda: run.data.fixed_sample(CALIBRATION, run.seed, run.device))
        pruning = not sp.reshapes(run.steps)  # to a new sparsity: its weights and activations kept to compare
        if pruning:
            self.dense = {k: w.detach().clone() for k, w in sp.weights.items()}
            variance = activation_variance(run.model, batch()[0])
        note = sp.step(run.steps, batch=batch, loss_fn=run.loss_fn)
        if note is None:
            return
        if pruning:
            after = activation_variance(run.model, batch()[0])
            layers = [k for k in variance if k in after]
            self.variance = (run.steps + 1, {"layers": layers, "before": np.array([variance[k] for k in layers]),
                                             "after": np.array([after[k] for k in layers])})
        after = sp.masks
        changed = sum(int((after[k] != before[k]).sum()) for k in after if k in before)
        total = sum(v.numel() for v in after.values())
        self.churn = changed / total if before and total else None
        if getattr(sp.plan, "geometric", False) and "rewound" in note:
            run.torch_optimizer.state.clear()  # a rewound ticket trains from its rewind point afresh
        self.refresh(run)
        collapsed = sp.collapsed()
        if collapsed:  # the failure of pruning at init made visible: a layer that keeps (almost) nothing
            note += "; LAYER COLLAPSE: " + ", ".join(f"{k} keeps {100 * v:.2g} %" for k, v in collapsed.items())
        self.collapsed = len(collapsed)
        run.note(note)

    def apply_repair(self, run: Run, seen: dict[str, torch.Tensor], new: dict[str, torch.Tensor], note: str) -> None:
        """Repaired masks onto the live run; call inside `run.between_steps()`. Refused, the run untouched, when its
        masks are no longer the `seen` ones the repair started from. Regrown weights take their values from before
        the newest pruning (`dense`), as DSnoT's do; the others keep their trained values."""
        now = masks(run.model)
        if run.pruning_state is not self or set(now) != set(seen) or any(not torch.equal(now[k], v)
                                                                          for k, v in seen.items()):
            raise ValueError("repair not applied: the masks changed while it ran (the schedule pruned, or the "
                             "pruning was changed or reset); the run trains on as it was: repair again")
        params = dict(run.model.named_parameters())
        changed = 0
        with torch.no_grad():
            for k, keep in new.items():
                grown = keep & ~seen[k]
                params[k].copy_(torch.where(grown, self.dense[k].to(params[k].dtype), params[k].detach()))
                changed += int((keep != seen[k]).sum())
                set_mask(run.model, k, keep)
        total = sum(v.numel() for v in now.values())
        self.churn, self.repairs = changed / total, self.repairs + 1
        self.refresh(run)  # momentum and Adam state at 0 where pruned, as after any mask update
        run.note(note)

    def grads(self, run: Run) -> None:
        m = self.masked
        if not m:
            return
        if self.want_pruned_norm:
            self.want_pruned_norm = False
            with torch.no_grad():
                sq = sum(float(p.grad.masked_fill(b, 0).pow(2).sum()) for p, b in zip(m.params, m.bools)
                         if p.grad is not None)
            self.pruned_norm = sq ** 0.5
        m.grads(run.grads.flat if run.grads.intact else None)

    def grads_graph(self, run: Run) -> None:
        """Second-order kinds: the gradients carry a graph (Hessian-vector products): masked out of place."""
        m = self.masked
        if m:
            for p, k in zip(m.params, m.keep):
                if p.grad is not None:
                    p.grad = p.grad * k

    def weights(self) -> None:
        if self.masked:
            self.masked.weights()

    def remove(self, run: Run) -> None:
        remove_masks(run.model)
        self.masked = None


class _Once:
    """A calibration batch drawn on first use only, then the same one."""

    def __init__(self, draw):
        self.draw, self.value = draw, None

    def __call__(self):
        if self.value is None:
            self.value = self.draw()
        return self.value
