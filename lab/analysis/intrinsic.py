"""Intrinsic dimension (Li, Farkhoor, Liu & Yosinski 2018): train in a random d-dimensional subspace.

The weights are theta = theta0 + P z with theta0 the initial weights and P a fixed random
(n x d) projection; only z (d numbers) is trained. For a series of d, the performance reached is
compared with the full model's trained the same way; d_int90 is the smallest d reaching 90% of it.

P is dense (Gaussian, unit-norm columns, as the paper) when n*d is small, else the Fastfood
transform (Le, Sarlos & Smola 2013; the paper's choice for large models): P z = S H G Pi H B z over
the padded length 2^k >= n, stored in O(n) memory and applied in O(n log n).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..data import eval_batches
from ..functional import Functional
from ..jobs import Progress, as_progress

PROJECTIONS = ("auto", "dense", "fastfood")
DENSE_LIMIT = 2**24  # n*d entries (64 MB in float32) above which "auto" takes Fastfood


@dataclass
class IntrinsicDimension:
    """Performance (higher is better) after training in each subspace dimension, and the full model's."""

    dims: np.ndarray
    performance: np.ndarray  # NaN for dimensions not reached (cancelled)
    full: float
    threshold: float
    metric: str
    projection: str
    complete: bool = True

    @property
    def d_int(self) -> int | None:
        """The smallest d whose performance reaches threshold x full (d_int90 for threshold 0.9), or None."""
        ok = np.flatnonzero(self.performance >= self.threshold * self.full)
        return int(self.dims[ok[0]]) if len(ok) else None

    def to_dict(self) -> dict[str, Any]:
        return {"dims": self.dims, "performance": self.performance, "full": self.full, "threshold": self.threshold,
                "metric": self.metric, "projection": self.projection, "d_int": self.d_int, "complete": self.complete}

    def frame(self) -> pd.DataFrame:
        """A row per subspace dimension: d, performance (NaN where not reached), full (the full model's), threshold (the
        fraction, 0.9 for d_int90) and target (threshold x full: what d_int's performance reaches)."""
        return dims_frame(self.to_dict())


def dims_frame(result: dict[str, Any]) -> pd.DataFrame:
    """An IntrinsicDimension's `to_dict()` (or its snapshot) as rows: d, performance, full, threshold, target."""
    full, threshold = float(result["full"]), float(result["threshold"])
    return pd.DataFrame({"d": np.asarray(result["dims"], dtype=np.int64),
                         "performance": np.asarray(result["performance"], float), "full": full, "threshold": threshold,
                         "target": threshold * full})


