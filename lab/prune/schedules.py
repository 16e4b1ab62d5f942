"""Pruning schedules by name: the planned sparsity as a pure function of the steps since the schedule began.

An entry builds `f(t) -> fraction of the final sparsity reached` (0..1) from its options; the
Sparsifier prunes whenever the planned sparsity `final * f(t)` differs from the one applied, so the
whole plan can be drawn ahead (`preview`). t counts steps taken since the pruning was chosen (0 at a
run's start, the current step for `run.set(pruning=...)`).
"""
from __future__ import annotations

import param

from ..registry import Registry

prune_schedules = Registry("pruning schedule")


def _step(default: int, doc: str, lo: int = 0) -> param.Integer:
    return param.Integer(default, bounds=(lo, None), softbounds=(lo, 5000), doc=doc)


@prune_schedules.register("oneshot", at=_step(0, "step (since the schedule began) at which to prune"))
def oneshot(at: int = 0):
    """Prune to the final sparsity once, at step `at`."""
    return lambda t: 1.0 if t >= at else 0.0


@prune_schedules.register(
    "gradual",
    start=_step(0, "step of the first pruning"),
    end=_step(1000, "step at which the final sparsity is reached", lo=1),
    frequency=_step(100, "steps between two prunings", lo=1),
    initial=param.Number(0.0, bounds=(0, 1), softbounds=(0, 1), doc="sparsity at the start, as a fraction of the final"),
)
def gradual(start: int = 0, end: int = 1000, frequency: int = 100, initial: float = 0.0):
    """Zhu & Gupta 2017: s_t = s_f + (s_i - s_f)(1 - (t - t0)/(n Δt))³ at t = t0, t0 + Δt, ..., held after the end."""
    if end <= start:
        raise ValueError(f"pruning schedule 'gradual' rejected: end={end} must come after start={start}")

    def f(t: int) -> float:
        if t < start:
            return 0.0
        t = min(start + (t - start) // frequency * frequency, end)  # updated every `frequency` steps only
        return 1.0 + (initial - 1.0) * (1.0 - (t - start) / (end - start)) ** 3

    return f


@prune_schedules.register(
    "imp",
    rounds=param.Integer(5, bounds=(1, None), softbounds=(1, 20), doc="pruning rounds"),
    period=_step(500, "steps of training between two rounds", lo=1),
    rewind=_step(0, "step (since the schedule began) whose weights each round rewinds to"),
)
def imp(rounds: int = 5, period: int = 500, rewind: int = 0):
    """Iterative magnitude pruning with rewinding (Frankle & Carbin 2019; Frankle et al. 2020): after each
    period, prune so the kept fraction is (1 - s_f)^(k/rounds), then rewind the kept weights to step `rewind`."""
    if rewind >= period:
        raise ValueError(f"pruning schedule 'imp' rejected: rewind={rewind} must come before the first round at "
                         f"period={period}")

    def f(t: int) -> float:
        return min(t // period, rounds) / rounds  # as a fraction of the kept *exponent* (see Sparsifier.planned)

    f.geometric = True
    f.rewind = rewind
    f.period = period
    return f


def _dynamic(regrow: str):
    def build(at: int = 0, every: int = 100, drop_fraction: float = 0.3, end: int = 10_000):
        if end <= at:
            raise ValueError(f"pruning schedule {regrow!r} rejected: end={end} must come after at={at}")

        def f(t: int) -> float:
            return 1.0 if t >= at else 0.0

        f.dynamic, f.regrow, f.at, f.every, f.drop_fraction, f.end = True, regrow, at, every, drop_fraction, end
        return f

    return build


_DYNAMIC = dict(
    at=_step(0, "step of the first pruning (to the final sparsity)"),
    every=_step(100, "steps between two drop-and-regrow updates (ΔT)", lo=1),
    drop_fraction=param.Number(0.3, bounds=(0, 1), softbounds=(0, 1), step=0.05,
                               doc="α: fraction of each layer's kept weights dropped at the first update, cosine-decayed"),
    end=_step(10_000, "step after which the masks stay fixed (T_end)", lo=1),
)
prune_schedules.register("set", doc="SET (Mocanu et al. 2018): every ΔT steps drop the smallest kept weights of each "
                                    "layer and regrow as many at random, sparsity constant", **_DYNAMIC)(_dynamic("random"))
prune_schedules.register("rigl", doc="RigL (Evci et al. 2020): drop the smallest kept weights, regrow where the dense "
                                     "gradient is largest; α cosine-decayed to T_end", **_DYNAMIC)(_dynamic("gradient"))


@prune_schedules.register(
    "nm_decay",
    at=_step(0, "step of the first N:M masks"),
    first_n=param.Integer(7, bounds=(1, None), softbounds=(1, 16), doc="N of the first stage (of M)"),
    every=_step(500, "steps per stage", lo=1),
)
def nm_decay(at: int = 0, first_n: int = 7, every: int = 500):
    """Structure decay for N:M training (Bambhaniya et al. 2024, "Progressive Gradient Flow for Robust N:M
    Sparsity Training"): N halves, rounded up, every `every` steps down to the Sparsifier's n (7:8 → 4:8 → 2:8 → 1:8)."""
    def n_at(t: int, n_final: int) -> int:
        if t < at:
            return 0
        return max(n_final, -(-first_n // 2 ** ((t - at) // every)))  # ceil(first_n / 2^k)

    def f(t: int) -> float:
        return 1.0 if t >= at else 0.0

    f.n_at, f.first_n = n_at, first_n
    return f


@prune_schedules.register(
    "mask_decay",
    at=_step(0, "step of the first N:M masks (the decay starts there, β = 1)"),
    end=_step(1000, "step at which β reaches 0: the pruned weights exactly 0, the masks fixed from then on", lo=1),
    every=_step(50, "steps between two recomputations of the N:M masks (and of β)", lo=1),
    shape=param.Selector(default="linear", objects=["linear", "cosine", "exponential"],
                         doc="how β falls from 1 to 0: linearly, as a half cosine, or exponentially to 0.01 (then 0)"),
)
def mask_decay(at: int = 0, end: int = 1000, every: int = 50, shape: str = "linear"):
    """Mask decay for N:M training (Bambhaniya et al. 2024, Progressive Gradient Flow's MDGF): pruned weights are
    scaled by β_t, decaying from 1 at `at` to 0 at `end`, instead of being zeroed, and the N:M masks are
    recomputed every `every` steps from the dense weights' magnitudes, so they can change (`decay.py`)."""
    if end <= at:
        raise ValueError(f"pruning schedule 'mask_decay' rejected: end={end} must come after at={at}")

    def f(t: int) -> float:
        return 1.0 if t >= at else 0.0

    f.decay, f.at, f.end, f.every, f.shape = True, at, end, every, shape
    return f
