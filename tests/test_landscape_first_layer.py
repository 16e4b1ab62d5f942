"""The first-layer shortcut of loss landscapes: equal to a plain point-by-point loop, and refused where unsound."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from test_landscape import assert_samples_match, warm_bn

from trainlab.analysis import landscape as L


def _loop(model, loss_fn, X, y, base, dirs, coords, train=False):
    """A plain loop: a copy of the model, weights written per point, one forward each.

    The loss at base + sum_j c_j * dirs[j] for each row c of coords; train mode restarts BatchNorm's
    statistics at every point.
    """
    m = copy.deepcopy(model).train(train)
    state = {k: v.clone() for k, v in m.state_dict().items()}
    out = []
    with torch.no_grad():
        for c in coords:
            m.load_state_dict(state)
            for n, p in m.named_parameters():
                p.copy_(base[n] + sum(float(cj) * d[n] for cj, d in zip(c, dirs)))
            out.append(float(loss_fn(m(X), y)))
    return np.array(out)


def _plane_ref(model, X, y, res, train=False):
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    coords = [(a, b) for a in res.x for b in res.y]
    return _loop(model, F.cross_entropy, X, y, base, res.directions, coords, train).reshape(res.loss.shape)


def _mlp(n_in=20, bn=False):
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(n_in, 16), *([nn.BatchNorm1d(16)] if bn else []), nn.Tanh(),
                         nn.Linear(16, 3))


def _cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Unflatten(1, (2, 6, 6)), nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 9, 3))


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(48, 20, generator=g), torch.randint(0, 3, (48,), generator=g)


@pytest.fixture
def images():
    g = torch.Generator().manual_seed(2)
    return torch.randn(40, 72, generator=g), torch.randint(0, 3, (40,), generator=g)


def _first_layer_equals_reference(model, data, X, y) -> None:
    """A 3x3 plane takes the first-layer path and equals the point-by-point reference."""
    res = L.plane(model, F.cross_entropy, data, steps=3, progress=False)
    assert res.path.startswith("first-layer"), res.fallback
    np.testing.assert_allclose(res.loss, _plane_ref(model, X, y, res), rtol=1e-5)


@pytest.mark.parametrize("vectorize", [False, True])
def test_mlp_plane_equals_a_plain_loop(data, vectorize):
    X, y = data
    model = _mlp()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = L.plane(model, F.cross_entropy, (X, y), steps=5, span=0.9, seed=3, vectorize=vectorize, progress=False)
    assert res.path == ("first-layer+vectorized" if vectorize else "first-layer") and res.fallback is None
    np.testing.assert_allclose(res.loss, _plane_ref(model, X, y, res), rtol=1e-5)
    for k, v in model.state_dict().items():  # bitwise, and the layer computes for itself again
        assert torch.equal(v, before[k]), k
    assert "forward" not in model[1].__dict__
    assert res.to_dict()["path"] == res.path


@pytest.mark.parametrize("vectorize", [False, True])
def test_cnn_with_conv_bias_and_batchnorm_equals_a_plain_loop(images, vectorize):
    X, y = images
    model = _cnn()
    warm_bn(model, X.view(-1, 2, 6, 6).reshape(len(X), -1))
    with torch.no_grad():
        model[1].bias.add_(0.5)
    # bias="filter": the first convolution's bias moves too, so its direction bias enters the products
    res = L.plane(model, F.cross_entropy, (X, y), steps=4, seed=5, bias="filter", vectorize=vectorize, progress=False)
    assert res.path.startswith("first-layer"), res.fallback
    assert torch.count_nonzero(res.directions[0]["1.bias"]) == 4
    np.testing.assert_allclose(res.loss, _plane_ref(model, X, y, res), rtol=1e-5)


def test_the_conv_products_reach_the_next_layer_channels_last(images):
    X, y = images
    model = _cnn().eval()
    layouts = []
    model[3].register_forward_pre_hook(lambda m, a: layouts.append(a[0].is_contiguous(memory_format=torch.channels_last)))
    L.plane(model, F.cross_entropy, (X, y), steps=2, vectorize=False, progress=False)
    assert layouts[-1] and not layouts[0]  # the trace saw torch's own layout, the grid points channels last


def test_batchnorm_after_the_first_layer_in_both_modes(data):
    X, y = data
    model = _mlp(bn=True)
    warm_bn(model, X)
    ev = L.plane(model, F.cross_entropy, (X, y), steps=3, seed=1, progress=False)
    tr = L.plane(model, F.cross_entropy, (X, y), steps=3, seed=1, mode="train", progress=False)
    assert ev.path == "first-layer+vectorized" and tr.path == "first-layer"  # vmap needs eval mode with BatchNorm
    np.testing.assert_allclose(ev.loss, _plane_ref(model, X, y, ev), rtol=1e-5)
    np.testing.assert_allclose(tr.loss, _plane_ref(model, X, y, tr, train=True), rtol=1e-5)
    assert np.abs(tr.loss - ev.loss).max() > 1e-3


@pytest.mark.parametrize("which", ["mlp", "cnn"])
def test_line_equals_a_plain_loop(data, images, which):
    X, y = data if which == "mlp" else images
    make = _mlp if which == "mlp" else _cnn
    a, b = make().eval(), make()
    with torch.no_grad():
        for p in b.parameters():
            p.add_(0.3 * torch.randn(p.shape))
    res = L.line(a, F.cross_entropy, (X, y), end=b, steps=6, span=(-0.5, 1.5), progress=False)
    assert res.path.startswith("first-layer") and res.to_dict()["path"] == res.path
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    ref = _loop(a, F.cross_entropy, X, y, pa, [{n: pb[n] - pa[n] for n in pa}], [(t,) for t in res.alpha])
    np.testing.assert_allclose(res.loss, ref, rtol=1e-5)


def test_samples_and_their_standard_error(data):
    X, y = data
    model = _mlp()
    res = L.plane(model, F.cross_entropy, (X, y), steps=3, samples=20, seed=4, progress=False)
    assert res.path.startswith("first-layer"), res.fallback
    assert_samples_match(model, X, y, res, 20, 4, rtol=1e-4)


def test_several_batches(data):
    X, y = data
    model = _mlp()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X, y), batch_size=20)
    _first_layer_equals_reference(model, loader, X, y)


class _Twice(nn.Module):
    """Reuses its first Linear: the shortcut would feed the second call the first call's output."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc, self.out = nn.Linear(20, 20), nn.Linear(20, 3)

    def forward(self, x):
        return self.out(torch.tanh(self.fc(torch.tanh(self.fc(x)))))


