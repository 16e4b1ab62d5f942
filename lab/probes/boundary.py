"""The decision boundary of a classifier on 2-D data, as an image over the data's box."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from trainlab.functional import eval_mode

from .base import Columns, Probe

if TYPE_CHECKING:
    from trainlab.run import Run


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

    def columns(self, run: Run) -> Columns:
        return Columns(snapshots=("boundary",) if run.data.is_2d else ())

    def measure(self, run: Run) -> dict[str, Any]:
        if not run.data.is_2d:
            return {}
        if self._grid is None:
            self._setup(run)
        with torch.no_grad(), eval_mode(run.model):
            out = run.model(self._grid)
        z = out.softmax(1)[:, 1] if out.shape[1] == 2 else out.argmax(1).float()
        z = z.reshape(len(self.y), len(self.x)).cpu().numpy()
        return {"boundary": {"x": self.x, "y": self.y, "z": z}}
