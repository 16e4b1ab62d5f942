"""Optimizer internals probes against direct computation from the weights and the optimizer's state."""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from trainlab import Run
from trainlab.probes import EffectiveStep, ScaleInvariantNorm, SecondMoment, scale_invariant_layers


def run_on(optimizer="sgd", norm="none", probes=(), **kw) -> Run:
    return Run(model=("mlp", {"width": 16, "depth": 2, "norm": norm}), data="moons", optimizer=optimizer,
               device="cpu", probes=list(probes), **kw)


def norm_of(ts) -> float:
    return math.sqrt(sum(float(t.double().pow(2).sum()) for t in ts))


def last(run: Run):
    return run.history.frame().iloc[-1]


# ---- effective step ---------------------------------------------------------------------------
def test_effective_lr_of_plain_sgd_is_the_lr():
    run = run_on("sgd", probes=[EffectiveStep(every=1)], lr=0.07, momentum=0.0)
    run.step(3)
    row = last(run)
    for layer in run.layers:
        assert row[f"effective_lr/{layer}"] == pytest.approx(0.07, rel=1e-5)


def test_effective_lr_of_momentum_sgd_from_its_buffer():
    run = run_on("sgd", probes=[EffectiveStep(every=1)], lr=0.05, momentum=0.9)
    run.step(6)
    row, state = last(run), run.torch_optimizer.state
    for layer, params in run.layers.items():  # torch's SGD: w -= lr * buf
        expected = 0.05 * norm_of(state[p]["momentum_buffer"] for p in params) / norm_of(p.grad for p in params)
        assert row[f"effective_lr/{layer}"] == pytest.approx(expected, rel=1e-4)


def test_effective_lr_of_adam_from_its_moments():
    lr, eps = 0.01, 1e-8
    run = run_on("adam", probes=[EffectiveStep(every=1)], lr=lr, eps=eps)
    run.step(5)
    row, state = last(run), run.torch_optimizer.state
    for layer, params in run.layers.items():
        steps = []
        for p in params:
            s = state[p]
            t = float(s["step"])
            m_hat = s["exp_avg"].double() / (1 - 0.9**t)
            v_hat = s["exp_avg_sq"].double() / (1 - 0.999**t)
            steps.append(lr * m_hat / (v_hat.sqrt() + eps))
        expected = norm_of(steps) / norm_of(p.grad for p in params)
        assert row[f"effective_lr/{layer}"] == pytest.approx(expected, rel=1e-4)


# ---- scale-invariant weights ------------------------------------------------------------------
@pytest.mark.parametrize("model, expected", [
    (("mlp", {"width": 8, "depth": 2, "norm": "batchnorm"}), ["fc1", "fc2"]),
    (("mlp", {"width": 8, "depth": 2, "norm": "layernorm"}), ["fc1", "fc2"]),
    (("mlp", {"width": 8, "depth": 2, "norm": "none"}), []),
])
def test_scale_invariant_layers_of_registered_models(model, expected):
    run = Run(model=model, data="moons", device="cpu", probes=[])
    assert scale_invariant_layers(run.model, run.data.X[:16]) == expected


def test_scale_invariant_layers_of_a_cnn():
    run = Run(model=("cnn", {"channels": 4, "norm": "batchnorm"}), data="digits", device="cpu", probes=[])
    assert scale_invariant_layers(run.model, run.data.X[:16]) == ["conv1", "conv2"]


class Reordered(nn.Module):
    """Registers a norm before the layer feeding it; b feeds a tanh; d feeds a norm through a functional tanh."""

    def __init__(self):
        super().__init__()
        self.norm = nn.BatchNorm1d(8)
        self.a = nn.Linear(2, 8)
        self.b = nn.Linear(8, 8)
        self.relu = nn.ReLU()
        self.c = nn.Linear(8, 8)
        self.ln = nn.LayerNorm(8)
        self.d = nn.Linear(8, 8)
        self.ln2 = nn.LayerNorm(8)
        self.out = nn.Linear(8, 2)

    def forward(self, x):
        h = self.norm(self.a(x))
        h = torch.tanh(self.b(h))
        h = self.ln(self.relu(self.c(h)))  # relu is positively homogeneous: c stays scale-invariant
        h = self.ln2(torch.tanh(self.d(h)))  # a functional tanh the trace cannot see: d is not invariant
        return self.out(h)


