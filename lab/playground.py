"""The 2-D playground: optimizers racing on analytic test functions, computed by Numba kernels.

    from trainlab import playground as pg
    paths = pg.trajectories("quadratic", [("sgd", {"lr": 0.5}), ("momentum", {"lr": 0.5, "momentum": 0.9})], steps=100)
    paths[1].xy, paths[1].loss, paths[1].diverged
    race = pg.fair_race("rosenbrock", ["sgd", "adam", "lion"], steps=1000)
    race.best_lr                       # {"sgd": ..., "adam": ..., "lion": ...}

Two registries: `functions` (the test functions, each with its declared options, view box, default
start and known minima) and `rules` (the nine update rules). `rules` is not `trainlab.optimizers`:
those entries build torch optimizers for a Run, while these are the nine update rules mirrored line
by line in Numba (kernels/playground.py), addressed by int code so that a batch of trajectories
with different rules is one compiled call. tests/test_playground.py holds each rule to the torch
(or pytorch_optimizer) optimizer it mirrors.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import pandas as pd
import param

from trainlab.kernels import playground as K

from .registry import LogNumber, Registry, parse_spec, validate

__all__ = ["Function", "Race", "Trajectory", "as_function", "contour_grid", "fair_race", "functions", "lr_grid",
           "rules", "trajectories"]

MAX_OPTIMIZERS = 8
MAX_RACE = 16  # optimizers in one fair race (every rule fits)
MAX_STEPS = 100_000

functions = Registry("function")
rules = Registry("update rule")


# ---------------------------------------------------------------- test functions

@dataclass(frozen=True)
class Function:
    """A test function with its options applied: what the kernels evaluate and the plots frame."""

    name: str
    code: int
    fp: tuple[float, ...]  # the kernel's parameter row
    box: tuple[float, float, float, float]  # default view: x0, x1, y0, y1
    start: tuple[float, float]  # default start point
    minima: tuple[tuple[float, float], ...]  # the global minima (every one, for Himmelblau and the valleys)
    fmin: float  # the minimum value
    options: tuple[tuple[str, Any], ...] = ()

    def __call__(self, x, y) -> np.ndarray:
        """f at points x, y (numbers or arrays, broadcast together)."""
        return K.evaluate(self.code, np.array(self.fp), x, y)[0]

    def gradient(self, x, y) -> tuple[np.ndarray, np.ndarray]:
        """The gradient (df/dx, df/dy) at points x, y."""
        return K.evaluate(self.code, np.array(self.fp), x, y)[1:]


def _function(name: str, doc: str, **params: param.Parameter):
    """Register a test function; its constructor returns the Function for the given options."""

    def deco(fn):
        def build(**values) -> Function:
            f = fn(**values)
            return Function(name=name, options=tuple(values.items()), **f)

        return functions.register(name, doc=doc, **params)(build)

    return deco


@_function("quadratic", "ill-conditioned quadratic 0.5 (u²/κ + v²), its axes (u, v) turned by an angle",
           condition=LogNumber(20.0, bounds=(1, 1e6), softbounds=(1, 1000),
                               doc="condition number κ: the ratio of the largest to the smallest curvature"),
           angle=param.Number(0.0, bounds=(-90, 90), softbounds=(-90, 90), step=5,
                              doc="rotation of the valley in degrees (0: along the axes, where per-coordinate "
                                  "methods such as Adam can undo the conditioning)"))
def _quadratic(condition, angle):
    a = math.radians(angle)
    return dict(code=K.QUADRATIC, fp=(condition, math.cos(a), math.sin(a)), box=(-5.0, 5.0, -3.0, 3.0),
                start=(-4.5, 1.5), minima=((0.0, 0.0),), fmin=0.0)


@_function("rosenbrock", "Rosenbrock's banana valley (a - x)² + b (y - x²)²",
           a=param.Number(1.0, bounds=(-3, 3), softbounds=(0.5, 2), step=0.1, doc="minimum at (a, a²)"),
           b=LogNumber(100.0, bounds=(0, None), inclusive_bounds=(False, True), softbounds=(1, 1000),
                       doc="steepness of the valley's walls"))
def _rosenbrock(a, b):
    return dict(code=K.ROSENBROCK, fp=(a, b), box=(-2.0, 2.0, -1.0, 3.0), start=(-1.5, 2.5),
                minima=((a, a * a),), fmin=0.0)


@_function("beale", "Beale's function: flat plateaus and sharp ridges, minimum at (3, 0.5)")
def _beale():
    return dict(code=K.BEALE, fp=(), box=(-4.5, 4.5, -4.5, 4.5), start=(1.0, 1.4), minima=((3.0, 0.5),), fmin=0.0)


@_function("himmelblau", "Himmelblau's function: four minima of equal value")
def _himmelblau():
    minima = ((3.0, 2.0), (-2.805118086952745, 3.131312518250573), (-3.779310253377747, -3.283185991286170),
              (3.584428340330492, -1.848126526964404))
    return dict(code=K.HIMMELBLAU, fp=(), box=(-5.0, 5.0, -5.0, 5.0), start=(0.0, -0.5), minima=minima, fmin=0.0)


@_function("rastrigin", "Rastrigin's function: a bowl covered by a lattice of local minima",
           A=param.Number(10.0, bounds=(0, None), softbounds=(0, 20), step=0.5, doc="depth of the ripples"))
def _rastrigin(A):
    return dict(code=K.RASTRIGIN, fp=(A,), box=(-5.12, 5.12, -5.12, 5.12), start=(4.3, 3.6),
                minima=((0.0, 0.0),), fmin=0.0)


@_function("saddle", "a saddle 0.5 c x² - 0.5 y² + 0.25 y⁴ at the origin, minima at (0, ±1)",
           c=param.Number(1.0, bounds=(0, None), inclusive_bounds=(False, True), softbounds=(0.05, 5), step=0.05,
                          doc="curvature along x (along y it is -1 at the saddle)"))
def _saddle(c):
    return dict(code=K.SADDLE, fp=(c,), box=(-2.0, 2.0, -1.6, 1.6), start=(-1.8, 1e-3),
                minima=((0.0, 1.0), (0.0, -1.0)), fmin=-0.25)


@_function("two_valleys", "two valleys of opposing curvature: one steep across x, the other steep across y",
           condition=LogNumber(10.0, bounds=(1, 1e4), softbounds=(1, 1000),
                               doc="ratio of steep to flat curvature within each valley"))
def _two_valleys(condition):
    centres = ((-2.0, -1.0), (2.0, 1.0))
    return dict(code=K.VALLEYS, fp=(condition, *centres[0], *centres[1]), box=(-4.0, 4.0, -3.0, 3.0),
                start=(-0.5, 2.5), minima=centres, fmin=0.0)


def as_function(spec: str | tuple[str, dict] | Function) -> Function:
    """A Function from a name, a (name, options) pair, or a Function (returned as is)."""
    if isinstance(spec, Function):
        return spec
    name, options = parse_spec(spec, "a function")
    return functions.build(name, **options)


# ---------------------------------------------------------------- update rules

def _lr(default):
    return LogNumber(default, bounds=(0, None), inclusive_bounds=(False, True), softbounds=(1e-5, 10),
                     doc="learning rate (step size)")


def _beta(default, what):
    return param.Number(default, bounds=(0, 1), inclusive_bounds=(True, False), softbounds=(0, 0.999), step=0.001,
                        doc=f"decay rate of the {what}")


def _momentum(default, low_open=False):
    return param.Number(default, bounds=(0, 1), inclusive_bounds=(not low_open, False), softbounds=(0, 0.99),
                        step=0.01, doc="momentum coefficient")


def _eps(default=1e-8):
    return LogNumber(default, bounds=(0, None), inclusive_bounds=(False, True), softbounds=(1e-12, 1e-1),
                     doc="added to the denominator for numerical stability")


def _wd(doc="L2 penalty, added to the gradient"):
    return param.Number(0.0, bounds=(0, None), softbounds=(0, 0.1), step=1e-3, doc=doc)


@dataclass(frozen=True)
class Rule:
    """What the playground's registry knows of an update rule: its kernel code and the optimizer it mirrors."""

    code: int
    mirrors: str


