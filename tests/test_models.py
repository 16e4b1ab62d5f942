"""Models by name: shapes, options, normalizations and initializers; user models that do not fit."""
from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from trainlab import Run, as_data, inits, models, norms

ACTS = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU, "linear": nn.Identity}
# closed-form gains (torch.nn.init.calculate_gain's values; GELU uses ReLU's, as documented)
GAIN = {"relu": math.sqrt(2.0), "gelu": math.sqrt(2.0), "tanh": 5.0 / 3.0, "linear": 1.0}


@pytest.fixture(scope="module")
def digits():
    return as_data("digits")


@pytest.fixture(scope="module")
def moons():
    return as_data("moons")


def _wide(features=512, classes=4):
    """Data with many features, so that layers are large enough for tight statistics."""
    X = torch.randn(8, features)
    y = torch.arange(8) % classes
    return as_data((X, y))


def _linears(model):
    return [m for m in model.modules() if isinstance(m, nn.Linear)]


def _weighted(model):
    return [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


# ---- shapes and options ----------------------------------------------------------------------
def test_mlp_output_shape(digits, moons):
    for data in (digits, moons):
        model = models.build("mlp", data)
        out = model(data.X[:5])
        assert out.shape == (5, data.n_out)


@pytest.mark.parametrize("depth", [0, 1, 3])
def test_mlp_depth_and_width(digits, depth):
    model = models.build("mlp", digits, depth=depth, width=24)
    lins = _linears(model)
    assert len(lins) == depth + 1
    assert lins[0].in_features == 64
    for lin in lins[:-1]:
        assert lin.out_features == 24
    assert lins[-1].out_features == 10
    assert lins[-1].in_features == (24 if depth else 64)
    assert model(digits.X[:3]).shape == (3, 10)


@pytest.mark.parametrize("activation", list(ACTS))
def test_mlp_activation(moons, activation):
    model = models.build("mlp", moons, depth=2, activation=activation)
    acts = [m for name, m in model.named_children() if name.startswith("act")]
    assert len(acts) == 2
    assert all(type(a) is ACTS[activation] for a in acts)


def test_cnn_shapes(digits):
    model = models.build("cnn", digits, channels=6)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(1, 6), (6, 12)]
    assert all(c.kernel_size == (3, 3) for c in convs)
    out = model(digits.X[:7])  # flat 64-vectors are unflattened to 1x8x8 images
    assert out.shape == (7, 10)
    lin = _linears(model)[-1]
    assert lin.in_features == 12 * 4 * 4  # 2c channels after a 2x2 pool of 8x8


@pytest.mark.parametrize("norm, mlp_type, cnn_type", [
    ("none", nn.Identity, nn.Identity),
    ("batchnorm", nn.BatchNorm1d, nn.BatchNorm2d),
    ("layernorm", nn.LayerNorm, nn.GroupNorm),
])
def test_norms_are_the_right_modules(digits, norm, mlp_type, cnn_type):
    mlp = models.build("mlp", digits, depth=2, width=20, norm=norm)
    got = [m for name, m in mlp.named_children() if name.startswith("norm")]
    assert len(got) == 2 and all(type(m) is mlp_type for m in got)
    if norm == "batchnorm":
        assert all(m.num_features == 20 for m in got)
    if norm == "layernorm":
        assert all(tuple(m.normalized_shape) == (20,) for m in got)

    cnn = models.build("cnn", digits, channels=4, norm=norm)
    got = [m for name, m in cnn.named_children() if name.startswith("norm")]
    assert len(got) == 2 and all(type(m) is cnn_type for m in got)
    if norm == "batchnorm":
        assert [m.num_features for m in got] == [4, 8]
    if norm == "layernorm":
        assert [(m.num_groups, m.num_channels) for m in got] == [(1, 4), (1, 8)]
    assert cnn(digits.X[:4]).shape == (4, 10)


def test_cnn_layernorm_normalizes_over_channels_and_positions():
    module = norms.build("layernorm", 5, 2)
    x = torch.randn(3, 5, 6, 6) * 4 + 2
    out = module(x).detach()
    flat = out.reshape(3, -1)
    assert flat.mean(1).abs().max() < 1e-4
    assert (flat.std(1, unbiased=False) - 1).abs().max() < 1e-3


