"""The fast paths of the hand-written norm layers: the EvoNorm and PowerNorm Numba kernels against NumPy and
against the torch formula (forward, gradients, running statistics), the hand-written backwards by finite differences
(gradcheck, float64), and second derivatives (create_graph, torch.func) equal to autograd of the formula."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import trainlab.normlayers as L
from trainlab.kernels import evonorm as K
from trainlab.kernels import powernorm as P
from trainlab.kernels import rmsnorm as R

MAPS, FEATURES = (5, 6, 4, 3), (16, 6)
WIDE_MAPS = (2, 6, 6, 7)  # 42 positions: the kernels loop over a channel's positions (fewer run as features)


def _x(shape, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=dtype) * 2 + 0.5).requires_grad_()


def _randomize(m, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.rand(p.shape, generator=g, dtype=p.dtype) + 0.5)
        if hasattr(m, "v1"):
            m.v1.sub_(1.0)  # both signs: B0's max takes either side somewhere
    return m


LAYERS = {  # name: (build, shapes)
    "evonorm_s0": (lambda: L.EvoNormS0(6, groups=3), [FEATURES, MAPS, WIDE_MAPS]),
    # S0's backward on features: whole-row loops for groups of up to kernels.evonorm.ROW_GROUPS = 64, block loops beyond
    "evonorm_s0 groups of 64": (lambda: L.EvoNormS0(128, groups=2), [(5, 128)]),
    "evonorm_s0 groups of 65": (lambda: L.EvoNormS0(130, groups=2), [(5, 130)]),
    # B0's kernels: 2x2 maps with a constant 4; whole-row loops under 16 positions (forward) and 32 (backward)
    "evonorm_b0": (lambda: L.EvoNormB0(6), [MAPS, (4, 6, 2, 2), (3, 6, 4, 5), WIDE_MAPS]),
    "rmsnorm2d": (lambda: L.RMSNorm2d(6), [FEATURES, MAPS, WIDE_MAPS]),
}
CASES = [(name, shape) for name, (_, shapes) in LAYERS.items() for shape in shapes]


def _torch_path(monkeypatch):
    """The layers as on CUDA: the torch formula, with no hand-written backward."""
    monkeypatch.setattr(L, "_on_kernels", lambda *a: False)
    monkeypatch.setattr(L, "_transformed", lambda: True)


# ---- kernels against NumPy -------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n, c, p, groups", [(7, 8, 1, 4), (3, 6, 12, 2), (2, 4, 5, 1), (2, 4, 42, 2)])
def test_s0_forward_kernel_equals_numpy(dtype, n, c, p, groups):
    rng = np.random.default_rng(0)
    x = rng.normal(0.5, 2, (n, c * p)).astype(dtype)
    v = rng.uniform(-1.5, 1.5, c).astype(dtype)
    w, b = (rng.uniform(0.5, 1.5, c).astype(dtype) for _ in range(2))
    y, s, stats = K.s0_forward(x, np.stack([v, w, b]), groups, p, 1e-5)
    assert y.dtype == s.dtype == stats.dtype == dtype and stats.shape == (2, n, groups)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    ref_y, ref_s = K.s0_reference(x, v, w, b, groups, p, 1e-5)
    np.testing.assert_allclose(y, ref_y, rtol=tol, atol=tol)
    np.testing.assert_allclose(s, ref_s, rtol=tol, atol=0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_vectorized_sigmoid_is_within_3_ulp(dtype):
    """sigmoid.py's σ inside a kernel compiled as the norms' are (fastmath), against a long-double reference,
    across both tails and the range where exp's reduction changes its k."""
    from numba import njit

    from trainlab.kernels.config import ERROR_MODEL, FASTMATH
    from trainlab.kernels.sigmoid import sigmoid

    @njit(fastmath=FASTMATH, error_model=ERROR_MODEL)
    def each(z, out):
        for i in range(z.size):
            out[i] = sigmoid(z[i])

    tail = 87 if dtype == np.float32 else 700  # beyond it e^{-|z|} is floored: σ's lower tail ~1e-38, not 0
    z = np.concatenate([np.linspace(-tail, tail, 400_001), np.random.default_rng(0).normal(0, 4, 100_000),
                        [0.0, -0.0, 1e-30, -1e-30]]).astype(dtype)
    out = np.empty_like(z)
    each(z, out)
    zl = z.astype(np.longdouble)
    ref = np.where(zl >= 0, 1 / (1 + np.exp(-zl)), np.exp(zl) / (1 + np.exp(zl)))
    assert np.max(np.abs(out - ref) / np.spacing(ref.astype(dtype))) <= 3
    big = np.array([-1e4, 1e4, np.inf, -np.inf], dtype)
    each(big, out[:4])
    assert out[1] == out[2] == 1 and 0 <= out[0] < 1e-37 and 0 <= out[3] < 1e-37


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("p", [9, 4, 20])  # 4: compiled with a constant 4; 9 in row loops; 20 per channel
def test_b0_forward_kernel_equals_numpy(dtype, train, p):
    rng = np.random.default_rng(1)
    n, c = 4, 5
    x = rng.normal(0.5, 2, (n, c, p)).astype(dtype)
    v = rng.uniform(-0.5, 0.5, c).astype(dtype)
    w, b, running = (rng.uniform(0.5, 1.5, c).astype(dtype) for _ in range(3))
    moved = running.copy()
    y, stats, per_c = K.b0_forward(x, np.stack([v, w, b]), moved, 1e-5, dtype(0.1), train)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    ref = K.b0_reference(x, v, w, b, 1e-5, None if train else running)
    np.testing.assert_allclose(y, ref, rtol=tol, atol=tol)
    if train:
        np.testing.assert_allclose(per_c[1], x.var(axis=(0, 2)), rtol=tol)  # the batch variance, for the running one
        np.testing.assert_allclose(moved, 0.9 * running + 0.1 * x.var(axis=(0, 2)), rtol=tol)
    else:
        np.testing.assert_array_equal(moved, running)


