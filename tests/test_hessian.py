"""Hessian eigenvalues, trace and density against the dense Hessian; the live Sharpness probe."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import trainlab
from trainlab.analysis import hessian
from trainlab import live
from trainlab.analysis.hessian import HessianOperator
from trainlab.probes import GroupLoss, Sharpness


def small_problem(seed: int = 0, n: int = 120, width: int = 24, dtype=torch.float64):
    """A tanh MLP of a few hundred parameters on random 3-class data."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 6, generator=g, dtype=dtype)
    y = torch.randint(0, 3, (n,), generator=g)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, width), nn.Tanh(), nn.Linear(width, 3)).to(dtype)
    return model, X, y


def dense_hessian(model, X, y, loss_fn=F.cross_entropy) -> torch.Tensor:
    """The whole Hessian by forward-over-reverse, jacfwd(grad(loss)), over the flat parameters (an
    independent path), checked symmetric.

    Not torch.func.hessian (jacfwd over jacrev): in torch 2.13 it returns a wrong, asymmetric
    Hessian through nn.LayerNorm (asymmetry ~5e-3 of max|H| in float64 on a 2,810-parameter MLP),
    where jacfwd(grad), plain autograd and finite differences agree. The columns are jvp's of the
    gradient, vmapped in chunks of 128 (jacfwd's one vmap over all n columns took 14 s at n = 2,810
    here, chunks 2.6 s).
    """
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def loss(t):
        parts = torch.split(t, [s.numel() for s in shapes])
        params = {n: p.view(s) for n, p, s in zip(names, parts, shapes)}
        return loss_fn(torch.func.functional_call(model, params, (X,)), y)

    g = torch.func.grad(loss)
    eye = torch.eye(len(theta), dtype=theta.dtype, device=theta.device)
    H = torch.vmap(lambda v: torch.func.jvp(g, (theta,), (v,))[1], chunk_size=128)(eye)  # = jacfwd(grad(loss))
    scale = float(H.abs().max())
    assert float((H - H.T).abs().max()) <= 1e-10 * scale, "the dense reference Hessian is not symmetric"
    return H


@pytest.fixture(scope="module")
def problem():
    model, X, y = small_problem()
    Hd = dense_hessian(model, X, y)
    return model, X, y, Hd, torch.linalg.eigvalsh(Hd).numpy()[::-1].copy()


