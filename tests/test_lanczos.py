"""Top eigenvalues that keep `tol`: models with close top eigenvalues, several start seeds, against
dense float64 eigendecompositions; the Sharpness probe's warm start when the top two swap."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_hessian import dense_hessian
from torch import nn

import trainlab
from trainlab.analysis import hessian
from trainlab.analysis.hessian import HessianOperator
from trainlab.jobs import Progress
from trainlab.probes import Sharpness
from trainlab.probes.base import Probe

TOL = 1e-3


def layernorm_mlp(seed: int, width: int, steps: int = 200):
    """16-width-LayerNorm-tanh-width-tanh-10 in float64, after `steps` of full-batch GD (lr 0.5) with
    cross-entropy on 256 random examples: top eigenvalues a few percent apart."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(256, 16, generator=g, dtype=torch.float64)
    y = torch.randint(0, 10, (256,), generator=g)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(16, width), nn.LayerNorm(width), nn.Tanh(), nn.Linear(width, width), nn.Tanh(),
                          nn.Linear(width, 10)).double()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(X), y).backward()
        opt.step()
    return model, X, y


@pytest.fixture(scope="module", params=[(0, 40), (1, 24)], ids=["2810-params", "1306-params"])
def layernorm_problem(request):
    """Two fixtures where the old gap-based stop returned a wrong top-k: (0, 40) skipped λ2 and λ3 for
    k=2 (one seed, 2.3 % off) and λ3 for k=3 (3 of 5 seeds, 0.1-0.5 % off); (1, 24) skipped an
    eigenvalue of the top 5 (3 of 5 seeds, 1.9 % off)."""
    model, X, y = layernorm_mlp(*request.param)
    H = dense_hessian(model, X, y)
    return model, X, y, H, torch.linalg.eigvalsh(H).numpy()[::-1].copy()