def test_b0_backward_in_eval_reads_no_unwritten_statistics():
    """In eval the batch's statistics are not needed, but the backward reads them (times 0): the forward must
    write them, or a NaN left in an uninitialized buffer became a NaN gradient (a CI run in several). The
    buffers it allocates must hold the eval values (mean 0, the running variance, its a) and the examples'
    statistics, and the gradients be finite."""
    rng = np.random.default_rng(2)
    n, c, p = 3, 4, 6
    x, gy = rng.normal(size=(n, c, p)), rng.normal(size=(n, c, p))
    params, running = rng.uniform(0.5, 1.5, (3, c)), rng.uniform(0.5, 1.5, c)
    y, stats, per_c = K.b0_forward(x, params, running, 1e-5, 0.1, False)
    got = K.b0_backward(gy, x, params, stats, per_c, False)
    np.testing.assert_array_equal(per_c[0], 0.0)
    np.testing.assert_array_equal(per_c[1], running)
    np.testing.assert_allclose(per_c[2], np.sqrt(running + 1e-5))
    np.testing.assert_allclose(stats[0], x.mean(axis=2))
    np.testing.assert_allclose(stats[1], np.sqrt(x.var(axis=2) + 1e-5))
    assert all(np.isfinite(t).all() for t in got)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n, c, p", [(7, 8, 1), (3, 6, 4), (3, 5, 20)])