class _Shifted(nn.Module):
    """The first Linear's input depends on a trainable parameter that no module call owns."""

    def __init__(self, detach=False):
        super().__init__()
        torch.manual_seed(0)
        self.pre = nn.Module()
        self.pre.scale = nn.Parameter(torch.rand(1, 20) + 0.5)
        self.fc, self.out, self.detach = nn.Linear(20, 8), nn.Linear(8, 3), detach

    def forward(self, x):
        s = self.pre.scale.detach() if self.detach else self.pre.scale
        return self.out(torch.tanh(self.fc(x * s)))


def _norm_first():
    torch.manual_seed(0)
    return nn.Sequential(nn.LayerNorm(20), nn.Linear(20, 8), nn.Tanh(), nn.Linear(8, 3))


def _stochastic_first():
    torch.manual_seed(0)
    return nn.Sequential(nn.BatchNorm1d(20, affine=False), nn.Linear(20, 8), nn.Tanh(), nn.Linear(8, 3))


@pytest.mark.parametrize("make, mode, reason", [
    (_Twice, "eval", "runs 2 times"),
    (_Shifted, "eval", "depends on trainable parameters"),
    (lambda: _Shifted(detach=True), "eval", "where the plain forward gives"),  # caught by the one-point check
    (_norm_first, "eval", "is a LayerNorm, not an nn.Linear"),
    (_stochastic_first, "train", "in train mode a BatchNorm1d runs before"),
])
def test_fallback_where_the_shortcut_is_unsound(data, make, mode, reason):
    X, y = data
    model = make()
    res = L.plane(model, F.cross_entropy, (X, y), steps=3, mode=mode, progress=False)
    assert res.path in ("pointwise", "vectorized") and reason in res.fallback
    np.testing.assert_allclose(res.loss, _plane_ref(model, X, y, res, train=mode == "train"), rtol=1e-5)
    with pytest.raises(ValueError, match="first_layer=True, but"):
        L.plane(model, F.cross_entropy, (X, y), steps=3, mode=mode, first_layer=True, progress=False)
    assert all("forward" not in m.__dict__ for m in model.modules())


