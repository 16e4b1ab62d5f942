"""Intrinsic dimension: a toy whose relevant subspace is known, the Fastfood transform, runs and cancel."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn

import trainlab
from trainlab.analysis import intrinsic_dimension
from trainlab.analysis.intrinsic import Fastfood, fwht
from trainlab.jobs import Progress

K_IN, OUTPUTS = 5, 4
K = K_IN * OUTPUTS  # the loss depends on W only through A @ W: K_IN x OUTPUTS numbers


def _toy(seed=0, p=30, n=100):
    """Linear regression whose inputs span K_IN of p dimensions, so only K of the 120 weights matter."""
    g = torch.Generator().manual_seed(seed)
    A = torch.linalg.qr(torch.randn(p, K_IN, generator=g))[0].T  # (K_IN, p), orthonormal rows
    X = torch.randn(n, K_IN, generator=g) @ A
    y = X @ torch.randn(p, OUTPUTS, generator=g)
    torch.manual_seed(seed)
    return nn.Linear(p, OUTPUTS, bias=False), X, y


def _mse(out, y):
    return ((out - y) ** 2).mean()


def _lbfgs(params):  # the toy is a least-squares problem: L-BFGS solves each subspace exactly
    return torch.optim.LBFGS(params, lr=1, max_iter=50, line_search_fn="strong_wolfe",
                             tolerance_grad=1e-12, tolerance_change=1e-14)


@pytest.mark.parametrize("projection", ["dense", "fastfood"])
def test_toy_intrinsic_dimension_is_the_relevant_subspace(projection):
    model, X, y = _toy()
    before = model.weight.detach().clone()
    res = intrinsic_dimension(model, _mse, (X, y), dims=range(8, 25, 2), steps=2, optimizer=_lbfgs,
                              projection=projection, progress=False)
    assert res.metric == "r2" and res.projection == projection
    assert res.full > 0.9999
    perf = dict(zip(res.dims.tolist(), res.performance))
    assert all(perf[d] > 0.9999 for d in (20, 22, 24))  # d >= K: the subspace holds an exact solution
    assert all(perf[d] < 0.97 for d in (8, 10, 12))      # a random d-subspace catches about d/K of the loss
    # d_int90 is a little below K (a random d-subspace explains about d/K of the variance), d_int99.99 is K
    assert 0.7 * K <= res.d_int <= K
    assert intrinsic_dimension(model, _mse, (X, y), dims=[18, 19, 20, 21], steps=2, optimizer=_lbfgs, threshold=0.9999,
                               projection=projection, progress=False).d_int == K
    assert torch.equal(model.weight, before)


def test_fwht_matches_the_hadamard_matrix():
    x = torch.randn(3, 32, dtype=torch.float64)
    H = torch.tensor(scipy.linalg.hadamard(32), dtype=torch.float64)
    torch.testing.assert_close(fwht(x), x @ H.T)
    with pytest.raises(ValueError, match="power-of-two"):
        fwht(torch.zeros(6))


def test_fastfood_is_linear_with_unit_norm_columns():
    ff = Fastfood(12, 1000, torch.Generator().manual_seed(0)).double()
    ff.B, ff.G = ff.B.double(), ff.G.double()
    P = torch.stack([ff(e) for e in torch.eye(12, dtype=torch.float64)], 1)  # (1000, 12), column by column
    z = torch.randn(12, dtype=torch.float64)
    torch.testing.assert_close(ff(z), P @ z)
    np.testing.assert_allclose(P.norm(dim=0).numpy(), 1.0, atol=0.15)  # the dense P's columns have norm 1 exactly
    assert abs(float(P[:, 0] @ P[:, 1])) < 0.2  # near-orthogonal, like Gaussian columns


def test_a_run_is_measured_from_its_initial_weights_and_cancel_keeps_dims():
    run = trainlab.Run(model=("mlp", {"width": 8, "depth": 1}), data="digits", probes=[])
    run.step(5)
    now = {k: v.clone() for k, v in run.model.state_dict().items()}
    start = run.model_copy()
    start.load_state_dict(run.initial_state)
    val = (run.data.X_val, run.data.y_val)
    res = intrinsic_dimension(start, run.loss_fn, run.data, dims=(4, 40), steps=15, lr=0.05, val_data=val, progress=False)
    assert res.metric == "accuracy" and 0 < res.full <= 1 and res.complete
    assert res.performance[1] > res.performance[0] > 0.0
    for k, v in run.model.state_dict().items():
        assert torch.equal(v, now[k])

    class CancelAfter(Progress):
        def update(self, n=1):
            super().update(n)
            if self.done >= 15 * 2:  # the full model and the first dimension
                self.cancel()

    part = intrinsic_dimension(start, run.loss_fn, run.data, dims=(4, 40), steps=15, lr=0.05, val_data=val,
                               progress=CancelAfter())
    assert not part.complete and np.isfinite(part.performance[0]) and np.isnan(part.performance[1])
    np.testing.assert_allclose(part.performance[0], res.performance[0])


@pytest.mark.parametrize("kw, match", [
    (dict(dims=[0, 3]), "dims must be"), (dict(dims=[10**6]), "dims must be"), (dict(projection="sparse"), "projection"),
    (dict(steps=0), "steps must be"), (dict(lr=float("nan")), "lr must be"), (dict(threshold=1.5), "threshold"),
    (dict(metric="f1"), "metric must be"),
])
def test_bad_input_is_refused(kw, match):
    model, X, y = _toy()
    with pytest.raises(ValueError, match=match):
        intrinsic_dimension(model, _mse, (X, y), progress=False, **{"dims": [2], **kw})
