"""Per-example gradients, gradient noise scale and gradient SNR against single-example backward passes."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import trainlab
from trainlab.analysis import gradients
from trainlab.probes import GradientNoise


def problem(seed: int = 0, n: int = 40):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 5, generator=g, dtype=torch.float64)
    y = (X[:, :3] + 0.5 * torch.randn(n, 3, generator=g, dtype=torch.float64)).argmax(1)  # learnable: a real signal
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    return model, X, y


def loop_grads(model, X, y) -> np.ndarray:
    """(B, n) gradients from one ordinary backward pass per example: the reference."""
    rows = []
    for x, t in zip(X, y):
        model.zero_grad()
        F.cross_entropy(model(x[None]), t[None]).backward()
        rows.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]).numpy().copy())
    return np.array(rows)


def test_per_example_grads_match_a_loop_of_backward_passes():
    model, X, y = problem()
    got = gradients.per_example_grads(model, F.cross_entropy, X, y, chunk=16)
    flat = torch.cat([got[n].reshape(len(X), -1) for n, _ in model.named_parameters()], 1).numpy()
    np.testing.assert_allclose(flat, loop_grads(model, X, y), rtol=1e-10, atol=1e-12)


def test_noise_scale_and_snr_from_the_loop_gradients():
    model, X, y = problem(seed=1, n=50)
    G = loop_grads(model, X, y)
    B = len(G)
    mean, var = G.mean(0), G.var(0, ddof=1)
    trace_cov = var.sum()
    grad_sq = mean @ mean - trace_cov / B
    layers = {"0": ["0.weight", "0.bias"], "2": ["2.weight", "2.bias"]}
    stats = gradients.gradient_stats(model, F.cross_entropy, X, y, layers=layers, chunk=7)
    assert stats["trace_cov"] == pytest.approx(trace_cov, rel=1e-9)
    assert stats["grad_sq"] == pytest.approx(grad_sq, rel=1e-9)
    assert grad_sq > 0 and stats["noise_scale"] == pytest.approx(trace_cov / grad_sq, rel=1e-9)
    ok = var > 0
    assert stats["grad_snr"] == pytest.approx(np.mean(mean[ok] ** 2 / var[ok]), rel=1e-9)
    first = 5 * 8 + 8
    assert stats["grad_snr/0"] == pytest.approx(np.mean(mean[:first] ** 2 / var[:first]), rel=1e-9)
    assert gradients.noise_scale(model, F.cross_entropy, (X, y)) == pytest.approx(trace_cov / grad_sq, rel=1e-9)


def test_noise_scale_estimators_are_unbiased():
    """Averaged over many random batches of 8, S and |G|² estimates match the population values."""
    model, X, y = problem(seed=2, n=64)
    G = loop_grads(model, X, y)
    pop_trace = G.var(0, ddof=0).sum()  # sampling with replacement from the 64 examples
    pop_sq = G.mean(0) @ G.mean(0)
    gen = torch.Generator().manual_seed(0)
    S, Gsq = [], []
    for _ in range(300):
        idx = torch.randint(0, 64, (8,), generator=gen)
        st = gradients.gradient_stats(model, F.cross_entropy, X[idx], y[idx])
        S.append(st["trace_cov"]), Gsq.append(st["grad_sq"])
    assert np.mean(S) == pytest.approx(pop_trace, rel=4 * np.std(S) / np.sqrt(300) / pop_trace)
    assert abs(np.mean(Gsq) - pop_sq) < 4 * np.std(Gsq) / np.sqrt(300)


def test_probe_adds_columns_every_k_steps():
    run = trainlab.Run(model=("mlp", {"width": 8, "depth": 1}), data="moons", device="cpu",
                       probes=[GradientNoise(every=3, examples=32)])
    run.step(6)
    df = run.history.frame()
    rows = df.dropna(subset=["noise_scale"])
    assert rows["step"].tolist() == [3, 6]
    assert {"grad_snr", "grad_snr/fc1", "grad_snr/out"} <= set(df.columns)
    assert (rows["grad_snr"] > 0).all()


def test_bad_inputs():
    model, X, y = problem()
    noisy = gradients.gradient_stats(model, F.cross_entropy, X[:2], y[[1, 0]])  # no signal to speak of
    assert noisy["grad_sq"] > 0 or math.isnan(noisy["noise_scale"])
    with pytest.raises(ValueError, match="at least 2"):
        gradients.gradient_stats(model, F.cross_entropy, X[:1], y[:1])
    with pytest.raises(ValueError, match="scalar"):
        gradients.per_example_grads(model, lambda o, t: F.cross_entropy(o, t, reduction="none").expand(2), X, y)
    with pytest.raises(ValueError, match="examples"):
        GradientNoise(examples=1)
    m = nn.Linear(5, 3).double()
    m.register_parameter("k", nn.Parameter(torch.ones(2, dtype=torch.int64), requires_grad=False))
    with pytest.raises(ValueError, match="floating point"):
        gradients.per_example_grads(m, F.cross_entropy, X, y)