# ---- initializers ----------------------------------------------------------------------------
@pytest.mark.parametrize("activation", ["relu", "tanh", "linear", "gelu"])
def test_kaiming_std_matches_closed_form(activation):
    data = _wide(512)
    model = models.build("mlp", data, width=512, depth=2, activation=activation, init="kaiming")
    for lin in _linears(model)[:-1]:  # 512x512 weights: 262k samples, sampling error ~0.2 %
        expected = GAIN[activation] / math.sqrt(lin.in_features)
        w = lin.weight.detach()
        assert w.std().item() == pytest.approx(expected, rel=0.02)
        assert abs(w.mean().item()) < 0.05 * expected
        assert torch.all(lin.bias == 0)
    assert torch.all(_linears(model)[-1].bias == 0)


@pytest.mark.parametrize("activation", ["relu", "tanh", "linear"])
def test_xavier_std_matches_closed_form(activation):
    data = _wide(512)
    model = models.build("mlp", data, width=256, depth=2, activation=activation, init="xavier")
    for lin in _linears(model)[:-1]:
        expected = GAIN[activation] * math.sqrt(2.0 / (lin.in_features + lin.out_features))
        assert lin.weight.detach().std().item() == pytest.approx(expected, rel=0.02)
    for lin in _linears(model):
        assert torch.all(lin.bias == 0)


@pytest.mark.parametrize("activation", ["relu", "tanh", "linear"])
def test_orthogonal_rows_are_orthonormal_times_gain(activation):
    data = _wide(512, classes=4)
    model = models.build("mlp", data, width=256, depth=2, activation=activation, init="orthogonal")
    g2 = GAIN[activation] ** 2
    for lin in _linears(model):  # 256x512, 256x256 and 4x256: all have rows <= columns
        W = lin.weight.detach().double()
        assert W.shape[0] <= W.shape[1]
        eye = torch.eye(W.shape[0], dtype=torch.float64)
        assert torch.allclose(W @ W.T, g2 * eye, atol=1e-4 * g2)
        assert torch.all(lin.bias == 0)
    # a tall layer is orthogonal the other way: W^T W = gain^2 I
    tall = models.build("mlp", _wide(8, classes=2), width=64, depth=1, activation=activation, init="orthogonal")
    W = tall.fc1.weight.detach().double()  # 64 x 8
    assert torch.allclose(W.T @ W, g2 * torch.eye(8, dtype=torch.float64), atol=1e-4 * g2)


def test_inits_apply_to_convolutions(digits):
    model = models.build("cnn", digits, channels=32, init="kaiming")
    conv2 = model.conv2  # 64 x 32 x 3 x 3 = 18,432 weights
    fan_in = 32 * 9
    assert conv2.weight.detach().std().item() == pytest.approx(math.sqrt(2.0 / fan_in), rel=0.03)
    assert all(torch.all(m.bias == 0) for m in _weighted(model))

    ortho = models.build("cnn", digits, channels=8, init="orthogonal", activation="linear")
    W = ortho.conv2.weight.detach().reshape(16, -1).double()  # 16 x 72
    assert torch.allclose(W @ W.T, torch.eye(16, dtype=torch.float64), atol=1e-4)


def test_default_init_is_torchs_own(digits):
    model = models.build("mlp", digits, width=50, init="default")
    for lin in _linears(model):
        bound = 1.0 / math.sqrt(lin.in_features)  # kaiming_uniform(a=sqrt(5)) and the bias bound
        assert lin.weight.abs().max().item() <= bound + 1e-6
        assert lin.bias.abs().max().item() <= bound + 1e-6
        assert lin.bias.abs().max().item() > 0


def test_same_seed_same_initial_weights_across_runs():
    a = Run(model=("mlp", {"width": 16}), data="moons", device="cpu", seed=4)
    b = Run(model=("mlp", {"width": 16}), data="moons", device="cpu", seed=4)
    c = Run(model=("mlp", {"width": 16}), data="moons", device="cpu", seed=5)
    sa, sb, sc = a.model.state_dict(), b.model.state_dict(), c.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_building_does_not_disturb_the_global_rng():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    Run(model="mlp", data="moons", device="cpu", seed=9)
    assert torch.equal(torch.rand(3), expected)


