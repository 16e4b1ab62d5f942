"""Loss landscapes: directions, evaluation against a plain point-by-point loop, cancel, PCA, bad input."""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

import trainlab
from trainlab.analysis import landscape as L
from trainlab.jobs import Progress
from trainlab.probes import TrajectoryProbe


def _mlp(bn: bool = False) -> nn.Module:
    torch.manual_seed(0)
    layers = [nn.Linear(5, 8)] + ([nn.BatchNorm1d(8)] if bn else []) + [nn.Tanh(), nn.Linear(8, 3)]
    return nn.Sequential(*layers)


def _cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 16, 3))


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(40, 5, generator=g), torch.randint(0, 3, (40,), generator=g)


def warm_bn(model, X):
    """Running statistics that differ from any batch's own, so eval and train modes differ (and a wrong
    mode would show)."""
    model.train()
    with torch.no_grad():
        model(X * 2 + 1)
    model.eval()


def _reference(model, loss_fn, X, y, base, d1, d2, xs, ys, train=False):
    """A plain loop: a copy of the model, weights written per point, one forward each."""
    m = copy.deepcopy(model)
    m.train(train)
    out = np.zeros((len(xs), len(ys)))
    named = [(n, p) for n, p in m.named_parameters()]
    state = {k: v.clone() for k, v in m.state_dict().items()}
    with torch.no_grad():
        for i, a in enumerate(xs):
            for j, b in enumerate(ys):
                m.load_state_dict(state)  # train mode moves BatchNorm's statistics: start each point afresh
                for n, p in named:
                    p.copy_(base[n] + float(a) * d1[n] + float(b) * d2[n])
                out[i, j] = float(loss_fn(m(X), y))
    return out


def test_filter_normalized_directions_match_the_weights_filter_norms():
    model = _cnn()
    d1, d2 = L.random_directions(model, "filter", seed=3)
    for d in (d1, d2):
        for name, w in model.named_parameters():
            if w.ndim > 1:
                np.testing.assert_allclose(d[name].flatten(1).norm(dim=1), w.detach().flatten(1).norm(dim=1), rtol=1e-5)
            else:  # biases and BatchNorm's scale and shift: zero by default (Li et al.'s "ignore biasbn")
                assert torch.count_nonzero(d[name]) == 0
    assert not torch.equal(d1["0.weight"], d2["0.weight"])


def test_bias_and_norm_parameters_options():
    model = _cnn()
    with torch.no_grad():  # BatchNorm's shift starts at zero, whose "filter" direction would be zero too
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(torch.rand(p.shape) + 0.1)
    w = {n: p.detach() for n, p in model.named_parameters()}
    d_w, _ = L.random_directions(model, "filter", bias="weight")
    d_f, _ = L.random_directions(model, "filter", bias="filter")
    for name in ("0.bias", "1.weight", "1.bias", "4.bias"):
        assert torch.equal(d_w[name], w[name])
        np.testing.assert_allclose(float(d_f[name].norm()), float(w[name].norm()), rtol=1e-5)
        assert not torch.allclose(d_f[name], w[name])
    d_l, _ = L.random_directions(model, "layer", bias="zero")
    np.testing.assert_allclose(float(d_l["4.weight"].norm()), float(w["4.weight"].norm()), rtol=1e-5)
    assert torch.count_nonzero(d_l["1.weight"]) == 0
    with pytest.raises(ValueError, match="bias must be one of"):
        L.random_directions(model, "filter", bias="ignore")


def test_plane_equals_a_plain_loop_and_leaves_the_model_bitwise_unchanged(data):
    X, y = data
    model = _mlp(bn=True)
    warm_bn(model, X)
    model.train()  # the caller's mode comes back afterwards
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = L.plane(model, F.cross_entropy, (X, y), steps=5, span=0.8, seed=2, progress=False)
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    ref = _reference(model, F.cross_entropy, X, y, base, *res.directions, res.x, res.y)
    np.testing.assert_allclose(res.loss, ref, rtol=1e-5)
    assert res.loss.shape == (5, 5) and res.complete and res.stderr is None
    np.testing.assert_array_equal(res.x, np.linspace(-0.8, 0.8, 5))
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert model.training and all(m.training for m in model.modules())
    # the centre of the grid is the model itself
    with torch.no_grad():
        model.eval()
        np.testing.assert_allclose(res.loss[2, 2], float(F.cross_entropy(model(X), y)), rtol=1e-6)


