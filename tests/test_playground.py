"""The 2-D playground's kernels against torch: gradients by autograd, update rules by the optimizers they mirror."""
from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pytest
import pytorch_optimizer
import torch

from trainlab import playground as pg
from trainlab.kernels import playground as K


# ---------------------------------------------------------------- the functions, written again in torch

def torch_f(f: pg.Function, p: torch.Tensor) -> torch.Tensor:
    x, y = p[0], p[1]
    fp = f.fp
    if f.name == "quadratic":
        k, c, s = fp
        u, v = c * x + s * y, -s * x + c * y
        return 0.5 * (u**2 / k + v**2)
    if f.name == "rosenbrock":
        a, b = fp
        return (a - x) ** 2 + b * (y - x**2) ** 2
    if f.name == "beale":
        return sum((cst - x + x * y**i) ** 2 for i, cst in ((1, 1.5), (2, 2.25), (3, 2.625)))
    if f.name == "himmelblau":
        return (x**2 + y - 11) ** 2 + (x + y**2 - 7) ** 2
    if f.name == "rastrigin":
        (A,) = fp
        return 2 * A + sum(t**2 - A * torch.cos(2 * math.pi * t) for t in (x, y))
    if f.name == "saddle":
        (c,) = fp
        return 0.5 * c * x**2 - 0.5 * y**2 + 0.25 * y**4
    if f.name == "two_valleys":
        k, x1, y1, x2, y2 = fp
        q1 = 0.5 * ((x - x1) ** 2 + (y - y1) ** 2 / k)
        q2 = 0.5 * ((x - x2) ** 2 / k + (y - y2) ** 2)
        return q1 * q2 / (q1 + q2)
    raise KeyError(f.name)


OPTIONS = {"quadratic": {"condition": 50.0, "angle": 30.0}, "rosenbrock": {"a": 1.5, "b": 20.0},
           "rastrigin": {"A": 3.0}, "saddle": {"c": 0.3}, "two_valleys": {"condition": 4.0}}


def test_every_function_is_written_in_torch_too():
    assert sorted(pg.functions.names()) == sorted(
        ["quadratic", "rosenbrock", "beale", "himmelblau", "rastrigin", "saddle", "two_valleys"])