def _rule(name: str, code: int, mirrors: str, doc: str, **params: param.Parameter):
    """Register an update rule: its constructor returns the kernel's hyperparameter row (lr first)."""
    order = list(params)

    def build(**values) -> np.ndarray:
        row = np.zeros(K.N_HP)
        row[: len(order)] = [values[k] for k in order]
        return row

    rules.register(name, doc=doc, meta=Rule(code, mirrors), **params)(build)


_rule("sgd", K.SGD, "torch.optim.SGD", "plain gradient descent", lr=_lr(1e-3), weight_decay=_wd())
_rule("momentum", K.MOMENTUM, "torch.optim.SGD(momentum=...)", "heavy-ball momentum", lr=_lr(1e-3),
      momentum=_momentum(0.9), dampening=param.Number(0.0, bounds=(0, 1), softbounds=(0, 1), step=0.01,
                                                      doc="fraction of the gradient left out of the buffer"),
      weight_decay=_wd())
_rule("nesterov", K.NESTEROV, "torch.optim.SGD(momentum=..., nesterov=True)", "Nesterov momentum", lr=_lr(1e-3),
      momentum=_momentum(0.9, low_open=True), weight_decay=_wd())
_rule("adam", K.ADAM, "torch.optim.Adam", "Adam", lr=_lr(0.05), beta1=_beta(0.9, "first moment"),
      beta2=_beta(0.999, "second moment"), eps=_eps(), weight_decay=_wd())