def test_batchnorm_before_the_first_layer_is_fine_in_eval_mode(data):
    X, y = data
    model = _stochastic_first()
    warm_bn(model, X)
    _first_layer_equals_reference(model, (X, y), X, y)


class _Viewed(nn.Module):
    """Flattens its convolution's output with .view, which a channels-last tensor cannot take."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv, self.out = nn.Conv2d(2, 4, 3, padding=1), nn.Linear(4 * 36, 3)

    def forward(self, x):
        h = torch.relu(self.conv(x.view(-1, 2, 6, 6)))
        return self.out(h.view(len(h), -1))


def test_a_model_that_cannot_take_channels_last_gets_the_usual_layout(images):
    X, y = images
    model = _Viewed()
    _first_layer_equals_reference(model, (X, y), X, y)


def test_other_fallbacks_and_the_switch(data):
    X, y = data
    model = _mlp()
    tiny = L.plane(model, F.cross_entropy, (X, y), steps=3, memory=1000, progress=False)
    assert "first-layer" not in tiny.path and "memory=1,000" in tiny.fallback
    off = L.plane(model, F.cross_entropy, (X, y), steps=3, first_layer=False, progress=False)
    assert off.path == "vectorized" and off.fallback == "first_layer=False"  # a tiny model: vmap pays
    np.testing.assert_allclose(off.loss, tiny.loss, rtol=1e-6)
    cheap = L.plane(_mlp(n_in=4), F.cross_entropy, (X[:, :4], y), steps=3, progress=False)
    assert "too cheap" in cheap.fallback
    forced = L.plane(_mlp(n_in=4), F.cross_entropy, (X[:, :4], y), steps=3, first_layer=True, progress=False)
    assert forced.path.startswith("first-layer")
    np.testing.assert_allclose(forced.loss, cheap.loss, rtol=1e-5)
    hooked = _mlp()
    calls = []
    hooked[1].register_forward_hook(lambda m, a, o: calls.append(1))
    res = L.plane(hooked, F.cross_entropy, (X, y), steps=3, progress=False)
    assert "has hooks" in res.fallback and calls
    with pytest.raises(ValueError, match="first_layer must be"):
        L.plane(model, F.cross_entropy, (X, y), steps=3, first_layer=1, progress=False)


class _BatchCentred(nn.Module):
    """Subtracts the batch mean after its first layer: examples are not independent, even in eval mode."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc, self.out = nn.Linear(20, 8), nn.Linear(8, 3)

    def forward(self, x):
        h = self.fc(x)
        return self.out(torch.tanh(h - h.mean(0)))


def _sizes(module):
    """The batch sizes a module sees, recorded by a pre-hook on it."""
    seen = []
    module.register_forward_pre_hook(lambda m, a: seen.append(len(a[0])))
    return seen


