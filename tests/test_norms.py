"""The normalization registry: torch's modules where they exist, the hand-written layers against their
papers' equations (forward in NumPy or plain formulas, backward against autograd, finite differences or
the paper's stated backward), every norm in the MLP and the CNN, and bad settings refused by name."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from trainlab import Run, as_data, models, norms
from trainlab.normlayers import (EvoNormB0, EvoNormS0, PowerNorm, RMSNorm2d, WSConv2d, WSLinear, activation_gain,
                                 standardized)

SHAPES = {1: (16, 6), 2: (5, 6, 4, 3)}  # features (N, C), feature maps (N, C, H, W)


def _x(dims, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(SHAPES[dims], generator=g, dtype=dtype) * 2 + 0.5).requires_grad_()


def _randomize(module, seed=1):
    """Affine parameters off their 1/0 start, so tests see them act."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.rand(p.shape, generator=g, dtype=p.dtype) + 0.5)
    return module


def _ch(t, ndim):
    return t.reshape(1, -1, *[1] * (ndim - 2))


@pytest.fixture(scope="module")
def digits():
    return as_data("digits")


# ---- torch's own modules ----------------------------------------------------------------------
def test_torch_modules_where_they_exist():
    assert type(norms.build("rmsnorm", 8, 1)) is nn.RMSNorm
    gn = norms.build("groupnorm", 8, 2, groups=2)
    assert type(gn) is nn.GroupNorm and gn.num_groups == 2
    inn = norms.build("instancenorm", 8, 2)
    assert type(inn) is nn.InstanceNorm2d and inn.affine
    bcn = norms.build("ws_bcn", 8, 2, groups=4)
    assert [type(m) for m in bcn] == [nn.BatchNorm2d, nn.GroupNorm] and bcn[1].num_groups == 4


def test_rmsnorm2d_normalizes_over_channels_and_positions():
    x = _x(2).detach()
    m = _randomize(RMSNorm2d(6).double())
    rms = x.pow(2).mean((1, 2, 3), keepdim=True).add(torch.finfo(x.dtype).eps).sqrt()
    torch.testing.assert_close(m(x), x / rms * _ch(m.weight, 4))


# ---- PowerNorm --------------------------------------------------------------------------------
@pytest.mark.parametrize("dims", [1, 2])
def test_powernorm_forward_backward_follow_algorithm_1(dims):
    """Shen et al. 2020, Algorithm 1, step by step for three iterations against a plain re-computation."""
    m = _randomize(PowerNorm(6, alpha=0.8).double())
    axes = [0, *range(2, len(SHAPES[dims]))]
    psi2, nu = torch.ones(6, dtype=torch.float64), torch.zeros(6, dtype=torch.float64)
    for t in range(3):
        x = _x(dims, seed=t)
        gy = torch.randn(x.shape, generator=torch.Generator().manual_seed(10 + t), dtype=x.dtype)
        y = m(x)
        nd = x.ndim
        psi = (psi2 + m.eps).sqrt()  # ψ_{t-1}: the forward and the backward of step t divide by it
        xhat = x.detach() / _ch(psi, nd)
        torch.testing.assert_close(y, _ch(m.weight, nd) * xhat + _ch(m.bias, nd))
        psi2 = 0.8 * psi2 + 0.2 * x.detach().pow(2).mean(axes)
        torch.testing.assert_close(m.running_psi2, psi2)
        gx, gw, gb = torch.autograd.grad(y, [x, m.weight, m.bias], gy)  # one backward: each one moves ν
        # γ and β: autograd of the direct formula with ψ_{t-1} held fixed
        w, b = m.weight.detach().clone().requires_grad_(), m.bias.detach().clone().requires_grad_()
        ref_w, ref_b = torch.autograd.grad(_ch(w, nd) * xhat + _ch(b, nd), [w, b], gy)
        torch.testing.assert_close(gw, ref_w)
        torch.testing.assert_close(gb, ref_b)
        gxhat = gy * _ch(m.weight.detach(), nd)
        torch.testing.assert_close(gx, (gxhat - _ch(nu, nd) * xhat) / _ch(psi, nd))
        n = x.numel() / x.shape[1]
        Gamma, Lam = (xhat * xhat).sum(axes) / n, (gxhat * xhat).sum(axes) / n
        nu = nu * (1 - 0.2 * Gamma) + 0.2 * Lam
        torch.testing.assert_close(m.running_nu, nu)
    m.eval()
    x = _x(dims, seed=9).detach()
    torch.testing.assert_close(m(x), _ch(m.weight, x.ndim) * x / _ch((psi2 + m.eps).sqrt(), x.ndim) + _ch(m.bias, x.ndim))
    torch.testing.assert_close(m.running_psi2, psi2)  # eval leaves ψ alone


