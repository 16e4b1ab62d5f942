"""The Probe: a measurement every k steps that adds columns (and snapshots) to the run's history.

A probe's `measure(run)` runs on the training thread right after an optimizer step whose number is
a multiple of `every`, and returns a dict: scalars become columns of that step's row, other values
(arrays, dicts of arrays) become the newest snapshot under their key. `before(run)` runs before that
step's update, for probes that compare before and after. `columns(run)` declares what it writes,
so a panel reads the names from the probe instead of spelling them again.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from trainlab.run import Run


@dataclass(frozen=True)
class Columns:
    """What a probe writes: history columns (name -> the short label a plot gives it) and snapshot names."""

    scalars: dict[str, str] = field(default_factory=dict)
    snapshots: tuple[str, ...] = ()


class Probe:
    """Base class: override `measure` and `columns` (and `before` if it needs the weights before the step)."""

    name = "probe"

    def __init__(self, every: int = 10):
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be a whole number of steps >= 1, got {every!r}")
        self.every = every

    def before(self, run: Run) -> None:
        """Called before the optimizer step on measuring steps."""

    def measure(self, run: Run) -> dict[str, Any]:
        raise NotImplementedError

    def columns(self, run: Run) -> Columns:
        """The history columns and snapshots `measure` writes on this run."""
        return Columns()

    def state(self) -> dict[str, Any]:
        """What the probe carries from one measurement to the next (plain data and tensors): saved with the run,
        so a loaded run measures on as the original would have."""
        return {}

    def load_state(self, state: dict[str, Any], run: Run) -> None:
        """Take back what `state` returned, on a run just restored."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(every={self.every})"


def layer_columns(run: Run, prefix: str, layers=None) -> dict[str, str]:
    """{"<prefix>/<layer>": "<layer>"} for the run's layers (or the ones given)."""
    return {f"{prefix}/{layer}": layer for layer in (run.layers if layers is None else layers)}


def by_layer(run: Run, values: list[float], prefix: str) -> dict[str, float]:
    """Per-tensor norms (aligned with run.params) combined into per-layer norms."""
    out, i = {}, 0
    for layer, params in run.layers.items():
        out[f"{prefix}/{layer}"] = math.sqrt(math.fsum(v * v for v in values[i : i + len(params)]))
        i += len(params)
    return out


def grad_norms(run: Run) -> list[torch.Tensor]:
    """Per-tensor gradient norms, aligned with run.params (0 for a parameter without a gradient)."""
    return torch._foreach_norm([p.grad if p.grad is not None else torch.zeros_like(p) for p in run.params])


def default_probes(run: Run) -> list[Probe]:
    """Per-layer gradient norms every 10 steps, update ratios every 25, for 2-D classification the
    decision boundary every 10, and for ReLU networks the dead units every 50."""
    from .boundary import DecisionBoundary
    from .steps import DeadUnits, GradNorm, UpdateRatio

    probes: list[Probe] = [GradNorm(10), UpdateRatio(25)]  # Δw/w drifts slowly: every 25 steps is plenty
    if run.data.is_2d and run.data.task == "classification":
        probes.append(DecisionBoundary(10))
    if DeadUnits.units(run):
        probes.append(DeadUnits(50))  # hooks on one step in 50 only: the dashboard warns when ReLUs die
    return probes
