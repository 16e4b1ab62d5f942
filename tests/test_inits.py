"""Initializers: variances against their formulas, ZerO's matrices against scipy's Hadamard, LSUV's unit
variance on the data, criticality's C_W and C_b, and the errors of an initializer that needs data."""
from __future__ import annotations

import math

import pytest
import torch
from scipy.linalg import hadamard
from torch import nn

from trainlab import Run, as_data, inits, models
from trainlab.functional import record
from trainlab.inits import apply, zero_matrix

GAIN = {"relu": math.sqrt(2.0), "tanh": 5.0 / 3.0, "linear": 1.0}


@pytest.fixture(scope="module")
def wide():
    torch.manual_seed(0)
    return as_data((torch.randn(64, 512), torch.arange(64) % 4))


@pytest.fixture(scope="module")
def digits():
    return as_data("digits")


def _linears(model):
    return [m for m in model.modules() if isinstance(m, nn.Linear)]


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_uniform_inits_have_their_variance_and_bound(wide, activation):
    g = GAIN[activation]
    km = models.build("mlp", wide, width=512, depth=1, activation=activation, init="kaiming_uniform")
    W = km.fc1.weight.detach()  # 512 x 512
    assert W.var().item() == pytest.approx(g**2 / 512, rel=0.02)
    assert W.abs().max().item() <= g * math.sqrt(3 / 512) + 1e-7
    xm = models.build("mlp", wide, width=256, depth=1, activation=activation, init="xavier_uniform")
    W = xm.fc1.weight.detach()  # 256 x 512
    assert W.var().item() == pytest.approx(g**2 * 2 / (512 + 256), rel=0.02)
    assert W.abs().max().item() <= g * math.sqrt(6 / (512 + 256)) + 1e-7
    assert all(torch.all(m.bias == 0) for m in _linears(xm))


def test_zero_matrices_are_identity_partial_identity_and_hadamard():
    assert torch.equal(zero_matrix(5, 5), torch.eye(5))
    assert torch.equal(zero_matrix(3, 7), torch.eye(3, 7))  # narrowing: the partial identity
    W = zero_matrix(128, 64)  # widening to 2^7 rows: c H_7[:, :64], c = 2^-3
    H = torch.as_tensor(hadamard(128), dtype=torch.float32)
    assert torch.equal(W, H[:, :64] * 2.0**-3)
    assert torch.allclose(W.T @ W, 2.0 * torch.eye(64))  # Hadamard columns are orthogonal, |c H|^2 = 2
    W = zero_matrix(100, 10)  # 100 rows: m = 7, the top-left block of H_7
    assert torch.equal(W, H[:100, :10] * 2.0**-3)


def test_zero_init_is_deterministic_and_centre_tapped(digits):
    a = models.build("mlp", digits, width=128, init="zero")
    torch.manual_seed(123)
    b = models.build("mlp", digits, width=128, init="zero")
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert torch.equal(a.fc2.weight, torch.eye(128))
    assert torch.equal(a.out.weight, torch.eye(10, 128))
    cnn = models.build("cnn", digits, channels=8, init="zero")
    w = cnn.conv2.weight.detach()  # 16 x 8 x 3 x 3
    assert torch.equal(w[:, :, 1, 1], zero_matrix(16, 8))
    w[:, :, 1, 1] = 0
    assert torch.all(w == 0)


@pytest.mark.parametrize("model, options", [("mlp", {"depth": 4, "width": 64}), ("cnn", {"channels": 8}),
                                            ("mlp", {"depth": 3, "width": 64, "activation": "tanh"})])
def test_lsuv_gives_unit_variance_on_the_data(digits, model, options):
    m = models.build(model, digits, init="lsuv", **options)
    x = digits.fixed_sample(256, seed=0)[0]  # the sample LSUV measured on
    layers = [n for n, mod in m.named_modules() if isinstance(mod, (nn.Linear, nn.Conv2d))]
    var = record(m, x, lambda n, mod: n in layers, lambda mod, i, o: float(o.var()))
    assert set(var) == set(layers)
    for n, v in var.items():
        assert abs(v - 1.0) < 0.05, (n, v)
    # far from it on other data: the scale came from this data set
    m2 = models.build(model, digits, init="orthogonal", **options)
    v2 = record(m2, x, lambda n, mod: n == layers[-1], lambda mod, i, o: float(o.var()))
    assert abs(v2[layers[-1]] - 1.0) > 0.1


def test_an_init_that_needs_data_without_data_names_the_setting():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match="init='lsuv' needs data"):
        apply("lsuv", model, "relu")
    assert all(torch.equal(p, q) for p, q in zip(before, model.parameters())), "nothing changed"
    apply("lsuv", model, "relu", data=torch.randn(32, 4))  # a tensor of inputs is data
    assert inits["lsuv"].meta.needs_data and not inits["kaiming"].meta


def test_lsuv_through_run_and_its_options():
    run = Run(model=("mlp", {"init": ("lsuv", {"tol": 0.2, "samples": 64})}), data="digits", device="cpu")
    assert run.model_spec[1]["init"] == ("lsuv", {"tol": 0.2, "samples": 64})
    with pytest.raises(ValueError, match="samples"):
        Run(model=("mlp", {"init": ("lsuv", {"samples": 1})}), data="digits", device="cpu")


@pytest.mark.parametrize("activation, critical", [("relu", (2.0, 0.0)), ("tanh", (1.0, 0.0))])
def test_critical_init_defaults_to_the_critical_values(wide, activation, critical):
    m = models.build("mlp", wide, width=512, depth=2, activation=activation, init="critical")
    W = m.fc2.weight.detach()
    assert W.var().item() * 512 == pytest.approx(critical[0], rel=0.02)
    assert torch.all(m.fc2.bias == 0)
    m = models.build("mlp", wide, width=512, depth=2, activation=activation,
                     init=("critical", {"C_W": 1.5, "C_b": 0.25}))
    assert m.fc2.weight.detach().var().item() * 512 == pytest.approx(1.5, rel=0.02)
    assert m.fc2.bias.detach().var().item() == pytest.approx(0.25, rel=0.25)  # 512 samples of the bias


def test_criticality_keeps_the_relu_variance_flat_through_depth():
    """At C_W = 2 the ReLU pre-activation variance stays at its first layer's; at 1.5 it decays as 0.75^l."""
    torch.manual_seed(0)
    data = as_data((torch.randn(256, 512), torch.arange(256) % 4))
    for C_W, rate in ((2.0, 1.0), (1.5, 0.75)):
        m = models.build("mlp", data, width=1024, depth=8, init=("critical", {"C_W": C_W}))
        names = [f"fc{i}" for i in range(1, 9)]
        var = record(m, data.X, lambda n, mod: n in names, lambda mod, i, o: float(o.pow(2).mean()))
        ratio = var["fc8"] / var["fc1"]
        assert ratio == pytest.approx(rate**7, rel=0.2)