def test_rmsnorm_kernels_equal_numpy(dtype, n, c, p):
    """Forward against NumPy; backward against the gradient of the NumPy forward by central differences (float64,
    every entry of x and γ)."""
    rng = np.random.default_rng(4)
    x, gy = (rng.normal(0.5, 2, (n, c * p)).astype(dtype) for _ in range(2))
    w = rng.uniform(0.5, 1.5, c).astype(dtype)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    y, r = R.forward(x, w, 1e-5)
    np.testing.assert_allclose(y, R.reference(x, w, 1e-5), rtol=tol, atol=tol)
    gx, gw = R.backward(gy, x, w, r)
    loss = lambda x, w: (R.reference(x, w, 1e-5) * gy).sum()  # noqa: E731
    h, x64, w64 = 1e-6, x.astype(np.float64), w.astype(np.float64)
    num_gx = np.zeros_like(x64)
    for i in np.ndindex(x.shape):
        e = np.zeros_like(x64)
        e[i] = h
        num_gx[i] = (loss(x64 + e, w64) - loss(x64 - e, w64)) / (2 * h)
    num_gw = np.array([(loss(x64, w64 + h * e) - loss(x64, w64 - h * e)) / (2 * h) for e in np.eye(c)])
    tol = 1e-4 if dtype == np.float32 else 1e-7
    np.testing.assert_allclose(gx, num_gx, rtol=tol, atol=tol)
    np.testing.assert_allclose(gw, num_gw, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n, c, p", [(7, 8, 1), (3, 6, 12), (3, 5, 42)])
def test_powernorm_kernels_equal_numpy(dtype, n, c, p):
    rng = np.random.default_rng(2)
    x, gy = (rng.normal(0.5, 2, (n, c, p)).astype(dtype) for _ in range(2))
    w, b, running, nu = (rng.uniform(0.5, 1.5, c).astype(dtype) for _ in range(4))
    tol = 1e-5 if dtype == np.float32 else 1e-12
    y, saved, moved = np.empty_like(x), np.empty((2, c), dtype), running.copy()
    P.forward(x, w, b, moved, 1e-5, 0.9, y, saved)
    ref_y, ref_sq, ref_running = P.forward_reference(x, w, b, running, 1e-5, 0.9)
    for got, want in [(y, ref_y), (saved[0], running), (saved[1], ref_sq), (moved, ref_running)]:
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol)
    gx, grads, nu_moved = np.empty_like(x), np.empty((2, c), dtype), nu.copy()
    P.backward(gy, x, w, saved, nu_moved, 1e-5, 0.9, gx, grads)
    ref = P.backward_reference(gy, x, w, running, ref_sq, nu, 1e-5, 0.9)
    for got, want in zip([gx, grads[0], grads[1], nu_moved], ref):
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


@pytest.mark.parametrize("shape", [FEATURES, MAPS, WIDE_MAPS])
def test_powernorm_fused_step_equals_torch_ops(monkeypatch, shape):
    """Three training steps and an eval through the fused kernels and through torch's batch-norm kernels (the
    path of CUDA and half precision): the same outputs, gradients and running ψ² and ν."""
    fast, plain = _randomize(L.PowerNorm(6, alpha=0.8)), _randomize(L.PowerNorm(6, alpha=0.8))
    for t in range(3):
        x = _x(shape, seed=t, dtype=torch.float32)
        got = _grads(fast, x)
        with monkeypatch.context() as mp:
            mp.setattr(L, "_on_kernels", lambda *a: False)
            ref = _grads(plain, x)
        for a, b in zip(got, ref):
            torch.testing.assert_close(a, b, rtol=2e-5, atol=2e-5)
        for a, b in zip(fast.buffers(), plain.buffers()):
            torch.testing.assert_close(a, b, rtol=2e-5, atol=2e-5)
    assert fast.running_nu.abs().min() > 0  # ν moved off its start, so its term was compared too