@pytest.mark.parametrize("which", ["mlp", "cnn"])
def test_chunks_of_examples_give_the_same_values(data, images, which, monkeypatch):
    monkeypatch.setattr(L, "ROWS", 16)  # the test sets have 40-48 examples: three chunks each
    monkeypatch.setattr(L, "CHUNK_ABOVE", 0)
    X, y = data if which == "mlp" else images
    model = (_mlp() if which == "mlp" else _cnn()).eval()
    sizes = _sizes(model[-1])
    res = L.plane(model, F.cross_entropy, (X, y), steps=3, vectorize=False, progress=False)
    assert res.path == "first-layer" and sizes[-3:] == [16, 16, len(X) - 32]
    np.testing.assert_allclose(res.loss, _plane_ref(model, X, y, res), rtol=1e-5)
    n = 30
    sub = L.plane(model, F.cross_entropy, (X, y), steps=3, samples=n, seed=2, vectorize=False, progress=False)
    assert sizes[-2:] == [16, 14]
    ref = L.plane(model, F.cross_entropy, (X, y), steps=3, samples=n, seed=2, vectorize=False, first_layer=False,
                  progress=False)
    np.testing.assert_allclose(sub.loss, ref.loss, rtol=1e-5)
    np.testing.assert_allclose(sub.stderr, ref.stderr, rtol=1e-4)


def test_no_chunks_where_they_would_change_the_values(data, monkeypatch):
    monkeypatch.setattr(L, "ROWS", 16)
    monkeypatch.setattr(L, "CHUNK_ABOVE", 0)
    X, y = data
    model = _BatchCentred()
    sizes = _sizes(model.out)
    res = L.plane(model, F.cross_entropy, (X, y), steps=3, vectorize=False, progress=False)
    assert res.path == "first-layer" and sizes[-1] == len(X)  # the one-point check refused the chunks
    np.testing.assert_allclose(res.loss, _plane_ref(model, X, y, res), rtol=1e-5)


def test_chunks_leave_the_loss_to_see_the_whole_batch(data, monkeypatch):
    monkeypatch.setattr(L, "ROWS", 16)
    monkeypatch.setattr(L, "CHUNK_ABOVE", 0)
    X, y = data
    model = _mlp().eval()
    sizes = _sizes(model[-1])
    calls = []

    def summed(o, t):  # not a mean: chunk-by-chunk losses would need to know
        calls.append(len(o))
        return F.cross_entropy(o, t, reduction="sum")

    res = L.plane(model, summed, (X, y), steps=3, vectorize=False, progress=False)
    assert res.path == "first-layer" and sizes[-3:] == [16, 16, 16] and calls[-1] == len(X)
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    ref = _loop(model, summed, X, y, base, res.directions, [(a, b) for a in res.x for b in res.y]).reshape(3, 3)
    np.testing.assert_allclose(res.loss, ref, rtol=1e-5)


def test_small_batches_run_whole(data, monkeypatch):
    monkeypatch.setattr(L, "ROWS", 16)  # chunks would be possible, but 48 examples' activations are far under CHUNK_ABOVE
    X, y = data
    model = _mlp().eval()
    sizes = _sizes(model[-1])
    res = L.plane(model, F.cross_entropy, (X, y), steps=2, vectorize=False, progress=False)
    assert res.path == "first-layer" and sizes[-1] == len(X)


class _Tied(nn.Module):
    """Uses its first Linear's weight again: through a second module (`shared`), or directly."""

    def __init__(self, shared: bool):
        super().__init__()
        torch.manual_seed(0)
        self.fc, self.out, self.shared = nn.Linear(20, 20), nn.Linear(20, 3), shared
        if shared:
            self.again = nn.Linear(20, 20)
            self.again.weight = self.fc.weight

    def forward(self, x):
        h = torch.tanh(self.fc(x))
        h = self.again(h) if self.shared else F.linear(h, self.fc.weight)
        return self.out(torch.tanh(h))


@pytest.mark.parametrize("shared", [True, False])
def test_tied_first_layer_weights(data, shared):
    X, y = data
    model = _Tied(shared)
    res = L.plane(model, F.cross_entropy, (X, y), steps=3, vectorize=False, progress=False)
    # shared through a module: the shortcut stands and the tied weights still move; used directly in a
    # forward, nothing shows it but the one-point check, which refuses the shortcut
    if shared:
        assert res.path == "first-layer"
    else:
        assert res.path == "pointwise" and "where the plain forward gives" in res.fallback
    np.testing.assert_allclose(res.loss, _plane_ref(model, X, y, res), rtol=1e-5)