def test_detection_follows_the_forward_pass_not_the_registration_order():
    model = Reordered()
    model.eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert scale_invariant_layers(model, torch.randn(16, 2)) == ["a", "c"]
    assert not model.training  # the model itself is untouched: mode, weights, BatchNorm statistics
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_detected_weights_are_really_scale_invariant():
    """The test's own criterion (AdamP's): the loss gradient is orthogonal to the detected weights."""
    run = run_on("sgd", norm="batchnorm", batch_size=64)
    run.step(3)
    detected = scale_invariant_layers(run.model, run.data.X[:16])
    model = copy.deepcopy(run.model)  # the gradient at the current weights (p.grad is the last step's)
    torch.nn.functional.cross_entropy(model(run.data.X[:64]), run.data.y[:64]).backward()
    grads = dict(model.named_parameters())
    for layer, params in run.layers.items():
        g = torch.cat([grads[n].grad.flatten() for n, p in run.model.named_parameters() if any(p is q for q in params)]).double()
        w = torch.cat([p.detach().flatten() for p in params]).double()
        cos = float(g @ w / (g.norm() * w.norm()))
        if layer in detected:
            assert abs(cos) < 1e-4, layer
        elif layer.startswith("out"):
            assert abs(cos) > 1e-3, layer


def test_scale_invariant_norm_grows_by_the_step_under_plain_sgd():
    """||w_t+1||^2 = ||w_t||^2 + lr^2 ||g||^2 when g is orthogonal to w (no momentum, no decay)."""
    lr = 0.5
    probe = ScaleInvariantNorm(every=1)
    run = run_on("sgd", norm="batchnorm", probes=[probe], lr=lr, momentum=0.0)
    run.step(1)
    assert probe.layers(run) == ["fc1", "fc2"]
    for _ in range(4):
        before = last(run)
        run.step(1)
        row = last(run)
        for layer in ("fc1", "fc2"):
            params = run.layers[layer]
            assert row[f"scale_invariant_norm/{layer}"] == pytest.approx(norm_of(p.detach() for p in params), rel=1e-9)
            grown = before[f"scale_invariant_norm/{layer}"] ** 2 + lr**2 * norm_of(p.grad for p in params) ** 2
            assert row[f"scale_invariant_norm/{layer}"] ** 2 == pytest.approx(grown, rel=1e-4)
    assert not any(c.startswith("scale_invariant_norm/out") for c in run.history.frame().columns)


# ---- second moments ---------------------------------------------------------------------------
def test_second_moment_median_and_histogram_from_adams_state():
    probe = SecondMoment(every=4, bins=10)
    run = run_on("adam", probes=[probe], beta2=0.99)
    run.step(8)
    row, state = last(run), run.torch_optimizer.state
    step, snap = run.history.snapshot("second_moment")
    assert step == 8
    logs = {}
    for layer, params in run.layers.items():
        v = torch.cat([(state[p]["exp_avg_sq"].double() / (1 - 0.99 ** float(state[p]["step"]))).flatten() for p in params])
        assert float(state[params[0]]["step"]) == 8
        assert row[f"second_moment/{layer}"] == pytest.approx(float(v.median()), rel=1e-12)
        logs[layer] = np.log10(v[v > 0].numpy())
        assert snap["zeros"][layer] == int((v == 0).sum())
    lo, hi = min(x.min() for x in logs.values()), max(x.max() for x in logs.values())
    np.testing.assert_allclose(snap["edges"], np.linspace(lo, hi, 11))
    for layer, x in logs.items():
        np.testing.assert_array_equal(snap["counts"][layer], np.histogram(x, bins=np.linspace(lo, hi, 11))[0])
        assert snap["counts"][layer].sum() == len(x)


def test_second_moment_of_rmsprop_is_its_square_avg():
    run = run_on("rmsprop", probes=[SecondMoment(every=2)])
    run.step(2)
    row, state = last(run), run.torch_optimizer.state
    for layer, params in run.layers.items():
        v = torch.cat([state[p]["square_avg"].double().flatten() for p in params])
        assert row[f"second_moment/{layer}"] == pytest.approx(float(v.median()), rel=1e-12)


def test_no_second_moment_for_sgd():
    run = run_on("sgd", probes=[SecondMoment(every=1)])
    run.step(2)
    assert not any(c.startswith("second_moment") for c in run.history.frame().columns)
    assert run.history.snapshot("second_moment") is None


def test_probes_added_while_training():
    run = run_on("adam", norm="batchnorm")
    run.start()
    try:
        for p in (EffectiveStep(2), ScaleInvariantNorm(2), SecondMoment(2)):
            run.add_probe(p)
        for _ in range(300):
            cols = set(run.history.frame().columns)
            if {"effective_lr/fc1", "scale_invariant_norm/fc1", "second_moment/fc1"} <= cols:
                break
            import time
            time.sleep(0.02)
    finally:
        run.stop()
    assert {"effective_lr/fc1", "scale_invariant_norm/fc1", "second_moment/fc1"} <= set(run.history.frame().columns)