_rule("adamw", K.ADAMW, "torch.optim.AdamW", "Adam with decoupled weight decay", lr=_lr(0.05),
      beta1=_beta(0.9, "first moment"), beta2=_beta(0.999, "second moment"), eps=_eps(),
      weight_decay=_wd("decoupled decay: the weights shrink by lr × weight_decay each step"))
_rule("rmsprop", K.RMSPROP, "torch.optim.RMSprop", "RMSprop", lr=_lr(0.01), alpha=_beta(0.99, "squared gradient"),
      eps=_eps(), momentum=_momentum(0.0), weight_decay=_wd())
_rule("adagrad", K.ADAGRAD, "torch.optim.Adagrad", "Adagrad", lr=_lr(0.5),
      lr_decay=param.Number(0.0, bounds=(0, None), softbounds=(0, 0.1), step=1e-3,
                            doc="lr / (1 + (step - 1) lr_decay)"),
      eps=_eps(1e-10), weight_decay=_wd())
_rule("lion", K.LION, "pytorch_optimizer.Lion", "Lion: the sign of interpolated momentum", lr=_lr(0.01),
      beta1=_beta(0.9, "momentum in the update"), beta2=_beta(0.99, "momentum kept"),
      weight_decay=_wd("decoupled decay: the weights shrink by lr × weight_decay each step"))
_rule("adan", K.ADAN, "pytorch_optimizer.Adan", "Adan: Nesterov momentum of gradient differences", lr=_lr(0.05),
      beta1=_beta(0.98, "gradient"), beta2=_beta(0.92, "gradient difference"),
      beta3=_beta(0.99, "squared corrected gradient"), eps=_eps(),
      weight_decay=_wd("proximal decay: the weights are divided by 1 + lr × weight_decay each step"))


# ---------------------------------------------------------------- trajectories

@dataclass
class Trajectory:
    """One optimizer's path: points xy (n, 2) and the loss at each; n = steps + 1 unless it diverged."""

    optimizer: str
    hyperparameters: dict[str, float]
    start: tuple[float, float]
    xy: np.ndarray
    loss: np.ndarray
    diverged: bool
    steps: int

    @property
    def lr(self) -> float:
        return self.hyperparameters["lr"]

    @property
    def final_loss(self) -> float:
        """The loss after the last step, inf if the path diverged."""
        return math.inf if self.diverged else float(self.loss[-1])

    def frame(self) -> pd.DataFrame:
        """A row per point of the path: optimizer, step (0 is the start), x, y, loss, then its hyperparameters."""
        return pd.DataFrame({"optimizer": self.optimizer, "step": np.arange(len(self.xy)), "x": self.xy[:, 0],
                             "y": self.xy[:, 1], "loss": np.asarray(self.loss, float), **self.hyperparameters})


def frame(paths: Sequence[Trajectory], function: Function | None = None) -> pd.DataFrame:
    """Paths (`trajectories`'s, or a race's best) as one tidy frame: `path` (1, 2, ... in the order given) and
    `diverged` beside each path's rows; the function's name and its options (`function.<option>`) as columns when
    given. A hyperparameter a rule lacks is NaN."""
    parts = []
    for i, p in enumerate(paths):
        part = p.frame()
        part.insert(0, "path", i + 1)
        parts.append(part.assign(diverged=p.diverged))
    out = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(
        {c: [] for c in ("path", "optimizer", "step", "x", "y", "loss", "diverged")})
    if function is not None:
        out.insert(0, "function", function.name)
        for k, v in function.options:
            out[f"function.{k}"] = v
    return out