@pytest.mark.parametrize("mode", ["reverse", "forward"])
def test_operator_matches_the_dense_hessian(problem, mode):
    model, X, y, Hd, _ = problem
    op = HessianOperator(model, F.cross_entropy, (X, y), mode=mode)
    V = torch.randn(op.n, 5, dtype=torch.float64)
    torch.testing.assert_close(op(V), Hd @ V, rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(op(V[:, 0]), Hd @ V[:, 0], rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("block", [1, 3])
def test_top5_within_tol_of_dense(problem, block):
    model, X, y, _, dense = problem
    values = hessian.top_eigenvalues(model, F.cross_entropy, (X, y), k=5, tol=1e-3, block=block)
    assert values.shape == (5,) and np.all(np.diff(values) <= 0)  # largest first
    np.testing.assert_allclose(values, dense[:5], rtol=1e-3)


def test_top_eigenvalues_float32_model():
    model, X, y = small_problem(seed=3, dtype=torch.float32)
    dense = torch.linalg.eigvalsh(dense_hessian(model.double(), X.double(), y)).numpy()[::-1]
    model.float()
    values = hessian.top_eigenvalues(model, F.cross_entropy, (X, y), k=5)
    np.testing.assert_allclose(values, dense[:5], rtol=1e-3)


def test_dataloader_weights_batches_by_size(problem):
    """Uneven batches (50, 50, 20) give the Hessian of the mean loss over all 120 examples."""
    model, X, y, Hd, dense = problem
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X, y), batch_size=50)
    op = HessianOperator(model, F.cross_entropy, loader)
    assert [len(b[0]) for b in op.batches] == [50, 50, 20]
    v = torch.randn(op.n, dtype=torch.float64)
    torch.testing.assert_close(op(v), Hd @ v, rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(hessian.top_eigenvalues(model, F.cross_entropy, loader, k=2), dense[:2], rtol=1e-3)


def test_warm_start_from_the_eigenvector_converges_at_once(problem):
    model, X, y, _, dense = problem
    _, vectors = hessian.top_eigenvalues(model, F.cross_entropy, (X, y), k=1, tol=1e-8, return_vectors=True)
    op = HessianOperator(model, F.cross_entropy, (X, y))
    warm, _, _ = hessian.lanczos(op, 1, 1e-3, 1, 100, vectors, hessian._generator(1), trainlab.jobs.Progress())
    assert op.hvps <= 2
    np.testing.assert_allclose(warm, dense[:1], rtol=1e-3)


@pytest.mark.parametrize("method", ["hutchinson", "hutch++"])
def test_trace_within_its_standard_error(problem, method):
    model, X, y, Hd, _ = problem
    exact = float(torch.trace(Hd))
    est, err = hessian.trace(model, F.cross_entropy, (X, y), samples=60, method=method, progress=False)
    assert err > 0 and abs(est - exact) < 4 * err


def test_hutchpp_is_exact_when_the_sketch_spans_the_space():
    """With more sketch vectors than parameters, Q spans everything: tr(QᵀHQ) = tr(H) to 1e-3."""
    model, X, y = small_problem(seed=1, n=40, width=4)  # 4·6+4 + 4·3+3 = 43 parameters
    exact = float(torch.trace(dense_hessian(model, X, y)))
    est, _ = hessian.trace(model, F.cross_entropy, (X, y), samples=150, method="hutch++", progress=False)
    assert est == pytest.approx(exact, rel=1e-3)


def test_sliced_hutchinson_samples_are_unbiased_with_the_right_spread(problem):
    """Each sample Σ_s w_s v_sᵀH_s v_s: mean tr(H), variance Σ_s w_s² · 2Σ_{i≠j} (H_s)_ij² (Rademacher)."""
    model, X, y, Hd, _ = problem
    gen = torch.Generator().manual_seed(0)
    slices = hessian._slices((X, y), 4, torch.Generator().manual_seed(5), torch.device("cpu"))
    sliced = hessian._SlicedHessian(model, F.cross_entropy, slices, "reverse")
    q = sliced.quadratic_forms(400, gen, None).numpy()
    dense = [dense_hessian(model, Xs, ys) for Xs, ys in slices]
    var = sum(w**2 * 2 * float((Hs**2).sum() - (Hs.diagonal() ** 2).sum()) for w, Hs in zip(sliced.weights, dense))
    assert abs(q.mean() - float(torch.trace(Hd))) < 4 * np.sqrt(var / len(q))
    assert q.var(ddof=1) == pytest.approx(var, rel=0.3)


def test_slq_weights_are_squared_first_components(problem):
    """With as many Lanczos steps as parameters the quadrature is exact: its nodes are H's distinct
    eigenvalues and its weights the squared projections of the start vector onto their eigenspaces
    (a repeated eigenvalue, like this cross-entropy Hessian's 25-fold 0, has a space, not a vector:
    one node whose weight sums the space)."""
    model, X, y, Hd, _ = problem
    op = HessianOperator(model, F.cross_entropy, (X, y))
    nodes, weights = hessian.slq_nodes(model, F.cross_entropy, (X, y), vectors=1, iters=op.n, seed=4, progress=False)
    v = hessian._rademacher(op.n, 1, hessian._generator(4), "cpu")[:, 0]
    v = v / v.norm()
    evals, U = torch.linalg.eigh(Hd)
    evals, proj = evals.numpy(), (U.T @ v).numpy() ** 2
    space = np.concatenate([[0], np.cumsum(np.diff(evals) > 1e-9 * np.abs(evals).max())])  # eigenspace of each
    values = np.array([evals[space == s].mean() for s in range(space[-1] + 1)])
    shares = np.bincount(space, weights=proj)
    assert (np.bincount(space) > 1).any()  # the case the eigenspaces are for
    assert weights.sum() == pytest.approx(1.0, abs=1e-10)
    for s in np.argsort(-shares)[:10]:  # the heaviest eigenspaces are found with their exact weight
        j = np.argmin(np.abs(nodes[0] - values[s]))
        assert nodes[0, j] == pytest.approx(values[s], abs=1e-6)
        assert weights[0, j] == pytest.approx(shares[s], rel=1e-3, abs=1e-8)


def test_density_matches_the_dense_spectrum(problem):
    model, X, y, Hd, dense = problem
    grid, dens = hessian.density(model, F.cross_entropy, (X, y), vectors=24, iters=40, sigma=0.01, progress=False)
    step = grid[1] - grid[0]
    assert dens.sum() * step == pytest.approx(1.0, abs=1e-3)
    # first moment: ∫λ p(λ) = mean of vᵀHv/n over the 24 unit-norm Rademacher starts, an unbiased
    # estimate of tr(H)/n with standard error sqrt(2 Σ_{i≠j} H_ij² / 24) / n
    n = len(dense)
    sd = float(2 * ((Hd**2).sum() - (Hd.diagonal() ** 2).sum())) ** 0.5 / n / 24**0.5
    assert abs((grid * dens).sum() * step - dense.sum() / n) < 4 * sd
    # CDFs: the SLQ density against the dense eigenvalues broadened the same way
    ref = np.exp(-0.5 * ((grid[:, None] - dense[None]) / 0.01) ** 2).sum(1) / (n * 0.01 * np.sqrt(2 * np.pi))
    assert np.max(np.abs(np.cumsum(dens) - np.cumsum(ref)) * step) < 0.05


@pytest.mark.parametrize("call", ["top", "trace", "density"])
def test_bad_inputs_raise_clear_errors(call):
    model, X, y = small_problem()
    fn = {"top": hessian.top_eigenvalues, "trace": hessian.trace, "density": hessian.density}[call]
    kw = {} if call == "top" else {"progress": False}
    with pytest.raises(ValueError, match="scalar"):
        fn(model, lambda out, t: F.cross_entropy(out, t, reduction="none"), (X, y), **kw)
    with pytest.raises(ValueError, match="empty"):
        fn(model, F.cross_entropy, (X[:0], y[:0]), **kw)
    with pytest.raises(ValueError, match="floating point"):
        fn(_int_model(), F.cross_entropy, (X, y), **kw)


def _int_model() -> nn.Module:
    """A model holding an integer parameter (torch lets one exist only without requires_grad)."""
    m = nn.Sequential(nn.Linear(6, 3))
    m.register_parameter("scale", nn.Parameter(torch.ones(3, dtype=torch.int64), requires_grad=False))
    return m.double()


def test_k_and_tol_are_checked(problem):
    model, X, y, _, _ = problem
    with pytest.raises(ValueError, match="k must be"):
        hessian.top_eigenvalues(model, F.cross_entropy, (X, y), k=0)
    with pytest.raises(ValueError, match="tol"):
        hessian.top_eigenvalues(model, F.cross_entropy, (X, y), tol=0)
    with pytest.raises(ValueError, match="method"):
        hessian.trace(model, F.cross_entropy, (X, y), method="exact")


# ---- live sharpness ----------------------------------------------------------------------------
def gd_run(lr: float, steps: int, probes, data=("opposing", {})) -> trainlab.Run:
    run = trainlab.Run(model=("mlp", {"width": 32, "depth": 2, "activation": "tanh"}), data=data, optimizer="sgd",
                       momentum=0.0, lr=lr, batch_size=100_000, device="cpu", probes=probes, eval_every=100_000)
    run.step(steps)
    return run


def test_full_batch_gd_reaches_the_edge_of_stability():
    """Progressive sharpening up to 2/lr, then λ_max hovers there instead of growing on."""
    lr = 0.5
    run = gd_run(lr, 300, [Sharpness(every=5)])
    s = run.history.frame().dropna(subset=["sharpness"])
    assert np.allclose(s["sharpness_threshold"], 2 / lr)
    assert s["sharpness"].iloc[0] < 1.5 / lr < s["sharpness"].max()  # it sharpened past 1.5/lr...
    assert s["sharpness"].max() < 3 / lr  # ...and never ran far past the edge
    late = s["sharpness"].iloc[len(s) // 2 :]
    assert late.between(0.8 * 2 / lr, 1.2 * 2 / lr).all()
    assert s["sharpness_hvps"].iloc[-10:].median() <= 4  # warm starts: a few products a measurement


def test_warm_started_sharpness_matches_a_cold_solve():
    run = gd_run(0.5, 40, [Sharpness(every=10)])
    row = run.history.frame().dropna(subset=["sharpness"]).iloc[-1]
    cold = hessian.top_eigenvalues(run.model, run.loss_fn, (run.data.X, run.data.y), k=1, tol=1e-6)
    assert row["sharpness"] == pytest.approx(cold[0], rel=1e-3)


def test_sgd_momentum_and_adam_thresholds_and_preconditioned_sharpness():
    run = trainlab.Run(model=("mlp", {"width": 8, "depth": 1}), data="moons", optimizer="adam", lr=0.01,
                       batch_size=100_000, device="cpu", probes=[Sharpness(every=5)])
    run.step(10)
    row = run.history.frame().iloc[-1]
    assert row["sharpness_threshold"] == pytest.approx((2 + 2 * 0.9) / (0.01 * (1 - 0.9)))  # 38/lr
    # independent reference: the dense P^-1/2 H P^-1/2 from Adam's state
    opt, params = run.torch_optimizer, run.params
    P = torch.cat([((1 - 0.9 ** opt.state[p]["step"]) * ((opt.state[p]["exp_avg_sq"] / (1 - 0.999 ** opt.state[p]["step"])).sqrt() + 1e-8)).reshape(-1)
                   for p in params]).double()
    model = run.model_copy().double()
    Hd = dense_hessian(model, run.data.X.double(), run.data.y)
    ref = torch.linalg.eigvalsh(Hd / P.sqrt()[:, None] / P.sqrt()[None, :]).max().item()
    assert row["preconditioned_sharpness"] == pytest.approx(ref, rel=2e-3)
    assert row["sharpness"] == pytest.approx(torch.linalg.eigvalsh(Hd).max().item(), rel=2e-3)

    sgd = trainlab.Run(model=("mlp", {"width": 8, "depth": 1}), data="moons", optimizer="sgd", lr=0.1, momentum=0.9,
                       device="cpu", probes=[Sharpness(every=2)])
    sgd.step(2)
    last = sgd.history.frame().iloc[-1]
    assert last["sharpness_threshold"] == pytest.approx(3.8 / 0.1)
    assert "preconditioned_sharpness" not in last or np.isnan(last["preconditioned_sharpness"])


def test_group_loss_probe_reports_each_group():
    run = gd_run(0.5, 3, [GroupLoss(every=1)])
    df = run.history.frame()
    groups = run.data.info["groups"]
    with torch.no_grad():
        for name, idx in groups.items():
            expected = float(F.cross_entropy(run.model(run.data.X[idx]), run.data.y[idx]))
            assert df[f"loss/{name}"].iloc[-1] == pytest.approx(expected, rel=1e-5)


def test_live_hessian_publishes_snapshots():
    run = trainlab.Run(model=("mlp", {"width": 8, "depth": 1}), data="moons", device="cpu")
    run.step(3)
    top = live.compute(live.hessian, run, what="top", k=3, progress=False)["hessian_top"]
    step, snap = run.history.snapshot("hessian_top")
    assert step == 3 and np.allclose(snap["eigenvalue"], top["eigenvalue"]) and len(top["eigenvalue"]) == 3
    direct = hessian.top_eigenvalues(run.model, run.loss_fn, (run.data.X, run.data.y), k=3)
    np.testing.assert_allclose(top["eigenvalue"], direct, rtol=1e-3)
    live.compute(live.hessian, run, what="density", vectors=2, iters=10, progress=False)
    _, dens = run.history.snapshot("hessian_density")
    assert dens["grid"].shape == dens["density"].shape
    with pytest.raises(ValueError, match="what must be"):
        live.compute(live.hessian, run, what="everything")


def test_unconverged_solve_warns(problem):
    model, X, y, _, _ = problem
    with pytest.warns(UserWarning, match="max_hvps"):
        hessian.top_eigenvalues(model, F.cross_entropy, (X, y), k=5, tol=1e-12, max_hvps=8)
