"""Divergence the user can recover from: a blow-up caught before the weights are ruined, and restore points.

A loss that turns non-finite is too late: by then the weights are 1e12 or more and no lr brings them
back. `Guard` also catches the loss growing by orders of magnitude (above `factor` times its recent
median, and above 10 times the median of the first ten), and keeps a ring of restore points (weights,
buffers and optimizer state) taken when the settings change and every `every` healthy steps, so the
run can go back to weights from before the blow-up: lower the lr and resume. A loss over the limit must stay over it
for two steps in a row: with a batch of one, a single hard example can be 100 times the median.
"""
from __future__ import annotations

import copy
import math
import statistics
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn


@dataclass
class RestorePoint:
    """The state of a run between two steps: what a rollback restores, and with `run` (the sampling state and
    the settings in force) what a fork of the live run starts from (`Run.fork`)."""

    step: int
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    optimizer_name: str
    run: dict[str, Any] = field(default_factory=dict)


class Guard:
    """Watches the training loss step by step and keeps the last `keep` restore points."""

    def __init__(self, factor: float = 100.0, window: int = 50, every: int = 100, keep: int = 2):
        self.factor, self.every = factor, every
        self._recent: deque[float] = deque(maxlen=window)
        self._first: float | None = None
        self._opening: list[float] = []
        self._limit, self._over = math.inf, 0
        self.points: deque[RestorePoint] = deque(maxlen=keep)

    # ---- the loss ---------------------------------------------------------------------------------
    def check(self, loss: float, grad_norm: float) -> str | None:
        """Why this step's loss or gradient norm means divergence, or None if it does not.

        A loss over the limit counts on its second step in a row: one hard example in a batch of one or a
        few can be 100 times the median and gone at the next step, while a blow-up keeps growing."""
        if not math.isfinite(loss):
            return f"the loss is {loss}"
        if not math.isfinite(grad_norm):
            return f"the gradient norm is {grad_norm}"
        if loss > self._limit:
            self._over += 1
            if self._over >= 2:
                scale = statistics.median(self._recent) if len(self._recent) >= 10 else self._first
                return f"the loss is {loss:.4g}, over {self.factor:g}× its recent median ({scale:.4g})"
        else:
            self._over = 0
        return None

    def ruined(self, model: nn.Module) -> bool:
        """Whether the weights hold non-finite values or have grown 100-fold from the newest restore point."""
        now = [p.detach() for p in model.parameters()]
        if not all(bool(torch.isfinite(p).all()) for p in now):
            return True
        if not self.points:
            return False
        before = [v for k, v in self.points[-1].model.items() if v.is_floating_point()]
        norm = lambda ts: math.sqrt(sum(float(t.double().pow(2).sum()) for t in ts))  # noqa: E731
        return norm(now) > 100 * max(norm(before), 1e-12)

    def record(self, loss: float) -> None:
        """A step that went through: its loss joins the window the limit is drawn from."""
        self._recent.append(loss)
        if len(self._opening) < 10:  # the scale the run starts at: the median of its first ten losses
            self._opening.append(loss)
            self._first = statistics.median(self._opening)
        n = len(self._recent)
        if n <= 10 or n % 10 == 0 or n == self._recent.maxlen:  # a median every 10 steps: cheap enough per step
            self._update_limit()

    def _update_limit(self) -> None:
        # until 10 steps are in, the first loss is the scale, with ten times the margin: early steps swing
        # widely (L-BFGS overshoots 100-fold and recovers), and a huge lr still shows in one step (1e9-fold)
        early = len(self._recent) < 10
        median = self._first if early else statistics.median(self._recent)
        if self.factor <= 0 or median is None or median <= 0 or self._first <= 0:
            self._limit = math.inf  # a loss that can be 0 or negative has no scale to grow from
        else:
            self._limit = max(self.factor * median * (10 if early else 1), 10 * self._first)

    def healthy(self) -> bool:
        """Whether the latest loss is within a tenth of the limit: a state worth restoring to."""
        return not self._recent or self._recent[-1] <= self._limit / 10

    def set_factor(self, factor: float) -> None:
        self.factor = factor
        if len(self._recent) >= 10:
            self._update_limit()

    # ---- restore points ---------------------------------------------------------------------------
    def save(self, step: int, model: nn.Module, optimizer: torch.optim.Optimizer, name: str,
             run: dict[str, Any] | None = None) -> None:
        if self.points and self.points[-1].step == step and self.points[-1].optimizer_name == name:
            self.points.pop()  # the same step again (settings changed twice): the newer state replaces it
        self.points.append(RestorePoint(step, {k: v.detach().clone() for k, v in model.state_dict().items()},
                                        copy.deepcopy(optimizer.state_dict()), name, run or {}))

    def point(self, step: int | None = None) -> RestorePoint:
        """The newest restore point at or before `step` (the newest of all when None)."""
        for p in reversed(self.points):
            if step is None or p.step <= step:
                return p
        kept = [p.step for p in self.points]
        raise ValueError(f"no restore point at or before step {step}; the run keeps points at steps {kept}")