@dataclass
class Race:
    """A fair race: each optimizer's lr picked from one grid by the final loss after the same steps."""

    function: Function
    optimizers: list[str]
    lrs: np.ndarray  # (L,) the grid
    losses: np.ndarray  # (O, L) final loss of each (optimizer, lr); inf where the path diverged
    best: list[Trajectory] = field(default_factory=list)  # each optimizer's path at its chosen lr

    @property
    def best_lr(self) -> dict[str, float]:
        """optimizer label -> chosen lr (labels are names, numbered when a name repeats)."""
        return dict(zip(_labels(self.optimizers), (t.lr for t in self.best)))

    def frame(self) -> pd.DataFrame:
        """A row per (optimizer, lr) of the grid: optimizer (its label), lr, final_loss (inf: diverged), chosen
        (the lr the race picked for it), with the function and the steps."""
        labels, lrs = _labels(self.optimizers), np.asarray(self.lrs, float)
        return pd.DataFrame({"function": self.function.name, "optimizer": np.repeat(labels, len(lrs)),
                             "lr": np.tile(lrs, len(labels)), "final_loss": np.asarray(self.losses, float).ravel(),
                             "chosen": np.concatenate([lrs == t.lr for t in self.best]),
                             "steps": self.best[0].steps})


def _labels(names: list[str]) -> list[str]:
    return [n if names.count(n) == 1 else f"{n} {names[:i].count(n) + 1}" for i, n in enumerate(names)]


def _optimizers(optimizers, most: int = MAX_OPTIMIZERS) -> list[tuple[str, dict[str, float], int, np.ndarray]]:
    """Validated (name, hyperparameters, code, hp row) for each optimizer."""
    if isinstance(optimizers, str) or (isinstance(optimizers, tuple) and len(optimizers) == 2
                                       and isinstance(optimizers[1], dict)):
        optimizers = [optimizers]  # one optimizer, given alone
    optimizers = list(optimizers)
    if not optimizers:
        raise ValueError("give at least one optimizer; valid names: " + ", ".join(rules.names()))
    if len(optimizers) > most:
        raise ValueError(f"at most {most} optimizers at once, got {len(optimizers)}")
    out = []
    for spec in optimizers:
        name, hp = parse_spec(spec, "an optimizer")
        entry = rules[name]
        hp = validate(_checker(name), hp, name)
        values = {**entry.defaults(), **hp}
        out.append((name, values, entry.meta.code, entry.build(**values)))
    return out


@functools.cache
def _checker(rule: str) -> param.Parameterized:
    """One options object per rule to validate against: a fresh one per call costs 0.2 ms, a slider move 8."""
    return rules[rule].options()


def _starts(start, f: Function, n: int) -> np.ndarray:
    if start is None:
        s = np.tile(f.start, (n, 1))
    else:
        s = np.asarray(start, dtype=float)
        if s.shape == (2,):
            s = np.tile(s, (n, 1))
        if s.shape != (n, 2):
            raise ValueError(f"start is one (x, y) point or one per optimizer ({n} of them); got shape {s.shape}")
    if not np.isfinite(s).all():
        raise ValueError(f"start points must be finite, got {s.tolist()}")
    return s


def _steps(steps) -> int:
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or not 1 <= steps <= MAX_STEPS:
        raise ValueError(f"steps must be an integer in [1, {MAX_STEPS}], got {steps!r}")
    return int(steps)


def _limit(f: Function, starts: np.ndarray) -> float:
    """Past this coordinate a path counts as diverged: 100 times the view, whatever the start."""
    return 100.0 * max(max(abs(v) for v in f.box), float(np.abs(starts).max()), 1.0)


def _path(name, hp, start, xy, loss, n, steps) -> Trajectory:
    return Trajectory(name, hp, (float(start[0]), float(start[1])), xy[:n], loss[:n], bool(n < steps + 1), steps)


def trajectories(function: str | tuple[str, dict] | Function = "rosenbrock", optimizers=("sgd", "adam"),
                 start=None, steps: int = 200) -> list[Trajectory]:
    """Paths of up to 8 optimizers on a test function, computed in one kernel call.

    Args:
        function: a name from `functions` ("quadratic", "rosenbrock", "beale", "himmelblau",
            "rastrigin", "saddle", "two_valleys") or a (name, options) pair, e.g. ("quadratic", {"condition": 100}).
        optimizers: names from `rules`, or (name, hyperparameters) pairs, e.g. [("sgd", {"lr": 0.1}),
            ("momentum", {"lr": 0.1, "momentum": 0.9})]; unset hyperparameters take their defaults.
        start: one (x, y) for all, one per optimizer, or None for the function's default start.
        steps: number of updates; each path holds steps + 1 points unless it diverged.

    A path that turns non-finite or leaves 100 times the view box stops there, with `diverged=True`.
    """
    f = as_function(function)
    opts = _optimizers(optimizers)
    starts = _starts(start, f, len(opts))
    steps = _steps(steps)
    xy, loss, n = K.trajectories(f.code, np.array(f.fp), np.array([o[2] for o in opts]),
                                 np.stack([o[3] for o in opts]), starts, steps, _limit(f, starts))
    return [_path(name, hp, starts[j], xy[j], loss[j], n[j], steps) for j, (name, hp, _, _) in enumerate(opts)]


