"""The path training takes: the run's weights recorded every k steps, for its PCA plane."""
from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from trainlab.analysis.landscape import Trajectory, pca_trajectory

from .base import Columns, Probe

if TYPE_CHECKING:
    from trainlab.run import Run


class TrajectoryProbe(Probe):
    """Records the run's trainable weights (flattened, on the CPU) every `every` steps.

    At most `max_points` are kept: past that, every other old point is dropped (the newest kept),
    so a long run keeps its whole path at bounded memory. A reset of the run starts it over.
    """

    name = "trajectory"

    def __init__(self, every: int = 10, max_points: int = 200):
        super().__init__(every)
        if not isinstance(max_points, int) or max_points < 3:
            raise ValueError(f"max_points must be a whole number >= 3; got {max_points!r}")
        self.max_points = max_points
        self._lock = threading.Lock()
        self._steps: list[int] = []
        self._points: list[torch.Tensor] = []
        self._generation = None

    def measure(self, run: Run) -> dict[str, Any]:
        # named_parameters order (shared weights once): what pca_trajectory unflattens by
        flat = torch.cat([p.detach().reshape(-1) for p in run.model.parameters() if p.requires_grad]).to("cpu", copy=True)
        with self._lock:
            if run.history.generation != self._generation:
                self._generation, self._steps, self._points = run.history.generation, [], []
            self._steps.append(run.steps)
            self._points.append(flat)
            if len(self._points) > self.max_points:
                self._steps = self._steps[:-1:2] + self._steps[-1:]
                self._points = self._points[:-1:2] + self._points[-1:]
        return {}

    def state(self) -> dict[str, Any]:
        with self._lock:
            return {"steps": list(self._steps), "points": list(self._points)}

    def load_state(self, state: dict[str, Any], run: Run) -> None:
        with self._lock:
            self._steps, self._points = list(state["steps"]), list(state["points"])
            self._generation = run.history.generation  # the restored record's

    def columns(self, run: Run) -> Columns:
        return Columns()  # the record stays in the probe (weights are too large for the history)

    def trajectory(self, model: nn.Module) -> Trajectory:
        """The recorded path on its PCA plane (needs 3 points); `model` is the run's model or a copy of it."""
        steps, W = self.points()
        return pca_trajectory(model, steps, W)

    def points(self) -> tuple[np.ndarray, torch.Tensor]:
        """(steps, weights (T, n)) recorded so far, a consistent copy."""
        with self._lock:
            steps, points = list(self._steps), list(self._points)
        return np.array(steps), torch.stack(points) if points else torch.empty(0)
