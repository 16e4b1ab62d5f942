"""Signal propagation: the variance map against closed forms and a wide random network, propagation's
statistics against direct computation, its probe, and the coordinate check's width dependence."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.integrate import quad
from scipy.special import erf
from torch import nn

from trainlab import Run, as_data, models
from trainlab.analysis.signal import coord_check, expected_square, propagation, variance_map
from trainlab.probes import SignalPropagation


def test_quadrature_matches_the_closed_forms():
    K = np.array([0.01, 0.5, 1.0, 3.0, 20.0])
    assert np.allclose(variance_map(K, "relu", 2.0, 0.1, depth=4, method="quadrature")[-1],
                       variance_map(K, "relu", 2.0, 0.1, depth=4)[-1], rtol=1e-10)
    # ReLU: K' = C_b + C_W K / 2, so at C_W = 2, C_b = 0 every layer keeps K
    assert np.allclose(variance_map(K, "relu", 2.0, 0.0, depth=6), np.tile(2.0 * K, (6, 1)))
    assert np.allclose(expected_square("linear", K), K)
    # tanh and GELU: E[σ(z)^2] by scipy's adaptive quadrature
    gelu = lambda z: 0.5 * z * (1 + erf(z / math.sqrt(2)))  # noqa: E731
    for k in (0.01, 0.3, 2.0, 10.0, 50.0):
        for name, f in (("tanh", np.tanh), ("gelu", gelu)):
            direct = quad(lambda z: f(z) ** 2 * np.exp(-z**2 / (2 * k)) / math.sqrt(2 * math.pi * k), -np.inf, np.inf,
                          epsabs=1e-13, epsrel=1e-12)[0]
            assert expected_square(name, k) == pytest.approx(direct, rel=1e-9), (name, k)


def test_tanh_at_criticality_decays_slowly_and_off_it_does_not():
    K = variance_map(1.0, "tanh", 1.0, 0.0, depth=200)
    # a power law toward the K* = 0 fixed point: K_l -> 1/(2l) (tanh's a_1 = -2, Roberts & Yaida §5.3)
    assert np.all(np.diff(K) < 0) and K[-1] * 200 == pytest.approx(0.5, rel=0.05)
    assert variance_map(1.0, "tanh", 0.5, 0.0, depth=50)[-1] < 1e-14  # exponential decay below C_W = 1
    assert variance_map(1.0, "tanh", 2.0, 0.0, depth=50)[-1] > 0.5  # a nonzero fixed point above it


@pytest.mark.parametrize("activation, C_W, C_b", [("tanh", 1.5, 0.05), ("relu", 2.0, 0.0), ("gelu", 1.7, 0.1)])
def test_theory_matches_a_wide_random_network(activation, C_W, C_b):
    torch.manual_seed(0)
    data = as_data((torch.randn(128, 256), torch.arange(128) % 4))
    model = models.build("mlp", data, width=1024, depth=6, activation=activation,
                         init=("critical", {"C_W": C_W, "C_b": C_b}))
    frame = propagation(model, data, n=128)
    hidden = frame[frame.layer != "out"]
    assert np.allclose(hidden["std"], hidden["theory_std"], rtol=0.05), frame
    assert np.allclose(hidden["C_W"], C_W, rtol=0.02)


def test_propagation_statistics_against_direct_computation():
    data = as_data("digits")
    model = models.build("mlp", data, width=32, depth=2)
    frame = propagation(model, data, n=100)
    x, y = data.fixed_sample(100, seed=0)
    with torch.no_grad():
        z1 = model.fc1(x)
    assert frame.loc[0, "mean"] == pytest.approx(float(z1.mean()), rel=1e-5)
    assert frame.loc[0, "std"] == pytest.approx(float(z1.std()), rel=1e-5)
    loss = nn.functional.cross_entropy(model(x), y)
    g = torch.autograd.grad(loss, model.fc2.weight)[0]
    assert frame.loc[1, "grad_norm"] == pytest.approx(float(g.norm()), rel=1e-5)
    assert list(frame.layer) == ["fc1", "fc2", "out"]
    # a norm or a residual block ends the chain the theory describes
    normed = propagation(models.build("mlp", data, width=32, norm="layernorm"), data)
    assert normed.loc[0, "theory_std"] > 0 and normed["theory_std"].iloc[1:].isna().all()  # fc1 comes before it
    res = propagation(models.build("resmlp", data, width=32, depth=2), data)
    assert res.loc[0, "theory_std"] > 0 and res["theory_std"].iloc[1:].isna().all()


def test_the_probe_records_while_training():
    probe = SignalPropagation(every=5, n=64)
    run = Run(model=("mlp", {"width": 32, "init": "critical"}), data="digits", probes=[probe], device="cpu")
    run.step(10)
    cols = probe.columns(run)
    frame = run.history.frame()
    measured = frame.dropna(subset=list(cols.scalars))
    assert list(measured.step) == [5, 10]
    step, snap = run.history.snapshot("signal")
    assert step == 10 and list(snap["layer"]) == ["fc1", "fc2", "out"]
    assert snap["std"][0] == pytest.approx(measured["signal_std/fc1"].iloc[-1])
    assert np.isfinite(snap["theory_std"][:2]).all()


def test_coord_check_is_flat_under_mup_and_grows_under_sp():
    widths = [64, 128, 256, 512]
    slopes = {}
    for p in ("sp", "mup"):
        frame = coord_check(lambda w: ("mlp", {"width": w, "parametrization": p, "base_width": 64}), widths,
                            steps=3, optimizer="adam", lr=1e-2)
        assert set(frame.columns) == {"width", "module", "t", "l1"}
        assert len(frame) == len(widths) * 3 * 3  # widths x steps x (fc1, fc2, out)
        for module in ("fc2", "out"):
            last = frame[(frame.t == 3) & (frame.module == module)]
            slopes[p, module] = np.polyfit(np.log(last.width), np.log(last.l1), 1)[0]
    # log-log slopes of the activations' scale after two Adam steps against width
    for module in ("fc2", "out"):
        assert slopes["sp", module] > 0.4, slopes  # grows with width under SP
        assert slopes["mup", module] < 0.1, slopes  # does not under μP (the read-out's init part shrinks as 1/√n)
    assert abs(slopes["mup", "fc2"]) < 0.1, slopes
    # a module the user builds goes too, and at t = 1 the forward is the initial network's
    frame = coord_check(lambda w: nn.Sequential(nn.Linear(64, w), nn.ReLU(), nn.Linear(w, 10)), [8, 16], steps=2)
    assert set(frame.module) == {"0", "2"}
