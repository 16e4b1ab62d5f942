"""The LR range test (Smith 2017, "Cyclical Learning Rates for Training Neural Networks", section 3.3).

Train a copy of the run for a few hundred steps while the lr grows exponentially from `start` to
`end`; the loss first barely moves, then falls, then blows up. The run itself (weights, optimizer
state, history) is untouched, so the test can run while the run trains.

The suggestion rule, stated: **the lr at the minimum of the smoothed loss, divided by 10**.
The loss is smoothed without lag for this (the same exponential filter run forward, then
backward over the result, as scipy.signal.filtfilt does), so its minimum sits where the raw
curve's trend turns, not a few dozen steps later as a one-way moving average would put it. The
minimum of a smoothed curve is stable from run to run; the raw steepest point that many finders
report moves by a decade with batch noise, which is why users find it unreliable. A tenth of the
minimum's lr sits on the falling part of the curve with a margin from the lr where training turns
unstable (fastai's "minimum/10"; Smith's advice to take an lr a little below where the loss stops
falling).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch

from .data import batches
from .jobs import Progress, as_progress
from .optimizers import build_grouped, optimizers
from .parametrizations import multipliers
from .registry import option_values

if TYPE_CHECKING:
    from .run import Run


FLAT = 0.1  # the loss must dip this fraction below its start for its minimum to mean something
NOISE_Z = 4.0  # ... and this many standard errors of the batch noise


def ema(values: np.ndarray, beta: float) -> np.ndarray:
    """Exponential moving average with bias correction (Adam's): unbiased from the first value on."""
    out, avg = np.empty(len(values)), 0.0
    for i, v in enumerate(values):
        avg = beta * avg + (1 - beta) * v
        out[i] = avg / (1 - beta ** (i + 1))
    return out


def zero_lag(values: np.ndarray, beta: float) -> np.ndarray:
    """The bias-corrected EMA run forward, then backward over its result: smoothed without a shift."""
    return ema(ema(values, beta)[::-1], beta)[::-1]


def suggest(lrs: np.ndarray, losses: np.ndarray, beta: float = 0.9) -> tuple[float, float, np.ndarray]:
    """(suggested lr, lr at the minimum, the zero-lag smoothed losses): the minimum's lr over 10."""
    lrs, losses = np.asarray(lrs, float), np.asarray(losses, float)
    finite = np.isfinite(losses)
    trend = np.full(len(losses), np.nan)
    trend[finite] = zero_lag(losses[finite], beta)
    i = int(np.nanargmin(trend))
    return float(lrs[i] / 10), float(lrs[i]), trend


def dip(losses: np.ndarray, trend: np.ndarray) -> tuple[float, float, bool]:
    """(mean loss at the start, mean loss around the trend's minimum, whether that dip stands out).

    A dip stands out when it is FLAT of the start and NOISE_Z standard errors of the batch noise (the
    scatter of the raw losses about the trend, by its median absolute deviation): on a trained run
    the smoothed noise alone dips 10-30 % somewhere along a 200-step sweep (measured on the digits
    MLP after 600k steps, loss 5e-6 +- 50 %), a minimum that means nothing.
    """
    finite = np.isfinite(losses) & np.isfinite(trend)
    raw, smooth = np.asarray(losses, float)[finite], np.asarray(trend, float)[finite]
    w = max(5, len(raw) // 10)
    i = int(np.argmin(smooth))
    first = float(raw[:w].mean())
    around = float(raw[max(0, i - w // 2): i + w // 2 + 1].mean())
    residual = raw - smooth
    noise = 1.4826 * float(np.median(np.abs(residual - np.median(residual))))
    drop = first - around
    return first, around, bool(drop > FLAT * first and drop > NOISE_Z * noise * np.sqrt(2 / w))


@dataclass
class RangeTest:
    """The outcome of `lr_range_test`: the sweep, its smoothed curves and the suggested lr."""

    lrs: np.ndarray            # the lr of each step of the sweep
    losses: np.ndarray         # the raw training loss of each step's batch (before its update)
    smoothed: np.ndarray       # bias-corrected EMA of the loss (what the early stop watches)
    trend: np.ndarray          # the zero-lag smoothed loss that the rule reads
    suggestion: float | None   # lr at the minimum of `trend`, divided by 10
    minimum: float | None      # lr at the minimum of `trend`
    stopped: str = "end"       # "end" (reached end), "diverged" (loss > k x best) or "cancelled"
    note: str = ""             # why the suggestion may be off, if it may be
    rule: str = field(default="lr at the minimum of the zero-lag smoothed loss / 10", repr=False)

    def apply(self, run: Run) -> None:
        """Set the suggested lr as the run's (base) lr; the run's schedule still multiplies it."""
        if self.suggestion is None:
            raise ValueError(f"no suggestion to apply: {self.note}")
        run.set(lr=self.suggestion)

    def as_dict(self) -> dict[str, np.ndarray]:
        return {"lr": self.lrs, "loss": self.losses, "smoothed": self.smoothed, "trend": self.trend}

    def frame(self) -> pd.DataFrame:
        """A row per step of the sweep: step, lr, loss, smoothed, trend."""
        return sweep_frame(self.as_dict())


def sweep_frame(sweep: dict[str, np.ndarray]) -> pd.DataFrame:
    """A range test's `as_dict()` (or its snapshot) as rows: step of the sweep, lr, loss, smoothed, trend."""
    cols = {k: np.asarray(sweep[k], float) for k in ("lr", "loss", "smoothed", "trend")}
    return pd.DataFrame({"step": np.arange(len(cols["lr"])), **cols})


def lr_range_test(run: Run, start: float = 1e-7, end: float = 10.0, steps: int = 200, beta: float = 0.9,
                  diverge: float = 4.0, batch_size: int | None = None, seed: int = 0,
                  progress: bool | Progress = True) -> RangeTest:
    """Sweep the lr exponentially from `start` to `end` over `steps` steps on a copy of the run.

    The copy starts from the run's current weights (`run.model_copy()`) with a fresh optimizer of
    the run's kind and hyperparameters; batches come from the run's data with their own
    generator (`seed`), `batch_size` defaults to the run's. The sweep stops early when the
    smoothed loss (bias-corrected EMA with `beta`) exceeds `diverge` times its best, or the loss
    is not finite. The run's schedule is ignored: the suggestion is a base (peak) lr.
    """
    if not (0 < start < end) or not all(map(math.isfinite, (start, end))):
        raise ValueError(f"need 0 < start < end, both finite; got start={start}, end={end}")
    if not isinstance(steps, int) or steps < 10:
        raise ValueError(f"steps must be a whole number >= 10, got {steps!r}")
    if not 0 <= beta < 1:
        raise ValueError(f"beta must be in [0, 1), got {beta}")
    if diverge <= 1:
        raise ValueError(f"diverge must be > 1 (a multiple of the best loss), got {diverge}")
    entry = optimizers[run.optimizer]
    if entry.meta.step != "plain":
        raise ValueError(f"the LR range test drives optimizers that step after one backward pass; {run.optimizer} "
                         f"steps differently ({entry.meta.step}): run the test with optimizer sgd or adam")
    key = entry.meta.lr_key or "lr"
    model = run.model_copy()
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    # as Run builds it: in the parametrization's param groups, each lr its multiple of the run's
    opt = build_grouped(run.optimizer, named, multipliers(model, run.optimizer), start, option_values(run.opt_params))
    gen = torch.Generator().manual_seed(seed)
    data = batches(run.data, batch_size or run.batch_size, gen, run.device)
    lrs = start * (end / start) ** (np.arange(steps) / (steps - 1))
    losses, smoothed, avg, best = [], [], 0.0, math.inf
    stopped = "end"
    p = as_progress(progress, steps, "LR range test")
    try:
        for i, lr in enumerate(lrs):
            if p.cancelled:
                stopped = "cancelled"
                break
            for group in opt.param_groups:
                group[key if key in group else "lr"] = float(lr) * group.get("lr_mult", 1.0)
            xb, yb = data.next()
            opt.zero_grad(set_to_none=True)
            loss = run.loss_fn(model(xb), yb)
            value = float(loss.detach())
            if not math.isfinite(value):
                stopped = "diverged"
                break
            loss.backward()
            opt.step()
            losses.append(value)
            avg = beta * avg + (1 - beta) * value
            smoothed.append(avg / (1 - beta ** (i + 1)))
            best = min(best, smoothed[-1])
            p.update()
            if i >= 10 and smoothed[-1] > diverge * best:
                stopped = "diverged"
                break
    finally:
        p.close()
    n = len(losses)
    lrs = lrs[:n]
    if n < 10:
        note = f"only {n} steps before the loss diverged: lower start (now {start:g})"
        return RangeTest(lrs, np.array(losses), np.array(smoothed), np.array(losses), None, None, stopped, note)
    suggestion, minimum, trend = suggest(lrs, np.array(losses), beta)
    note = ""
    i = int(np.nanargmin(trend))
    if i >= n - 3:
        note = (f"the loss was still falling where the sweep ended ({stopped}); the minimum may lie beyond "
                f"lr={lrs[-1]:.3g}: raise end")
    elif i <= 2:
        note = "the loss rose from the first step: lower start"
    first, lowest, stands_out = dip(np.array(losses), trend)
    if not stands_out:  # no dip worth the name: any lr below the blow-up looks the same
        note = (f"the loss hardly moved over the sweep ({first:.3g} at the start, {lowest:.3g} around its lowest, "
                f"within its batch noise): no lr stands out, so there is no suggestion (a trained run sits at a "
                f"minimum; try it on a fresh run)")
        suggestion, minimum = None, None
    return RangeTest(lrs, np.array(losses), np.array(smoothed), trend, suggestion, minimum, stopped, note)