def test_dataloader_data_and_user_directions(data):
    X, y = data
    model = _mlp()
    d1, d2 = L.random_directions(model, "layer", seed=5)
    res = L.plane(model, F.cross_entropy, (X, y), steps=4, directions=(d1, d2), progress=False)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X, y), batch_size=16, shuffle=True)
    res_dl = L.plane(model, F.cross_entropy, loader, steps=4, directions=(d1, d2), progress=False)
    np.testing.assert_allclose(res_dl.loss, res.loss, rtol=1e-5)
    flat = [torch.cat([d[n].reshape(-1) for n, _ in model.named_parameters()]) for d in (d1, d2)]
    res_flat = L.plane(model, F.cross_entropy, (X, y), steps=4, directions=flat, progress=False)
    np.testing.assert_array_equal(res_flat.loss, res.loss)
    assert res.kind == "given"


def assert_samples_match(model, X, y, res, n, seed, rtol=1e-5):
    """Each point's loss and standard error against the same fixed subset, computed point by point."""
    idx = torch.randperm(len(X), generator=torch.Generator().manual_seed(seed))[:n]
    base = {k: p.detach() for k, p in model.named_parameters()}
    d1, d2 = res.directions
    m = copy.deepcopy(model).eval()
    for i, a in enumerate(res.x):
        for j, b in enumerate(res.y):
            with torch.no_grad():
                for k, p in m.named_parameters():
                    p.copy_(base[k] + a * d1[k] + b * d2[k])
                losses = F.cross_entropy(m(X[idx]), y[idx], reduction="none").double().numpy()
            se = losses.std(ddof=1) / math.sqrt(n) * math.sqrt((len(X) - n) / (len(X) - 1))
            np.testing.assert_allclose(res.loss[i, j], losses.mean(), rtol=1e-5)
            np.testing.assert_allclose(res.stderr[i, j], se, rtol=rtol)


def test_samples_standard_error_matches_a_direct_computation(data):
    X, y = data
    model = _mlp()
    res = L.plane(model, F.cross_entropy, (X, y), steps=3, samples=15, seed=4, progress=False)
    assert_samples_match(model, X, y, res, 15, 4)
    with pytest.raises(ValueError, match="samples must be"):
        L.plane(model, F.cross_entropy, (X, y), steps=3, samples=1000, progress=False)


def test_batchnorm_eval_mode_is_default_and_differs_from_train(data):
    X, y = data
    model = _mlp(bn=True)
    warm_bn(model, X)
    stats = model[1].running_mean.clone()
    kw = dict(steps=3, seed=1, progress=False)
    default = L.plane(model, F.cross_entropy, (X, y), **kw)
    ev = L.plane(model, F.cross_entropy, (X, y), mode="eval", **kw)
    tr = L.plane(model, F.cross_entropy, (X, y), mode="train", **kw)
    np.testing.assert_array_equal(default.loss, ev.loss)
    assert default.mode == "eval" and tr.mode == "train"
    assert np.abs(tr.loss - ev.loss).max() > 1e-3
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    ref = _reference(model, F.cross_entropy, X, y, base, *tr.directions, tr.x, tr.y, train=True)
    np.testing.assert_allclose(tr.loss, ref, rtol=1e-5)
    assert torch.equal(model[1].running_mean, stats)  # train mode left no trace in the statistics
    with pytest.raises(ValueError, match="mode must be"):
        L.plane(model, F.cross_entropy, (X, y), mode="test", **kw)


class _CancelAfter(Progress):
    def __init__(self, k):
        super().__init__()
        self.k = k

    def update(self, n=1):
        super().update(n)
        if self.done >= self.k:
            self.cancel()


@pytest.mark.parametrize("vectorize", [False, True])
def test_cancel_keeps_the_computed_points(data, vectorize):
    X, y = data
    model = _mlp()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    full = L.plane(model, F.cross_entropy, (X, y), steps=4, progress=False)
    part = L.plane(model, F.cross_entropy, (X, y), steps=4, progress=_CancelAfter(7), vectorize=vectorize, memory=1)
    flat_full, flat_part = full.loss.reshape(-1), part.loss.reshape(-1)
    assert not part.complete
    np.testing.assert_allclose(flat_part[:7], flat_full[:7], rtol=1e-5)
    assert np.isnan(flat_part[7:]).all()
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


def test_chunking_under_a_tiny_memory_budget_gives_the_same_values(data):
    X, y = data
    model = _mlp(bn=True)
    warm_bn(model, X)
    kw = dict(steps=5, seed=7, progress=False)
    loop = L.plane(model, F.cross_entropy, (X, y), vectorize=False, **kw)
    tiny = L.plane(model, F.cross_entropy, (X, y), vectorize=True, memory=1, **kw)  # one point per chunk
    some = L.plane(model, F.cross_entropy, (X, y), vectorize=True, memory=20_000, **kw)
    big = L.plane(model, F.cross_entropy, (X, y), vectorize=True, **kw)  # the whole grid in one pass
    for r in (tiny, some, big):
        np.testing.assert_allclose(r.loss, loop.loss, rtol=1e-5)