def test_powernorm_backward_is_exact_when_nothing_flows_through_psi():
    """With ν = 0 (its start) the approximate backward is the exact gradient of γ x / ψ_{t-1} + β."""
    m = _randomize(PowerNorm(6).double())
    x = _x(1)
    gx = torch.autograd.grad(m(x).pow(2).sum(), x)[0]
    x2 = x.detach().clone().requires_grad_()
    psi = (torch.ones(6, dtype=torch.float64) + m.eps).sqrt()
    ref = torch.autograd.grad((m.weight.detach() * x2 / psi + m.bias.detach()).pow(2).sum(), x2)[0]
    torch.testing.assert_close(gx, ref)


# ---- EvoNorm ----------------------------------------------------------------------------------
def _evo_b0_numpy(x, v1, w, b, var_b, eps):
    inst = x.var(axis=(2, 3), keepdims=True)
    den = np.maximum(np.sqrt(var_b + eps)[None, :, None, None], v1[None, :, None, None] * x + np.sqrt(inst + eps))
    return x / den * w[None, :, None, None] + b[None, :, None, None]


def test_evonorm_b0_equation_train_and_eval():
    m = _randomize(EvoNormB0(6).double())
    with torch.no_grad():
        m.v1.sub_(1.0)  # v1 in (-0.5, 0.5): both sides of the max win somewhere
    x = _x(2)
    xn = x.detach().numpy()
    p = {k: v.detach().numpy() for k, v in dict(v1=m.v1, w=m.weight, b=m.bias).items()}
    var_b = xn.var(axis=(0, 2, 3))
    out = m(x)
    np.testing.assert_allclose(out.detach().numpy(), _evo_b0_numpy(xn, var_b=var_b, eps=m.eps, **p), rtol=1e-10)
    running = 0.9 * torch.ones(6, dtype=torch.float64).numpy() + 0.1 * var_b
    np.testing.assert_allclose(m.running_var.numpy(), running, rtol=1e-12)
    m.eval()
    np.testing.assert_allclose(m(x).detach().numpy(), _evo_b0_numpy(xn, var_b=running, eps=m.eps, **p), rtol=1e-10)
    m.train()
    _gradcheck(m, x)


def _gradcheck(m, x):
    """Autograd's gradients of the layer, input and parameters, against finite differences."""
    names = [n for n, _ in m.named_parameters()]
    params = [p.detach().clone().requires_grad_() for _, p in m.named_parameters()]
    f = lambda x, *ps: torch.func.functional_call(m, dict(zip(names, ps)), (x,))  # noqa: E731
    assert torch.autograd.gradcheck(f, (x, *params))


@pytest.mark.parametrize("dims", [1, 2])
def test_evonorm_s0_equation(dims):
    m = _randomize(EvoNormS0(6, groups=3).double())
    x = _x(dims)
    xn = x.detach().numpy()
    n = xn.shape[0]
    shape = (1, 6) + (1,) * (xn.ndim - 2)
    v1, w, b = (t.detach().numpy().reshape(shape) for t in (m.v1, m.weight, m.bias))
    std = np.sqrt(xn.reshape(n, 3, -1).var(axis=2, keepdims=True) + m.eps)
    num = xn / (1 + np.exp(-v1 * xn))
    ref = (num.reshape(n, 3, -1) / std).reshape(xn.shape) * w + b
    np.testing.assert_allclose(m(x).detach().numpy(), ref, rtol=1e-10)
    _gradcheck(m, x)