@pytest.mark.parametrize("options", [False, True], ids=["defaults", "options"])
@pytest.mark.parametrize("name", pg.functions.names())
def test_value_and_gradient_match_autograd(name, options):
    f = pg.as_function((name, OPTIONS.get(name, {})) if options else name)
    rng = np.random.default_rng(0)
    x0, x1, y0, y1 = f.box
    xs, ys = rng.uniform(x0, x1, 25), rng.uniform(y0, y1, 25)
    p = torch.tensor(np.stack([xs, ys]), dtype=torch.float64, requires_grad=True)  # (2, 25): 25 points at once
    value = torch_f(f, p)
    (grad,) = torch.autograd.grad(value.sum(), p)
    np.testing.assert_allclose(f(xs, ys), value.detach().numpy(), rtol=1e-12, atol=1e-12)
    gx, gy = f.gradient(xs, ys)
    np.testing.assert_allclose(np.stack([gx, gy]), grad.numpy(), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", pg.functions.names())
def test_declared_minima_are_stationary_at_the_minimum_value(name):
    f = pg.as_function((name, OPTIONS.get(name, {})))
    x, y = np.array(f.minima).T
    np.testing.assert_allclose(f(x, y), f.fmin, atol=1e-12)
    assert np.abs(f.gradient(x, y)).max() < 1e-9
    x0, x1, y0, y1 = f.box
    assert all(x0 <= x <= x1 and y0 <= y <= y1 for x, y in (*f.minima, f.start))


# ---------------------------------------------------------------- update rules against the optimizers they mirror

def _betas(*keys):
    return lambda hp: tuple(hp[k] for k in keys)


# playground rule -> how to build the torch optimizer it mirrors from its hyperparameters
TORCH = {
    "sgd": lambda p, hp: torch.optim.SGD(p, lr=hp["lr"], weight_decay=hp["weight_decay"]),
    "momentum": lambda p, hp: torch.optim.SGD(p, lr=hp["lr"], momentum=hp["momentum"], dampening=hp["dampening"],
                                              weight_decay=hp["weight_decay"]),
    "nesterov": lambda p, hp: torch.optim.SGD(p, lr=hp["lr"], momentum=hp["momentum"], nesterov=True,
                                              weight_decay=hp["weight_decay"]),
    "adam": lambda p, hp: torch.optim.Adam(p, lr=hp["lr"], betas=_betas("beta1", "beta2")(hp), eps=hp["eps"],
                                           weight_decay=hp["weight_decay"]),
    "adamw": lambda p, hp: torch.optim.AdamW(p, lr=hp["lr"], betas=_betas("beta1", "beta2")(hp), eps=hp["eps"],
                                             weight_decay=hp["weight_decay"]),
    "rmsprop": lambda p, hp: torch.optim.RMSprop(p, lr=hp["lr"], alpha=hp["alpha"], eps=hp["eps"],
                                                 momentum=hp["momentum"], weight_decay=hp["weight_decay"]),
    "adagrad": lambda p, hp: torch.optim.Adagrad(p, lr=hp["lr"], lr_decay=hp["lr_decay"], eps=hp["eps"],
                                                 weight_decay=hp["weight_decay"]),
    "lion": lambda p, hp: pytorch_optimizer.Lion(p, lr=hp["lr"], betas=_betas("beta1", "beta2")(hp),
                                                 weight_decay=hp["weight_decay"]),
    "adan": lambda p, hp: pytorch_optimizer.Adan(p, lr=hp["lr"], betas=_betas("beta1", "beta2", "beta3")(hp),
                                                 eps=hp["eps"], weight_decay=hp["weight_decay"]),
}

# (rule, hyperparameters, function, start): bounded paths, with every hyperparameter moved somewhere
CASES = [
    ("sgd", {"lr": 1e-3}, "rosenbrock", None),
    ("sgd", {"lr": 0.3, "weight_decay": 0.05}, ("quadratic", {"condition": 10, "angle": 20}), None),
    ("momentum", {"lr": 1e-3, "momentum": 0.9}, "rosenbrock", None),
    ("momentum", {"lr": 0.01, "momentum": 0.7, "dampening": 0.3, "weight_decay": 0.02}, "himmelblau", None),
    ("nesterov", {"lr": 1e-3, "momentum": 0.9}, "rosenbrock", None),
    ("nesterov", {"lr": 0.01, "momentum": 0.8, "weight_decay": 0.01}, "beale", None),
    ("adam", {"lr": 0.02}, "rosenbrock", None),
    ("adam", {"lr": 0.01, "beta1": 0.8, "beta2": 0.99, "eps": 1e-4, "weight_decay": 0.05}, "himmelblau", None),
    ("adamw", {"lr": 0.02, "weight_decay": 0.1}, "rosenbrock", None),
    ("adamw", {"lr": 0.01, "beta1": 0.7, "beta2": 0.95, "eps": 1e-3, "weight_decay": 0.05}, "two_valleys", None),
    ("rmsprop", {"lr": 1e-3}, "rosenbrock", None),
    ("rmsprop", {"lr": 1e-3, "alpha": 0.9, "eps": 1e-4, "momentum": 0.5, "weight_decay": 0.01}, "beale", None),
    ("adagrad", {"lr": 0.1}, "rosenbrock", None),
    ("adagrad", {"lr": 0.3, "lr_decay": 0.01, "eps": 1e-6, "weight_decay": 0.02}, "himmelblau", None),
    ("lion", {"lr": 1e-3}, "rosenbrock", None),
    ("lion", {"lr": 3e-3, "beta1": 0.8, "beta2": 0.95, "weight_decay": 0.1}, "beale", None),
    ("adan", {"lr": 0.01}, "rosenbrock", None),
    # (eps 1e-4 here makes the last steps at the minimum chaotic: roundoff grows to 1e-4 by step 500)
    ("adan", {"lr": 0.02, "beta1": 0.9, "beta2": 0.8, "beta3": 0.95, "eps": 1e-2, "weight_decay": 0.05},
     "himmelblau", None),
]
STEPS = 500


def test_every_rule_has_a_reference_and_cases():
    assert sorted(TORCH) == sorted(pg.rules.names()) and len(pg.rules) == 9
    assert {c[0] for c in CASES} == set(pg.rules.names())


def torch_path(rule: str, hp: dict, f: pg.Function, start, steps: int) -> tuple[np.ndarray, np.ndarray]:
    p = torch.tensor(start, dtype=torch.float64, requires_grad=True)
    opt = TORCH[rule]([p], hp)
    xy, loss = [p.detach().clone().numpy()], []
    for _ in range(steps):
        opt.zero_grad()
        value = torch_f(f, p)
        value.backward()
        loss.append(value.item())
        opt.step()
        xy.append(p.detach().clone().numpy())
    loss.append(torch_f(f, p).item())
    return np.array(xy), np.array(loss)


@pytest.mark.parametrize("rule, hp, function, start", CASES,
                         ids=[f"{c[0]}-{c[2] if isinstance(c[2], str) else c[2][0]}" for c in CASES])
def test_rule_follows_its_torch_optimizer_for_500_steps(rule, hp, function, start):
    (path,) = pg.trajectories(function, [(rule, hp)], start=start, steps=STEPS)
    f = pg.as_function(function)
    full = {**pg.rules[rule].defaults(), **hp}
    assert path.hyperparameters == full
    xy, loss = torch_path(rule, full, f, path.start, STEPS)
    assert not path.diverged and path.xy.shape == (STEPS + 1, 2)
    assert np.abs(xy[-1] - xy[0]).max() > 0.1  # it went somewhere
    np.testing.assert_allclose(path.xy, xy, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(path.loss, loss, rtol=1e-8, atol=1e-12)


def test_sgd_on_the_quadratic_is_the_closed_form_and_divergence_is_cut():
    k, lr, (x0, y0) = 20.0, 2.5, (-4.0, 1.0)  # lr > 2: the steep direction grows by |1 - lr| = 1.5 per step
    ok, bad = pg.trajectories(("quadratic", {"condition": k}), [("sgd", {"lr": 0.5}), ("sgd", {"lr": lr})],
                              start=(x0, y0), steps=300)
    t = np.arange(301)
    np.testing.assert_allclose(ok.xy, np.c_[x0 * (1 - 0.5 / k) ** t, y0 * 0.5**t], rtol=1e-12, atol=1e-300)
    assert not ok.diverged and ok.final_loss == pytest.approx(0.5 * ok.xy[-1, 0] ** 2 / k, rel=1e-12)
    limit = 100 * 5.0  # 100 times the quadratic's view box
    first_out = int(np.argmax(np.abs(y0 * (1 - lr) ** t) > limit))
    assert bad.diverged and bad.final_loss == math.inf
    assert len(bad.xy) == first_out and np.isfinite(bad.xy).all() and np.isfinite(bad.loss).all()


def test_a_path_to_infinity_stops_at_the_last_finite_point():
    (path,) = pg.trajectories("rosenbrock", [("sgd", {"lr": 1.0})], steps=1000)
    assert path.diverged and 1 <= len(path.xy) < 10
    assert np.isfinite(path.xy).all() and np.isfinite(path.loss).all()


# ---------------------------------------------------------------- input checks

@pytest.mark.parametrize("call, message", [
    (lambda: pg.trajectories("banana", ["sgd"]), "unknown function 'banana'; valid functions: quadratic, rosenbrock"),
    (lambda: pg.trajectories("rosenbrock", ["sgd", "adamax"]), "unknown update rule 'adamax'; valid update rules: sgd"),
    (lambda: pg.trajectories("rosenbrock", ["sgd"] * 9), "at most 8 optimizers at once, got 9"),
    (lambda: pg.trajectories("rosenbrock", ["sgd"], start=(np.nan, 0)), "start points must be finite"),
    (lambda: pg.trajectories("rosenbrock", ["sgd", "adam"], start=[(0, 0)] * 3), "one per optimizer (2 of them)"),
    (lambda: pg.trajectories("rosenbrock", [("adam", {"lr": -1})]), "lr=-1 rejected for adam: allowed range (0, inf)"),
    (lambda: pg.trajectories("rosenbrock", [("adam", {"beta1": 1.0})]),
     "beta1=1.0 rejected for adam: allowed range [0, 1)"),
    (lambda: pg.trajectories("rosenbrock", [("sgd", {"momentum": 0.9})]), "sgd has no setting 'momentum'"),
    (lambda: pg.trajectories(("rosenbrock", {"b": 0}), ["sgd"]), "b=0 rejected for rosenbrock"),
    (lambda: pg.trajectories("rosenbrock", ["sgd"], steps=0), "steps must be an integer in [1, 100000]"),
    (lambda: pg.fair_race("rosenbrock", ["sgd"], lrs=[0.1, -1]), "lrs must be a non-empty list of positive"),
    (lambda: pg.contour_grid("rosenbrock", box=(1, 0, 0, 1)), "box is (x0, x1, y0, y1)"),
])
def test_bad_input_says_what_to_change(call, message):
    with pytest.raises(ValueError) as e:
        call()
    assert message in str(e.value)


def test_kernel_wrapper_checks_shapes():
    with pytest.raises(ValueError, match="want rules"):
        K.trajectories(0, np.ones(3), np.zeros(2, dtype=np.int64), np.zeros((2, 3)), np.zeros((2, 2)), 10)
    with pytest.raises(ValueError, match="update-rule codes"):
        K.trajectories(0, np.ones(3), np.array([9]), np.zeros((1, K.N_HP)), np.zeros((1, 2)), 10)


# ---------------------------------------------------------------- fair race

def test_fair_race_picks_the_argmin_of_a_slow_per_lr_loop():
    names = ["sgd", "momentum", ("adam", {"beta1": 0.8}), "lion", "adan"]
    lrs = pg.lr_grid(1e-4, 1.0, 9)
    race = pg.fair_race("rosenbrock", names, steps=300, lrs=lrs)
    assert race.losses.shape == (5, 9)
    for i, spec in enumerate(names):
        name, hp = (spec, {}) if isinstance(spec, str) else spec
        finals = np.array([pg.trajectories("rosenbrock", [(name, {**hp, "lr": lr})], steps=300)[0].final_loss
                           for lr in lrs])
        np.testing.assert_array_equal(race.losses[i], finals)  # the batched call is the same arithmetic
        best = race.best[i]
        assert best.lr == lrs[np.argmin(finals)] and best.final_loss == finals.min()
        assert best.hyperparameters == {**pg.rules[name].defaults(), **hp, "lr": best.lr}
    assert np.isinf(race.losses[0, -1])  # sgd at lr=1 diverges, and scores inf
    assert list(race.best_lr) == ["sgd", "momentum", "adam", "lion", "adan"]


def test_fair_race_takes_every_rule_at_once():
    race = pg.fair_race("quadratic", pg.rules.names(), steps=50, lrs=[0.01, 0.1])
    assert race.losses.shape == (9, 2) and len(race.best) == 9


# ---------------------------------------------------------------- contour grid

def test_contour_grid_is_log_gap_above_the_minimum_and_cached():
    f = pg.as_function(("rosenbrock", {"b": 10.0}))
    xs, ys, z = pg.contour_grid(f, n=40)
    X, Y = np.meshgrid(xs, ys)
    value = torch_f(f, torch.tensor(np.stack([X, Y]))).numpy()
    gap = value - f.fmin
    np.testing.assert_allclose(z, np.log10(gap + 1e-6 * gap.max()), rtol=1e-10)
    assert xs[0] == f.box[0] and ys[-1] == f.box[3] and z.shape == (40, 40)
    assert pg.contour_grid(("rosenbrock", {"b": 10.0}), n=40)[2] is z


def test_kernels_give_the_same_paths_with_the_jit_off():
    """With NUMBA_DISABLE_JIT=1 (how coverage sees the kernels) the plain-Python kernels agree."""
    f = pg.as_function("beale")
    rules = [pg.rules[r].meta.code for r in pg.rules.names()]
    hps = np.stack([pg.rules[r].build(**pg.rules[r].defaults()) for r in pg.rules.names()])
    hps[:, 0] = 0.01
    args = (f.code, list(f.fp), rules, hps.tolist(), [f.start] * len(rules), 30)
    # the kernel file alone, loaded by path: no torch import, no compiled cache
    code = ("import importlib.util, sys, numpy as np; "
            f"spec = importlib.util.spec_from_file_location('k', {K.__file__!r}); "
            "k = importlib.util.module_from_spec(spec); spec.loader.exec_module(k); "
            f"c, fp, r, h, s, n = {args!r}; "
            "xy, loss, m = k.trajectories(c, np.array(fp), np.array(r), np.array(h), np.array(s), n); "
            "print(repr([xy.tolist(), m.tolist()]))")
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "NUMBA_DISABLE_JIT": "1"},
                         capture_output=True, text=True, timeout=120, check=True).stdout
    xy, n = eval(out, {"nan": np.nan})  # unreached points are nan
    jit = K.trajectories(args[0], np.array(args[1]), np.array(rules), hps, np.array(args[4]), 30)
    np.testing.assert_array_equal(n, jit[2])
    np.testing.assert_allclose(np.array(xy), jit[0], rtol=1e-12)