# ---- registry errors -------------------------------------------------------------------------
def test_unknown_model_lists_valid_ones(moons):
    with pytest.raises(ValueError) as e:
        models.build("resnet", moons)
    msg = str(e.value)
    assert "resnet" in msg and "mlp" in msg and "cnn" in msg
    with pytest.raises(ValueError) as e:
        Run(model="transformer", data="moons", device="cpu")
    assert "transformer" in str(e.value) and "mlp" in str(e.value)


@pytest.mark.parametrize("options, words", [
    ({"width": 0}, ["width", "[1, inf)"]),
    ({"depth": -1}, ["depth", "[0, inf)"]),
    ({"activation": "swish"}, ["activation", "'relu'", "'tanh'"]),
    ({"norm": "switchnorm"}, ["norm", "'batchnorm'", "'groupnorm'"]),
    ({"init": "lecun"}, ["init", "'kaiming'", "'orthogonal'"]),
    ({"dropout": 0.5}, ["dropout", "width", "depth"]),
])
def test_bad_model_options(moons, options, words):
    with pytest.raises(ValueError) as e:
        models.build("mlp", moons, **options)
    for w in words:
        assert w in str(e.value)
    with pytest.raises(ValueError):
        Run(model=("mlp", options), data="moons", device="cpu")


def test_unknown_norm_and_init_names():
    with pytest.raises(ValueError) as e:
        norms["switchnorm"]
    assert all(n in str(e.value) for n in norms.names())
    with pytest.raises(ValueError) as e:
        inits["lecun"]
    assert all(n in str(e.value) for n in inits.names())


def test_model_of_wrong_type():
    with pytest.raises(ValueError, match="nn.Module"):
        Run(model=42, data="moons", device="cpu")


# ---- models that do not fit their data -------------------------------------------------------
def test_user_model_output_that_does_not_fit_the_labels():
    model = nn.Sequential(nn.Linear(64, 3))  # digits has 10 classes
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError) as e:
        Run(model=model, data="digits", device="cpu")
    msg = str(e.value)
    assert "(2, 3)" in msg, "names the model's output shape"
    assert "(2,)" in msg, "names the labels' shape"
    assert "10" in msg
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "no step was taken"
    assert all(p.grad is None for p in model.parameters())


def test_user_regression_model_that_does_not_fit_the_targets():
    X, y = torch.randn(20, 3), torch.randn(20)
    model = nn.Linear(3, 2)
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError) as e:
        Run(model=model, data=(X, y), device="cpu")
    assert "(2, 2)" in str(e.value) and "(2, 1)" in str(e.value)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_user_model_that_cannot_take_the_inputs():
    with pytest.raises(ValueError) as e:
        Run(model=nn.Linear(5, 10), data="digits", device="cpu")
    assert "(2, 64)" in str(e.value)


def test_fit_check_leaves_batchnorm_statistics_alone():
    model = nn.Sequential(nn.Linear(64, 10), nn.BatchNorm1d(10))
    Run(model=model, data="digits", device="cpu")
    bn = model[1]
    assert torch.all(bn.running_mean == 0) and torch.all(bn.running_var == 1)
    assert int(bn.num_batches_tracked) == 0
    assert bn.training  # left in the mode it was in


def test_user_model_that_fits_trains():
    model = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 2))
    run = Run(model=model, data="moons", device="cpu", lr=0.1)
    assert run.model is model
    before = copy.deepcopy(model.state_dict())
    assert run.step(5) == 5
    assert not all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_cnn_on_2d_data_is_a_clear_error(moons):
    with pytest.raises(ValueError) as e:
        models.build("cnn", moons)
    assert "image" in str(e.value) and "mlp" in str(e.value)
    with pytest.raises(ValueError, match="image"):
        Run(model="cnn", data="moons", device="cpu")


def test_cnn_trains_on_digits():
    run = Run(model=("cnn", {"channels": 4}), data="digits", device="cpu", lr=0.05, batch_size=32)
    assert run.step(3) == 3
    assert run.history.frame()["train_loss"].notna().all()