def fwht(x: torch.Tensor) -> torch.Tensor:
    """Unnormalized fast Walsh-Hadamard transform over the last dimension (a power of two): H @ x."""
    n = x.shape[-1]
    if n & (n - 1):
        raise ValueError(f"fwht needs a power-of-two length, got {n}")
    shape, h = x.shape, 1
    while h < n:
        x = x.reshape(*shape[:-1], n // (2 * h), 2, h)
        x = torch.stack([x[..., 0, :] + x[..., 1, :], x[..., 0, :] - x[..., 1, :]], -2)
        h *= 2
    return x.reshape(shape)


class Fastfood(nn.Module):
    """z (d) -> P z (n) with P = S H G Pi H B / norm, d <= n (the paper's structured projection)."""

    def __init__(self, d: int, n: int, generator: torch.Generator):
        super().__init__()
        self.d, self.n = d, n
        self.L = 1 << max(0, math.ceil(math.log2(max(n, d))))
        g = generator
        self.register_buffer("B", torch.randint(0, 2, (self.L,), generator=g).float() * 2 - 1)
        self.register_buffer("Pi", torch.randperm(self.L, generator=g))
        self.register_buffer("G", torch.randn(self.L, generator=g))
        # ||H G Pi H B e_i||^2 is about L * sum(G^2), and n of the L coordinates are kept: this
        # scale gives each column unit norm, as the dense P's (the paper's code divides the same way)
        self.scale = 1.0 / math.sqrt(n * float((self.G**2).sum()))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = torch.nn.functional.pad(z, (0, self.L - self.d)) * self.B
        x = fwht(x)[..., self.Pi] * self.G
        return fwht(x)[..., : self.n] * self.scale


class Dense(nn.Module):
    """z (d) -> P z (n) with P Gaussian and each column of unit norm."""

    def __init__(self, d: int, n: int, generator: torch.Generator):
        super().__init__()
        P = torch.randn(n, d, generator=generator)
        self.register_buffer("P", P / P.norm(dim=0, keepdim=True))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.P @ z


def _accuracy(out: torch.Tensor, y: torch.Tensor) -> float:
    return float((out.argmax(-1) == y).double().mean())


def _r2(out: torch.Tensor, y: torch.Tensor) -> float:
    y = y.reshape(out.shape).double()
    return float(1 - ((out.double() - y) ** 2).sum() / ((y - y.mean(0)) ** 2).sum().clamp_min(1e-30))


def _pair(data, what: str, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole set as one (X, y) pair: subspace training here is full-batch or samples from it."""
    batches = eval_batches(data, device, dtype, what)
    return torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])


def intrinsic_dimension(model: nn.Module, loss_fn: Callable | None = None, data: Any = None,
                        dims: list[int] | tuple[int, ...] = (1, 2, 5, 10, 20, 50, 100, 200, 500),
                        steps: int = 300, lr: float = 0.01, batch_size: int | None = None, val_data: Any = None,
                        metric: str | Callable = "auto", projection: str = "auto", threshold: float = 0.9,
                        full: float | None = None, optimizer: Callable | None = None, seed: int = 0,
                        progress: bool | Progress = True) -> IntrinsicDimension:
    """Train theta0 + P z with Adam for `steps` steps for each d in `dims`; report performance against d.

    `model` an nn.Module (its current weights are theta0: pass it untrained); `data` (X, y), a DataLoader
    (gathered once) or a trainlab Data (its training set);
    `val_data` where performance is measured (default: the training data); `metric` "accuracy",
    "r2", "auto" (accuracy for integer labels, R^2 otherwise) or a callable (out, y) -> float,
    higher is better; `full` the full model's performance if known, else it is trained the same way
    (Adam, `lr`, `steps`); `optimizer` a factory params -> torch optimizer replacing Adam(lr)
    (stepped with a closure, so torch.optim.LBFGS works); `batch_size` None trains full-batch.
    The model is not modified.
    Cancelling keeps the dimensions done (NaN for the rest).
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be an nn.Module (for a run: a copy at its initial weights); "
                         f"got {type(model).__name__}")
    model = copy.deepcopy(model)
    if loss_fn is None or not callable(loss_fn):
        raise ValueError("loss_fn must be a callable (outputs, targets) -> scalar loss")
    if projection not in PROJECTIONS:
        raise ValueError(f"projection must be one of {', '.join(map(repr, PROJECTIONS))}; got {projection!r}")
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1]; got {threshold}")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a whole number >= 1; got {steps!r}")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a finite number > 0; got {lr!r}")
    named = [(k, p) for k, p in model.named_parameters() if p.requires_grad]
    n = sum(p.numel() for _, p in named)
    dims = np.array(sorted(set(int(d) for d in dims)))
    if len(dims) == 0 or dims[0] < 1 or dims[-1] > n:
        raise ValueError(f"dims must be whole numbers between 1 and the model's {n} trainable parameters; got {dims.tolist()}")
    p0 = named[0][1]
    X, y = _pair(data, "data", p0.device, p0.dtype)
    Xv, yv = (X, y) if val_data is None else _pair(val_data, "val_data", p0.device, p0.dtype)
    if metric == "auto":
        metric = "accuracy" if not y.is_floating_point() else "r2"
    if isinstance(metric, str) and metric not in ("accuracy", "r2"):
        raise ValueError(f"metric must be 'auto', 'accuracy', 'r2' or a callable (out, y) -> float; got {metric!r}")
    score = {"accuracy": _accuracy, "r2": _r2}.get(metric, metric) if isinstance(metric, str) else metric
    metric_name = metric if isinstance(metric, str) else getattr(metric, "__name__", "metric")

    f = Functional(model, "subspace training")
    theta0 = f.theta
    buffers = {k: b.detach().clone() for k, b in model.named_buffers()}
    gen = torch.Generator().manual_seed(seed)
    order = torch.Generator().manual_seed(seed + 1)

    def train(make_theta, leaves) -> float:
        """Adam on `leaves` for `steps` steps, then the score on the validation data; False if cancelled."""
        for k, b in model.named_buffers():  # BatchNorm statistics start afresh for each subspace
            b.data.copy_(buffers[k])
        opt = torch.optim.Adam(leaves, lr=lr) if optimizer is None else optimizer(leaves)
        model.train()
        for _ in range(steps):
            if p.cancelled:
                return None
            if batch_size is None or batch_size >= len(X):
                xb, yb = X, y
            else:
                idx = torch.randint(0, len(X), (batch_size,), generator=order).to(X.device)
                xb, yb = X[idx], y[idx]

            def closure():
                opt.zero_grad(set_to_none=True)
                loss = loss_fn(f(make_theta(), xb), yb)
                loss.backward()
                return loss

            opt.step(closure)
            p.update()
        model.eval()
        with torch.no_grad():
            return float(score(f(make_theta(), Xv), yv))

    kind = projection
    p = as_progress(progress, steps * (len(dims) + (full is None)), "intrinsic dimension")
    perf = np.full(len(dims), np.nan)
    try:
        if full is None:
            theta = theta0.clone().requires_grad_(True)
            full = train(lambda: theta, [theta])
        for i, d in enumerate(dims):
            if full is None:
                break
            use = projection if projection != "auto" else ("dense" if n * d <= DENSE_LIMIT else "fastfood")
            kind = use if projection != "auto" or i == 0 or kind == use else "dense+fastfood"
            P = (Dense if use == "dense" else Fastfood)(int(d), n, gen).to(p0.device, p0.dtype)
            z = torch.zeros(int(d), device=p0.device, dtype=p0.dtype, requires_grad=True)
            value = train(lambda: theta0 + P(z), [z])
            if value is None:
                break
            perf[i] = value
    finally:
        p.close()
    return IntrinsicDimension(dims, perf, float("nan") if full is None else float(full), threshold, metric_name, kind,
                              complete=not np.isnan(perf).any())


__all__ = ["Dense", "Fastfood", "IntrinsicDimension", "fwht", "intrinsic_dimension"]
