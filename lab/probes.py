"""Probes: measurements taken every k steps that add columns to the run's history.

A probe's `measure(run)` runs on the training thread right after an optimizer step whose number
is a multiple of `every`, and returns a dict: scalars become columns of that step's row, other
values (arrays, dicts of arrays) become the newest snapshot under their key. `before(run)` runs
before that step's update, for probes that compare before and after. Curvature, spectrum and
sparsity probes plug in the same way.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

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


class GradNorm(Probe):
    """Per-layer gradient norm, in columns `grad_norm/<layer>` (the global norm is logged every step)."""

    name = "grad_norm"

    def measure(self, run: Run) -> dict[str, float]:
        norms = torch._foreach_norm([p.grad if p.grad is not None else torch.zeros_like(p) for p in run.params])
        return _by_layer(run, torch.stack(norms).tolist(), "grad_norm")


class UpdateRatio(Probe):
    """Per-layer ||w_after - w_before|| / ||w_before|| of one step, in columns `update_ratio/<layer>`.

    Measured on the weights themselves, so it is right for any optimizer (a rule of thumb puts
    healthy values near 1e-3).
    """

    name = "update_ratio"

    def before(self, run: Run) -> None:
        self._before = [p.detach().clone() for p in run.params]

    def measure(self, run: Run) -> dict[str, float]:
        after = [p.detach() for p in run.params]
        # foreach ops: one dispatch for all tensors instead of one per tensor (3x faster here)
        delta = torch._foreach_norm(torch._foreach_sub(after, self._before))
        base = torch._foreach_norm(self._before)
        d, b = torch.stack(delta).tolist(), torch.stack(base).tolist()
        self._before = []
        num, den = _by_layer(run, d, "update_ratio"), _by_layer(run, b, "update_ratio")
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