# ---- weight standardization -------------------------------------------------------------------
def test_ws_standardizes_each_output_unit():
    conv = standardized(nn.Conv2d(3, 5, 3).double(), scaled=False)
    assert type(conv) is WSConv2d and [n for n, _ in conv.named_parameters()] == ["weight", "bias"]
    w = conv.standardized_weight().detach().reshape(5, -1)
    var = conv.weight.detach().reshape(5, -1).var(1, unbiased=False)
    torch.testing.assert_close(w.mean(1), torch.zeros(5, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(w.var(1, unbiased=False), var / (var + 1e-5))  # unit variance, but for ε
    x = _x(2)[:, :3]
    W = conv.weight
    ref_w = (W - W.mean((1, 2, 3), keepdim=True)) / (W.var((1, 2, 3), unbiased=False, keepdim=True) + 1e-5).sqrt()
    out = conv(x)
    torch.testing.assert_close(out, F.conv2d(x, ref_w, conv.bias))
    gy = torch.randn(out.shape, dtype=out.dtype)
    got = torch.autograd.grad(out, [W, x], gy, retain_graph=True)
    ref = torch.autograd.grad(F.conv2d(x, ref_w, conv.bias), [W, x], gy)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b)


def test_scaled_ws_matches_brock_et_al():
    lin = standardized(nn.Linear(40, 7).double(), scaled=True, gamma=activation_gain("relu"))
    assert type(lin) is WSLinear
    with torch.no_grad():
        lin.gain.copy_(torch.linspace(0.5, 2.0, 7))
    W, N = lin.weight.detach(), 40
    ref = lin.gain.detach()[:, None] * activation_gain("relu") * (W - W.mean(1, keepdim=True)) / (W.std(1, unbiased=False, keepdim=True) * math.sqrt(N))
    torch.testing.assert_close(lin.standardized_weight().detach(), ref)
    # what the scaling is for: unit-variance inputs through ReLU and a scaled-WS layer keep unit variance
    unit = standardized(nn.Linear(512, 512), scaled=True, gamma=activation_gain("relu"))
    z = torch.randn(4096, 512, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert abs(float(unit(F.relu(z)).var()) - 1.0) < 0.05


@pytest.mark.parametrize("act, fn", [("relu", F.relu), ("tanh", torch.tanh), ("gelu", F.gelu), ("linear", lambda z: z)])
def test_activation_gain_is_one_over_the_std_through_the_activation(act, fn):
    assert math.isclose(activation_gain("relu"), math.sqrt(2 * math.pi / (math.pi - 1)), rel_tol=1e-12)
    z = torch.randn(2_000_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert abs(activation_gain(act) * float(fn(z).std()) - 1.0) < 3e-3


# ---- every norm in the models -----------------------------------------------------------------
MEANINGFUL = {model: [e.name for e in norms if dims in e.meta.dims] for model, dims in (("mlp", 1), ("cnn", 2))}


@pytest.mark.parametrize("model, norm", [(m, n) for m in ("mlp", "cnn") for n in MEANINGFUL[m]])
def test_every_norm_trains_in_the_models(digits, model, norm):
    opts = {"mlp": {"width": 16, "depth": 2}, "cnn": {"channels": 4}}[model]
    run = Run(model=(model, {**opts, "norm": norm}), data=digits, device="cpu", optimizer="adam", lr=1e-2,
              batch_size=32, probes=[])
    assert run.step(30) == 30
    loss = run.history.frame().train_loss
    assert np.isfinite(loss).all() and loss.iloc[-5:].mean() < 0.8 * loss.iloc[:3].mean()
    info = norms[norm].meta
    layers = [m for n, m in run.model.named_children() if n.startswith(("fc", "conv"))]
    kind = {"ws": False, "scaled_ws": True}.get(info.weight)
    assert all(isinstance(m, (WSLinear, WSConv2d)) == (kind is not None) for m in layers)
    if kind is not None:
        assert all(m.scaled == kind for m in layers)
    acts = [m for n, m in run.model.named_children() if n.startswith("act")]
    assert all(isinstance(a, nn.Identity) == info.activation for a in acts)  # EvoNorm is the activation too


@pytest.mark.parametrize("norm", sorted(set(MEANINGFUL["cnn"]) - set(MEANINGFUL["mlp"])))
def test_a_norm_without_meaning_in_the_mlp_is_refused(digits, norm):
    with pytest.raises(ValueError, match=rf"norm='{norm}' rejected for mlp: .*positions.*allowed here: none, batchnorm"):
        models.build("mlp", digits, norm=norm)


def test_norm_options_reach_the_layer(digits):
    cnn = models.build("cnn", digits, channels=8, norm=("groupnorm", {"groups": 8}))
    assert [m.num_groups for m in cnn.modules() if isinstance(m, nn.GroupNorm)] == [8, 8]


# ---- bad input --------------------------------------------------------------------------------
def test_groups_that_do_not_divide_the_channels_are_refused(digits):
    with pytest.raises(ValueError, match=r"groups=3 rejected for groupnorm: it must divide the 4 channels; allowed: 1, 2, 4"):
        Run(model=("cnn", {"channels": 4, "norm": ("groupnorm", {"groups": 3})}), data=digits, device="cpu")
    with pytest.raises(ValueError, match=r"groups=0 rejected"):
        Run(model=("cnn", {"norm": ("groupnorm", {"groups": 0})}), data=digits, device="cpu")
    with pytest.raises(ValueError, match=r"groupnorm has no setting 'group'"):
        Run(model=("cnn", {"norm": ("groupnorm", {"group": 2})}), data=digits, device="cpu")


@pytest.mark.parametrize("norm", ["batchnorm", "ws_bcn"])
def test_batch_statistics_with_one_example_are_refused(digits, norm):
    spec = ("mlp", {"width": 8, "depth": 1, "norm": norm})
    with pytest.raises(ValueError, match=r"batch_size=1 rejected: norm1(\.0)? \(BatchNorm1d\) normalizes by the batch"):
        Run(model=spec, data=digits, batch_size=1, device="cpu")
    run = Run(model=spec, data=digits, batch_size=8, device="cpu", probes=[])
    run.step(2)
    before = {k: v.clone() for k, v in run.model.state_dict().items()}
    with pytest.raises(ValueError, match=r"batch_size=1 rejected.*use batch_size >= 2"):
        run.set(batch_size=1, lr=0.01)
    assert run.batch_size == 8 and run.lr == 0.05  # nothing of the refused set() applied
    assert all(torch.equal(before[k], v) for k, v in run.model.state_dict().items())
    assert run.step(2) == 2
    evo = Run(model=("cnn", {"channels": 4, "norm": "evonorm_b0"}), data=digits, batch_size=4, device="cpu", probes=[])
    with pytest.raises(ValueError, match=r"norm1 \(EvoNormB0\)"):
        evo.set(batch_size=1)


def test_batch_independent_norms_take_one_example(digits):
    run = Run(model=("mlp", {"width": 8, "depth": 1, "norm": "layernorm"}), data=digits, batch_size=1, device="cpu",
              probes=[])
    assert run.step(3) == 3


def test_norm_spec_survives_save_and_load(digits, tmp_path):
    run = Run(model=("cnn", {"channels": 4, "norm": ("groupnorm", {"groups": 2})}), data=digits, device="cpu", probes=[])
    run.step(3)
    run.save(tmp_path / "r.pt")
    back = Run.load(tmp_path / "r.pt", device="cpu")
    assert back.model_spec[1]["norm"] in (("groupnorm", {"groups": 2}), ["groupnorm", {"groups": 2}])
    x = digits.X[:5]
    run.model.eval(), back.model.eval()
    torch.testing.assert_close(back.model(x), run.model(x))
