"""Learning-rate schedules by name: pure functions of the step, as nanoGPT's get_lr.

A schedule is a multiplier f(t) of the run's base (peak) lr, where t is the number of optimizer
steps taken since the schedule started (t = 0 for its first step), the same count as torch's
`scheduler.last_epoch`: the lr of step t+1 is `lr * f(t)`. A schedule chosen mid-run starts from
that step (a warm-up then warms up, a cosine of 2,000 steps runs over the next 2,000); being a
pure function of the steps, its whole curve can be drawn ahead of time (`preview`).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import param

from .registry import Entry, Registry, option_values, parse_spec

schedules = Registry("schedule")


def _steps(default: int, doc: str, lo: int = 1) -> param.Integer:
    return param.Integer(default, bounds=(lo, None), softbounds=(lo, 20_000), doc=doc)


def _fraction(default: float, doc: str) -> param.Number:
    return param.Number(default, bounds=(0, 1), softbounds=(0, 1), step=0.01, doc=doc)


def _cos(frac: float) -> float:
    """Half a cosine from 1 (frac = 0) down to 0 (frac = 1)."""
    return 0.5 * (1.0 + math.cos(math.pi * frac))


@schedules.register("constant")
def constant() -> Callable[[int], float]:
    """The base lr at every step."""
    return lambda t: 1.0


@schedules.register(
    "step",
    step_size=_steps(500, "steps between two decays"),
    gamma=param.Number(0.5, bounds=(0, 1), inclusive_bounds=(False, True), softbounds=(0.01, 1), step=0.01,
                       doc="factor applied at each decay"),
)
def step(step_size: int = 500, gamma: float = 0.5) -> Callable[[int], float]:
    """Multiply the lr by gamma every step_size steps (torch's StepLR)."""
    return lambda t: gamma ** (t // step_size)


@schedules.register(
    "cosine",
    total=_steps(2000, "steps of the cosine; the lr stays at its minimum after them"),
    min_fraction=_fraction(0.0, "lowest lr, as a fraction of the base lr"),
)
def cosine(total: int = 2000, min_fraction: float = 0.0) -> Callable[[int], float]:
    """Half a cosine from the base lr to min_fraction of it over `total` steps (torch's CosineAnnealingLR)."""
    return lambda t: min_fraction + (1 - min_fraction) * _cos(min(t, total) / total)


def _check_warmup(warmup: int, total: int, what: str = "total") -> None:
    if warmup >= total:
        raise ValueError(f"warmup={warmup} must be smaller than {what}={total}: lower warmup or raise {what}")


@schedules.register(
    "warmup_cosine",
    warmup=_steps(100, "steps of linear warm-up", lo=0),
    total=_steps(2000, "steps of warm-up and cosine together"),
    min_fraction=_fraction(0.0, "lowest lr, as a fraction of the base lr"),
)
def warmup_cosine(warmup: int = 100, total: int = 2000, min_fraction: float = 0.0) -> Callable[[int], float]:
    """Linear warm-up from lr/(warmup+1) to lr, then a cosine to min_fraction (nanoGPT's get_lr)."""
    _check_warmup(warmup, total)
    decay = total - warmup

    def f(t: int) -> float:
        if t < warmup:
            return (t + 1) / (warmup + 1)
        return min_fraction + (1 - min_fraction) * _cos(min(t - warmup, decay) / decay)

    return f


@schedules.register(
    "onecycle",
    total=_steps(2000, "steps of the whole cycle; the lr stays at its minimum after them", lo=2),
    pct_start=param.Number(0.3, bounds=(0, 1), inclusive_bounds=(False, False), softbounds=(0.05, 0.95), step=0.01,
                           doc="fraction of the cycle spent raising the lr"),
    div_factor=param.Number(25.0, bounds=(1, None), softbounds=(1, 100), step=1, doc="initial lr = lr / div_factor"),
    final_div_factor=param.Number(1e4, bounds=(1, None), softbounds=(1, 1e5), step=100,
                                  doc="final lr = initial lr / final_div_factor"),
)
def onecycle(total: int = 2000, pct_start: float = 0.3, div_factor: float = 25.0,
             final_div_factor: float = 1e4) -> Callable[[int], float]:
    """Smith's one-cycle: a cosine up from lr/div_factor to lr, then down to far below (torch's OneCycleLR).

    The run's lr is the cycle's peak; only the lr cycles (torch's OneCycleLR also cycles momentum
    by default; here momentum stays the run's setting).
    """
    up_end = float(pct_start * total) - 1  # torch's phase boundaries, kept to match it exactly
    down_end = total - 1
    if up_end <= 0 or down_end - up_end <= 0:
        raise ValueError(f"onecycle with total={total} and pct_start={pct_start} has an empty phase: "
                         f"raise total or move pct_start toward 0.5")
    initial = 1.0 / div_factor
    final = initial / final_div_factor

    def f(t: int) -> float:
        t = min(t, down_end)
        if t <= up_end:
            return 1.0 + (initial - 1.0) * _cos(t / up_end)
        return final + (1.0 - final) * _cos((t - up_end) / (down_end - up_end))

    return f


_SHAPES = {
    "linear": lambda x: 1.0 - x,
    "cosine": _cos,
    "1-sqrt": lambda x: 1.0 - math.sqrt(x),  # Hägele et al. 2024 found it beats linear cool-downs
}


@schedules.register(
    "wsd",
    warmup=_steps(100, "steps of linear warm-up", lo=0),
    total=_steps(2000, "steps of warm-up, stable phase and decay together"),
    decay_fraction=param.Number(0.2, bounds=(0, 1), inclusive_bounds=(False, True), softbounds=(0.01, 1), step=0.01,
                                doc="fraction of total spent decaying, at the end"),
    shape=param.Selector(default="1-sqrt", objects=list(_SHAPES), doc="shape of the decay"),
    min_fraction=_fraction(0.0, "lr at the end of the decay, as a fraction of the base lr"),
)
def wsd(warmup: int = 100, total: int = 2000, decay_fraction: float = 0.2, shape: str = "1-sqrt",
        min_fraction: float = 0.0) -> Callable[[int], float]:
    """Warmup-stable-decay (Hu et al. 2024, MiniCPM): warm up, hold the base lr, decay over the last part."""
    decay = max(1, round(decay_fraction * total))
    stable_end = total - decay
    _check_warmup(warmup, stable_end + 1, "the start of the decay (total - decay steps) + 1")
    drop = _SHAPES[shape]

    def f(t: int) -> float:
        if t < warmup:
            return (t + 1) / (warmup + 1)
        if t < stable_end:
            return 1.0
        return min_fraction + (1 - min_fraction) * drop(min(t - stable_end, decay) / decay)

    return f


class Schedule:
    """A schedule chosen by name with its options, validated: `schedule(t)` is the lr multiplier."""

    def __init__(self, name: str = "constant", **options):
        entry: Entry = schedules[name]
        self.name = name
        self.options = entry.options(**options)  # bounds checked here: ValueError naming the option
        self.fn = entry.build(**option_values(self.options))  # cross-field checks (warmup < total)
        self.varies = name != "constant"  # a constant schedule costs the training loop nothing
        self.start = 0  # the run's step the schedule counts from (set mid-run: that step)

    def __call__(self, t: int) -> float:
        return self.fn(t)

    @property
    def spec(self) -> tuple[str, dict[str, Any]]:
        """(name, options): what `Run(schedule=...)` and `run.set(schedule=...)` take."""
        return self.name, option_values(self.options)

    @property
    def horizon(self) -> int | None:
        """Steps after which the schedule no longer changes (None: it never does, or never stops)."""
        opts = option_values(self.options)
        if "total" in opts:
            return opts["total"]
        if "step_size" in opts:
            return 5 * opts["step_size"]
        return None

    def write(self, optimizer, t: int, lr_key: str = "lr") -> float:
        """Scale every param group's lr to the one of step t+1; returns the multiplier.

        Each group's base lr (what the run's settings wrote into it: the run's lr, or a group's
        own lr such as Muon's AdamW groups) is kept under "base_lr" in the group (see `rebase`), or
        taken from its lr when it has none yet (a new optimizer). Saved with the optimizer's state,
        so a loaded run continues its schedule.
        """
        m = self.fn(max(t - self.start, 0))
        for group in optimizer.param_groups:
            key = lr_key if lr_key in group else "lr"
            if "base_lr" not in group:
                group["base_lr"] = group[key]
            group[key] = group["base_lr"] * m
        return m

    @staticmethod
    def rebase(optimizer, lr_key: str = "lr") -> None:
        """Take each group's lr as its base lr: the settings were just written into the groups."""
        for group in optimizer.param_groups:
            group["base_lr"] = group[lr_key if lr_key in group else "lr"]

    def __repr__(self) -> str:
        return f"Schedule({self.name!r}, {option_values(self.options)})"


def as_schedule(spec: Any) -> Schedule:
    """A Schedule from a name, a (name, {options}) pair (or list, as saved) or a Schedule."""
    if isinstance(spec, Schedule):
        return spec
    parsed = parse_spec(spec)
    if parsed is None:
        raise ValueError(f"schedule must be a name ({', '.join(schedules.names())}) or a (name, {{options}}) pair, "
                         f"got {spec!r}")
    return Schedule(parsed[0], **parsed[1])


def preview(spec: Any, base_lr: float, steps: int | None = None, points: int = 400,
            start: int = 0) -> dict[str, np.ndarray]:
    """The lr a schedule sets at each step, ahead of time: {"step": step numbers, "lr": lrs}.

    `steps` defaults to the schedule's horizon plus 10% (at least 1,000). At most `points` steps
    are sampled, always including every step where a step schedule jumps. `start` is the run's step
    the schedule counts from (it was set then): the preview covers steps start+1 .. start+steps.
    """
    schedule = as_schedule(spec)
    if steps is None:
        steps = max(1000, int(1.1 * (schedule.horizon or 0)))
    t = np.unique(np.linspace(0, steps - 1, min(points, steps)).round().astype(int))
    if schedule.name == "step":  # show each jump as a vertical edge: the last step before and the first after
        size = schedule.options.step_size
        jumps = np.arange(size, steps, size)
        t = np.unique(np.concatenate([t, jumps - 1, jumps]))
    lr = np.array([base_lr * schedule(int(k)) for k in t])
    return {"step": t + 1 + start, "lr": lr}  # the lr of t steps taken is that of step number t + 1