def test_kernels_without_jit_agree():
    """With NUMBA_DISABLE_JIT=1 (how coverage sees the kernels) the plain-Python kernels give the same."""
    code = (
        "import numpy as np\n"
        "from trainlab.kernels import evonorm as K\n"
        "rng = np.random.default_rng(0)\n"
        "x = rng.normal(size=(3, 4, 5)); v, w, b, r = (rng.uniform(0.5, 1.5, 4) for _ in range(4))\n"
        "y = K.b0_forward(x, np.stack([v, w, b]), r.copy(), 1e-5, 0.1, True)[0]\n"
        "assert np.allclose(y, K.b0_reference(x, v, w, b, 1e-5))\n"
        "x2 = x.reshape(3, 20); y2 = K.s0_forward(x2, np.stack([v, w, b]), 2, 5, 1e-5)[0]\n"
        "assert np.allclose(y2, K.s0_reference(x2, v, w, b, 2, 5, 1e-5)[0])\n"
        "from trainlab.kernels import powernorm as P\n"
        "y3, sv, r2 = np.empty_like(x), np.empty((2, 4)), r.copy()\n"
        "P.forward(x, w, b, r2, 1e-5, 0.9, y3, sv)\n"
        "assert np.allclose(y3, P.forward_reference(x, w, b, r, 1e-5, 0.9)[0])\n"
        "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "NUMBA_DISABLE_JIT": "1"},
                         capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "ok", out.stderr


# ---- the layers: fast path against the torch formula ------------------------------------------
def _grads(m, x, seed=5):
    y = m(x)
    gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed), dtype=y.dtype)
    return (y, *torch.autograd.grad(y, [x, *m.parameters()], gy))


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("name, shape", CASES)
def test_fast_path_equals_torch_formula(monkeypatch, name, shape, train):
    build = LAYERS[name][0]
    fast, plain = _randomize(build()).train(train), _randomize(build()).train(train)
    for t in range(2):  # twice: B0's running variance moves in training
        x = _x(shape, seed=t, dtype=torch.float32)
        got = _grads(fast, x)
        with monkeypatch.context() as mp:
            _torch_path(mp)
            ref = _grads(plain, x)
        for a, b in zip(got, ref):
            torch.testing.assert_close(a, b, rtol=2e-5, atol=2e-5)
        for a, b in zip(fast.buffers(), plain.buffers()):
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize("name, shape", CASES)
def test_hand_written_backward_passes_gradcheck(name, shape):
    m = _randomize(LAYERS[name][0]().double())
    names = [n for n, _ in m.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in m.parameters()]
    f = lambda x, *ps: torch.func.functional_call(m, dict(zip(names, ps)), (x,))  # noqa: E731
    assert torch.autograd.gradcheck(f, (_x(shape), *params))


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("name, shape", CASES)
def test_second_derivatives_equal_the_formulas(monkeypatch, name, shape, train):
    """Hessian-vector products by double backward (create_graph) and the dense Hessian of the Hessian
    tools (torch.func.jacfwd over grad; in eval mode for B0, whose training step updates a buffer, which
    torch.func refuses, as for BatchNorm) through the layer equal those of the plain torch formula."""
    m = _randomize(LAYERS[name][0]().double()).train(train)
    dense = not (train and name == "evonorm_b0")
    theta = torch.cat([p.detach().flatten() for p in m.parameters()])
    x = _x(shape).detach()

    def loss(flat):
        ps, i = {}, 0
        for n, p in m.named_parameters():
            ps[n] = flat[i:i + p.numel()].view(p.shape)
            i += p.numel()
        return torch.func.functional_call(m, ps, (x,)).pow(3).mean()

    def hvp(v):
        t = theta.clone().requires_grad_()
        g = torch.autograd.grad(loss(t), t, create_graph=True)[0]
        return torch.autograd.grad(g @ v, t)[0]

    v = torch.randn(theta.shape, generator=torch.Generator().manual_seed(3), dtype=theta.dtype)
    got = hvp(v)
    with monkeypatch.context() as mp:
        _torch_path(mp)
        ref = hvp(v)
    torch.testing.assert_close(got, ref)
    if dense:
        torch.testing.assert_close(torch.func.jacfwd(torch.func.grad(loss))(theta) @ v, ref)


def test_feature_group_norm_equals_torch_group_norm():
    """WS + BCN's GroupNorm on features: LayerNorm over the groups, the same as nn.GroupNorm."""
    ours, ref = L.FeatureGroupNorm(4, 8).double(), torch.nn.GroupNorm(4, 8).double()
    _randomize(ours), _randomize(ref)
    for shape in [(16, 8), (5, 8, 3, 2)]:
        x = _x(shape)
        got, want = _grads(ours, x), _grads(ref, x)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("build", [lambda: L.EvoNormS0(6, groups=3), lambda: L.EvoNormB0(6), lambda: L.RMSNorm2d(6),
                                   lambda: L.PowerNorm(6)], ids=["evonorm_s0", "evonorm_b0", "rmsnorm2d", "powernorm"])
def test_empty_batch_passes_through_and_moves_no_statistic(build, train):
    """As torch's LayerNorm: an empty batch gives an empty output and a backward; the running statistics stay."""
    m = _randomize(build()).train(train)
    before = [b.clone() for b in m.buffers()]
    x = torch.randn(0, 6, 3, 3, requires_grad=True)
    y = m(x)
    assert y.shape == x.shape
    y.sum().backward()
    assert x.grad.shape == x.shape
    for a, b in zip(m.buffers(), before):
        torch.testing.assert_close(a, b)