def test_the_dense_reference_matches_the_operator_through_layernorm(layernorm_problem):
    model, X, y, H, _ = layernorm_problem
    for mode in ("reverse", "forward"):
        op = HessianOperator(model, F.cross_entropy, (X, y), mode=mode)
        V = torch.randn(op.n, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        torch.testing.assert_close(op(V), H @ V, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("k, block", [(1, None), (2, 1), (3, 1), (5, 1), (2, None), (3, None), (5, None)])
def test_every_top_eigenvalue_within_tol_for_every_seed(layernorm_problem, k, block):
    """Each of the top k within tol relative of the dense eigenvalue of the same rank, for five
    start seeds; and what the stopping rule guarantees outright: an eigenvalue within tol·|θ| of
    each θ, and θ_i <= λ_i (Cauchy interlacing)."""
    model, X, y, _, dense = layernorm_problem
    for seed in range(5):
        values = hessian.top_eigenvalues(model, F.cross_entropy, (X, y), k=k, tol=TOL, block=block, seed=seed)
        np.testing.assert_allclose(values, dense[:k], rtol=TOL, err_msg=f"seed {seed}")
        assert np.all(values <= dense[:k] * (1 + 1e-9))
        assert np.all(np.min(np.abs(values[:, None] - dense[None, :]), 1) <= TOL * np.abs(values))


@pytest.mark.parametrize("block", [1, 2, 3])
def test_the_stopping_residuals_are_the_true_residuals(layernorm_problem, block):
    """The solver reads each Ritz pair's residual off the Krylov relation instead of forming H·x:
    recomputed with the dense H, every returned pair has ||Hx - θx|| <= tol·|θ|, and the vectors
    are orthonormal."""
    model, X, y, H, _ = layernorm_problem
    values, vectors = hessian.top_eigenvalues(model, F.cross_entropy, (X, y), k=5, block=block, return_vectors=True)
    residual = torch.linalg.vector_norm(H @ vectors - vectors * torch.as_tensor(values.copy()), dim=0).numpy()
    assert np.all(residual <= TOL * np.abs(values))
    torch.testing.assert_close(vectors.T @ vectors, torch.eye(5, dtype=torch.float64), rtol=0, atol=1e-10)


def quadratic(top: list[float], n: int = 300, seed: int = 0):
    """Least squares whose Hessian (2/N)·XᵀX has exactly the eigenvalues `top` plus a bulk in
    [0, 0.8·min(top)), with random eigenvectors: a model whose top eigenvalues we choose."""
    g = torch.Generator().manual_seed(seed)
    bulk = torch.rand(n - len(top), generator=g, dtype=torch.float64) * 0.8 * min(top)
    lam = torch.cat([torch.tensor(top, dtype=torch.float64), bulk])
    V, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    X = V @ torch.diag(torch.sqrt(lam * n / 2)) @ V.T  # n examples
    model = nn.Linear(n, 1, bias=False).double()
    return model, X, torch.randn(n, 1, generator=g, dtype=torch.float64), np.sort(lam.numpy())[::-1]


@pytest.mark.parametrize("gap", [1e-2, 1e-4, 0.0])
def test_close_and_repeated_top_pairs_are_both_found(gap):
    """λ1 and λ2 = λ1(1 - gap), down to a repeated pair: the default block (2 for k >= 2) finds both."""
    model, X, y, lam = quadratic([10.0, 10.0 * (1 - gap), 9.5, 8.5])
    H = 2 / len(X) * X.T @ X  # the Hessian of mean((Xw - y)²)
    np.testing.assert_allclose(torch.linalg.eigvalsh(H).numpy()[::-1][:4], lam[:4], rtol=1e-10)  # as built
    for k in (2, 3):
        for seed in range(5):
            values = hessian.top_eigenvalues(model, F.mse_loss, (X, y), k=k, tol=TOL, seed=seed)
            np.testing.assert_allclose(values, lam[:k], rtol=TOL, err_msg=f"k={k}, seed {seed}")


def test_one_start_vector_sees_one_direction_of_a_repeated_eigenvalue():
    """Why block defaults to 2 for k >= 2: with block=1 the Krylov space holds one direction of the
    pair, so the second value returned is λ3, although every residual is within tol. For k = 1 a
    pair at the top does no harm."""
    model, X, y, lam = quadratic([10.0, 10.0, 9.5, 8.5])
    for seed in range(3):
        values = hessian.top_eigenvalues(model, F.mse_loss, (X, y), k=2, block=1, seed=seed)
        assert values[0] == pytest.approx(10.0, rel=TOL) and values[1] == pytest.approx(9.5, rel=TOL)
        assert hessian.top_eigenvalues(model, F.mse_loss, (X, y), k=1, block=1, seed=seed)[0] == pytest.approx(10.0, rel=TOL)


# ---- the Sharpness probe's warm start -------------------------------------------------------------
def test_sharpness_warm_start_follows_the_top_two_through_a_crossing():
    """Fixed eigenvectors, λ1 and λ2 trading places from one measurement to the next: the probe's
    two-vector warm start reports the larger every time; a one-vector warm start, which starts on an
    exact eigenvector, stops at once on the one that became second."""
    n, g = 200, torch.Generator().manual_seed(3)
    V, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    bulk = torch.rand(n - 3, generator=g, dtype=torch.float64) * 6.0
    model, y = nn.Linear(n, 1, bias=False).double(), torch.randn(n, 1, generator=g, dtype=torch.float64)
    probe, one = Sharpness(every=1), None
    one_vector = []
    for t in range(10):
        s = 0.5 * math.cos(math.pi * t / 3)  # λ1, λ2 = 10 ± s: they cross between measurements
        lam = torch.cat([torch.tensor([10 + s, 10 - s, 7.0], dtype=torch.float64), bulk])
        X = V @ torch.diag(torch.sqrt(lam * n / 2)) @ V.T
        op = HessianOperator(model, F.mse_loss, (X, y))
        assert probe._top(op, "hessian") == pytest.approx(10 + abs(s), rel=TOL), f"measurement {t}"
        op1 = HessianOperator(model, F.mse_loss, (X, y))
        vals, vecs, _ = hessian.lanczos(op1, 1, TOL, 1, 400, one, torch.Generator().manual_seed(0), Progress())
        one = vecs[:, 0]
        one_vector.append(vals[0] / (10 + abs(s)) - 1)
    assert min(one_vector) < -0.05  # the one-vector warm start reported λ2 after a crossing


def test_sharpness_block_below_two_is_refused():
    with pytest.raises(ValueError, match="block must be a whole number >= 2"):
        Sharpness(block=1)


class DenseTop(Probe):
    """λ1 and λ2 of the dense float64 Hessian at the same steps as the probe under test."""

    name = "dense_top"

    def measure(self, run):
        H = dense_hessian(run.model_copy().double(), run.data.X.double(), run.data.y, run.loss_fn)
        ev = torch.linalg.eigvalsh(H).numpy()[::-1]
        return {"dense_l1": float(ev[0]), "dense_l2": float(ev[1])}


def test_sharpness_matches_the_dense_lambda1_at_every_checkpoint_at_the_edge():
    """Full-batch GD on a 346-parameter LayerNorm MLP, 10 classes, at lr = 2/(4·λ1 at init): the
    sharpness rises past 2/lr, where λ1 and λ2 come within a few percent and swap. The one-vector
    warm start was off by more than tol at 10 of these 60 checkpoints (reporting λ2, up to 12 % low,
    at steps 274, 289 and 299); now every checkpoint is within tol of the dense λ1."""
    g = torch.Generator().manual_seed(0)
    X, y = torch.randn(128, 8, generator=g), torch.randint(0, 10, (128,), generator=g)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16), nn.Tanh(), nn.Linear(16, 10))
    start = torch.linalg.eigvalsh(dense_hessian(model.double(), X.double(), y)).max().item()
    model.float()
    lr = 2 / (4 * start)
    run = trainlab.Run(model=model, data=(X, y), optimizer="sgd", momentum=0.0, lr=lr, batch_size=100_000,
                       device="cpu", eval_every=100_000, probes=[Sharpness(every=5), DenseTop(every=5)])
    run.step(300)
    df = run.history.frame().dropna(subset=["sharpness"])
    late = df.iloc[len(df) // 2 :]
    assert len(df) == 60 and late["dense_l1"].median() > 2 / lr  # at (past) the edge of stability
    assert ((late["dense_l1"] - late["dense_l2"]) / late["dense_l1"]).min() < 0.05  # the top two come close
    err = (df["sharpness"] / df["dense_l1"] - 1).abs()
    assert err.max() <= TOL, df.loc[err > TOL, ["sharpness", "dense_l1", "dense_l2"]].to_string()
    assert df["sharpness_hvps"].median() <= 24  # the block warm start keeps a measurement at a few dozen products
