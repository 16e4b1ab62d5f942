"""The power-law kernel against a brute-force NumPy reference and against the `powerlaw` package."""
from __future__ import annotations

import warnings

import numpy as np
import numpy.testing as npt
import pytest
from trainlab.kernels import powerlaw as kp


def naive(x):
    """Every candidate xmin scanned in full: α by the closed-form MLE, D over the whole tail."""
    xs = np.sort(np.asarray(x, dtype=np.float64))
    n = xs.size
    left = np.searchsorted(xs, xs, side="left")
    alphas, ds = np.full(n, np.nan), np.full(n, np.nan)
    for k in range(n - 1):
        if left[k] != k or xs[k] == xs[-1]:
            continue
        tail, m = xs[k:], n - k
        a = 1 + m / np.sum(np.log(tail / xs[k]))
        alphas[k] = a
        ds[k] = np.max(np.abs(1 - (tail / xs[k]) ** (1 - a) - (left[k:] - k) / m))
    best = int(np.nanargmin(ds))
    return xs, alphas, ds, (alphas[best], xs[best], ds[best])


def _pareto(alpha, n, seed, scale=0.3):
    return (np.random.default_rng(seed).pareto(alpha - 1, n) + 1) * scale


CASES = {
    "fixed": np.array([0.5, 0.7, 1.0, 1.1, 1.3, 2.0, 2.2, 3.5, 5.0, 9.0, 20.0, 41.0]),
    "ties": np.array([1.0, 1.0, 2.0, 2.0, 2.0, 3.0, 4.0, 4.0, 8.0, 16.0, 16.0, 30.0]),
    "pareto": _pareto(2.5, 700, 1),
    "lognormal": np.random.default_rng(2).lognormal(0, 1.5, 500),
    "mp": np.linalg.eigvalsh((lambda w: w.T @ w / 600)(np.random.default_rng(3).standard_normal((600, 300)))),
}


@pytest.mark.parametrize("name", list(CASES))
def test_every_candidate_matches_the_full_scan(name):
    xs, alphas, ds, _ = kp.fit_all(CASES[name])
    ref_xs, ref_alphas, ref_ds, ref_best = naive(CASES[name])
    npt.assert_array_equal(xs, ref_xs)
    npt.assert_allclose(alphas, ref_alphas, rtol=1e-12)  # NaN in the same places
    npt.assert_allclose(ds, ref_ds, rtol=1e-9, atol=1e-12)
    npt.assert_allclose(kp.fit(CASES[name]), ref_best, rtol=1e-9)


@pytest.mark.parametrize("seed", range(5))
def test_random_inputs_match_the_full_scan(seed):
    rng = np.random.default_rng(seed)
    x = _pareto(rng.uniform(1.6, 3.5), int(rng.integers(20, 400)), seed) * rng.uniform(0.01, 100)
    npt.assert_allclose(kp.fit(x), naive(x)[3], rtol=1e-9)


def test_pruning_visits_fewer_points_than_the_scan():
    x = CASES["mp"]
    visits = kp.fit(x, return_visits=True)[3]
    assert visits < 0.25 * x.size**2 / 2  # the full scan visits about n²/2 points


@pytest.mark.parametrize("alpha", [1.8, 2.5])
def test_matches_the_powerlaw_package(alpha):
    powerlaw = pytest.importorskip("powerlaw", reason="the bench extra (pip install -e .[bench]) holds the peer")

    x = _pareto(alpha, 1000, 7)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = powerlaw.Fit(x, xmin=None, discrete=False, verbose=0)
    a, xmin, d = kp.fit(x)
    assert abs(a - ref.alpha) < 0.01
    assert xmin == pytest.approx(ref.xmin)
    assert d == pytest.approx(ref.D, abs=1e-9)


@pytest.mark.parametrize("bad, match", [
    (np.array([1.0, np.nan, 2.0, 3.0]), "NaN or infinity"),
    (np.array([1.0, -2.0, 3.0, 4.0]), "positive"),
    (np.array([1.0, 1.0, 2.0]), "3 distinct"),
    (np.ones((3, 3)), "one-dimensional"),
    (np.array(["a", "b", "c"]), "real numbers"),
])
def test_bad_input(bad, match):
    with pytest.raises(ValueError, match=match):
        kp.fit(bad)