def test_line_between_two_weights(data):
    X, y = data
    a, b = _mlp(), _mlp()
    with torch.no_grad():
        for p in b.parameters():
            p.add_(0.5)
    res = L.line(a, F.cross_entropy, (X, y), end=b.state_dict(), steps=5, span=(-0.5, 1.5), progress=False)
    ref = copy.deepcopy(a).eval()
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    for k, t in enumerate(res.alpha):
        with torch.no_grad():
            for n, p in ref.named_parameters():
                p.copy_(pa[n] + t * (pb[n] - pa[n]))
            np.testing.assert_allclose(res.loss[k], float(F.cross_entropy(ref(X), y)), rtol=1e-5)
    rev = L.line(a, F.cross_entropy, (X, y), start=b, end=a, steps=5, span=(-0.5, 1.5), progress=False)
    np.testing.assert_allclose(rev.loss, res.loss[::-1], rtol=1e-5)
    with pytest.raises(ValueError, match="needs start or end"):
        L.line(a, F.cross_entropy, (X, y), progress=False)
    with pytest.raises(ValueError, match="lacks parameters"):
        L.line(a, F.cross_entropy, (X, y), end={"0.weight": pa["0.weight"]}, progress=False)


def test_pca_trajectory_matches_numpy_svd_and_centres_the_plane():
    run = trainlab.Run(model=("mlp", {"width": 16, "depth": 1}), data="digits", seed=0, probes=[])
    probe = run.add_probe(TrajectoryProbe(every=2))
    with pytest.raises(ValueError, match="at least 3"):
        probe.trajectory(run.model)
    run.step(20)
    traj = probe.trajectory(run.model)
    steps, W = probe.points()
    np.testing.assert_array_equal(traj.steps, np.arange(2, 21, 2))
    W = W.double().numpy()
    M = W[:-1] - W[-1]
    _, s, Vt = np.linalg.svd(M, full_matrices=False)
    ref = (W - W[-1]) @ Vt[:2].T
    for k, c in enumerate((traj.x, traj.y)):
        sign = np.sign(c @ ref[:, k])  # singular vectors are defined up to sign
        np.testing.assert_allclose(sign * c, ref[:, k], atol=1e-6)
    np.testing.assert_allclose(traj.explained_variance, (s**2 / (s**2).sum())[:2], rtol=1e-6)
    res = L.plane(run.model, run.loss_fn, run.data, steps=5, directions=traj, progress=False)
    assert res.kind == "pca" and res.trajectory is not None
    assert res.x[-1] >= np.abs(traj.x).max()  # the span covers the path
    with torch.no_grad():
        model = run.model_copy().eval()
        np.testing.assert_allclose(res.loss[2, 2], float(run.loss_fn(model(run.data.X), run.data.y)), rtol=1e-5)
    with pytest.raises(ValueError, match="TrajectoryProbe"):
        L.plane(run.model, run.loss_fn, (run.data.X, run.data.y), directions="pca", progress=False)


def test_a_reset_starts_the_trajectory_over():
    run = trainlab.Run(model=("mlp", {"width": 8, "depth": 1}), data="digits", probes=[TrajectoryProbe(every=1)])
    run.step(5)
    run.reset()
    run.step(2)
    steps, _ = run.probes[0].points()
    np.testing.assert_array_equal(steps, [1, 2])


@pytest.mark.parametrize("kw, match", [
    (dict(steps=1), "steps must be"), (dict(steps=2.5), "steps must be"), (dict(span=float("inf")), "span must be"),
    (dict(span=float("nan")), "span must be"), (dict(span=0), "span must be"), (dict(directions="eigen"), "directions must be"),
])
def test_bad_input_is_refused(data, kw, match):
    with pytest.raises(ValueError, match=match):
        L.plane(_mlp(), F.cross_entropy, data, progress=False, **kw)


def test_bad_data_and_model(data):
    with pytest.raises(ValueError, match="data must be"):
        L.plane(_mlp(), F.cross_entropy, data[0], steps=3, progress=False)
    with pytest.raises(ValueError, match="model must be"):
        L.plane("mlp", F.cross_entropy, data, steps=3, progress=False)
    with pytest.raises(ValueError, match="line needs|span must be"):
        L.line(_mlp(), F.cross_entropy, data, end=_mlp(), span=(1.0, float("inf")), progress=False)