def lr_grid(lo: float = 1e-5, hi: float = 1.0, n: int = 16) -> np.ndarray:
    """n learning rates evenly spaced in log between lo and hi."""
    if not (0 < lo < hi and math.isfinite(hi)) or n < 2:
        raise ValueError(f"the lr grid needs 0 < lo < hi and n >= 2, got lo={lo}, hi={hi}, n={n}")
    return np.logspace(math.log10(lo), math.log10(hi), int(n))


def fair_race(function: str | tuple[str, dict] | Function = "rosenbrock", optimizers=("sgd", "adam"), start=None,
              steps: int = 1000, lrs: Sequence[float] | None = None) -> Race:
    """Tune each optimizer's lr on one log grid, same step budget, by the final loss.

    All (optimizer, lr) paths are computed in one batched kernel call (threads over the pairs);
    an optimizer's hyperparameters other than lr are kept as given. A diverged path scores inf;
    ties go to the smaller lr. Up to 16 optimizers (each rule fits). `lrs` defaults to `lr_grid()`
    (16 values from 1e-5 to 1).
    """
    f = as_function(function)
    opts = _optimizers(optimizers, most=MAX_RACE)
    starts = _starts(start, f, len(opts))
    steps = _steps(steps)
    grid = lr_grid() if lrs is None else np.asarray(lrs, dtype=float)
    if grid.ndim != 1 or grid.size == 0 or not (np.isfinite(grid) & (grid > 0)).all():
        raise ValueError(f"lrs must be a non-empty list of positive finite numbers, got {lrs!r}")
    n_opt, n_lr = len(opts), grid.size
    hps = np.repeat(np.stack([o[3] for o in opts]), n_lr, axis=0)  # (n_opt * n_lr, N_HP), lr varies fastest
    hps[:, 0] = np.tile(grid, n_opt)
    codes = np.repeat([o[2] for o in opts], n_lr)
    xy, loss, n = K.trajectories(f.code, np.array(f.fp), codes, hps, np.repeat(starts, n_lr, axis=0), steps,
                                 _limit(f, starts))
    final = np.where(n == steps + 1, loss[:, -1], np.inf).reshape(n_opt, n_lr)
    race = Race(f, [o[0] for o in opts], grid, final)
    for i, (name, hp, _, _) in enumerate(opts):
        k = int(np.argmin(final[i]))  # the first minimum: the smaller lr on a tie
        j = i * n_lr + k
        race.best.append(_path(name, {**hp, "lr": float(grid[k])}, starts[i], xy[j], loss[j], n[j], steps))
    return race


@functools.lru_cache(maxsize=32)
def _grid(f: Function, box: tuple[float, float, float, float], n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x0, x1, y0, y1 = box
    xs, ys = np.linspace(x0, x1, n), np.linspace(y0, y1, n)
    z = K.loss_grid(f.code, np.array(f.fp), xs, ys)
    gap = np.maximum(z - f.fmin, 0.0)
    # a floor a millionth of the view's range keeps the minima finite and the contours spread
    z = np.log10(gap + 1e-6 * max(float(gap.max()), 1e-12))
    for a in (xs, ys, z):
        a.setflags(write=False)
    return xs, ys, z


def contour_grid(function: str | tuple[str, dict] | Function = "rosenbrock", n: int = 200,
                 box: tuple[float, float, float, float] | None = None):
    """(xs, ys, z) with z[r, c] = log10(f(xs[c], ys[r]) - fmin + floor), over the view box; cached per function."""
    f = as_function(function)
    box = f.box if box is None else tuple(float(v) for v in box)
    if len(box) != 4 or not (box[0] < box[1] and box[2] < box[3]) or not np.isfinite(box).all():
        raise ValueError(f"box is (x0, x1, y0, y1) with x0 < x1 and y0 < y1, got {box}")
    if not 2 <= int(n) <= 2000:
        raise ValueError(f"n must be in [2, 2000], got {n}")
    return _grid(f, box, int(n))
