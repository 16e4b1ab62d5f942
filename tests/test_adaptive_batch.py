"""AdAdaGrad's adaptive batch size: the variance tests against a direct computation, and the step hook live."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import small_run
from torch import nn
from torch.nn import functional as F

from trainlab import Run
from trainlab.adaptive_batch import inner_product_test, next_batch_size, norm_test, per_example_grads


def tiny_run(**kw) -> Run:
    kw.setdefault("model", ("mlp", {"width": 8, "depth": 1}))
    kw.setdefault("data", ("moons", {"n": 64}))
    kw.setdefault("batch_size", 16)
    return small_run(probes=[], **kw)


def _per_example_by_loops(model, loss_fn, X, y):
    rows = []
    for i in range(len(X)):
        model.zero_grad()
        loss_fn(model(X[i : i + 1]), y[i : i + 1]).backward()
        rows.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]).detach().numpy().copy())
    return np.stack(rows)


def test_variance_tests_match_a_direct_computation():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
    X, y = torch.randn(20, 4), torch.randint(0, 3, (20,))
    G = per_example_grads(model, F.cross_entropy, X, y)
    ref = _per_example_by_loops(model, F.cross_entropy, X, y)
    np.testing.assert_allclose(G.numpy(), ref, rtol=1e-4, atol=1e-6)
    ref = ref.astype(np.float64)
    B, g = len(ref), ref.mean(0)
    var = sum(np.sum((r - g) ** 2) for r in ref) / (B - 1)
    eta = 0.3
    res = norm_test(torch.from_numpy(ref), eta)
    assert res["ratio"] == pytest.approx(var / B / (eta**2 * g @ g), rel=1e-9)
    assert res["batch_size"] == pytest.approx(var / (eta**2 * g @ g), rel=1e-9)
    ips = ref @ g
    var_ip = np.var(ips, ddof=1)
    orth = sum(np.sum((r - (r @ g) / (g @ g) * g) ** 2) for r in ref) / (B - 1)
    theta, nu = 0.4, 0.7
    res = inner_product_test(torch.from_numpy(ref), theta, nu)
    need = max(var_ip / (theta**2 * (g @ g) ** 2), orth / (nu**2 * (g @ g)))
    assert res["batch_size"] == pytest.approx(need, rel=1e-9) and res["ratio"] == pytest.approx(need / B, rel=1e-9)
    assert next_batch_size({"ratio": 2.0, "batch_size": 37.2}, 16, 1000) == 38
    assert next_batch_size({"ratio": 2.0, "batch_size": 3000.0}, 16, 1000) == 1000
    assert next_batch_size({"ratio": 0.5, "batch_size": 8.0}, 16, 1000) == 16


@pytest.mark.parametrize("kind", ["norm", "inner_product"])
def test_adaptive_batch_grows_when_noise_dominates(kind):
    """Targets that are pure noise around a linear model already at its optimum: the gradient mean is
    tiny next to its per-example spread, so the test fails and the batch grows, live."""
    g = torch.Generator().manual_seed(0)
    X = torch.randn(2000, 5, generator=g)
    y = torch.randn(2000, generator=g)
    run = Run(model=nn.Linear(5, 1), data=(X, y), optimizer="adagrad", lr=0.01, batch_size=8, device="cpu",
              probes=[], adaptive_batch=kind, batch_test_every=2, batch_test_eta=0.5, max_batch_size=512)
    run.step(12)
    df = run.history.frame()
    assert df["batch_size"].iloc[0] == 8 and df["batch_size"].iloc[-1] > 8
    assert run.batch_size == df["batch_size"].iloc[-1] or run.batch_size > df["batch_size"].iloc[-1]
    assert (df["batch_size"].diff().dropna() >= 0).all()
    tested = df.dropna(subset=["batch_test"])
    assert tested["step"].tolist() == list(range(2, 13, 2))
    events = df["event"].dropna()
    assert len(events) >= 1 and f"{kind} test failed" in events.iloc[0] and "batch size 8 ->" in events.iloc[0]
    assert run.settings()["batch_size"] <= 512


def test_adaptive_batch_is_refused_for_a_fixed_dataloader():
    from torch.utils.data import DataLoader, TensorDataset
    X, y = torch.randn(64, 2), torch.randint(0, 2, (64,))
    run = tiny_run(data=DataLoader(TensorDataset(X, y), batch_size=16))
    with pytest.raises(ValueError, match="adaptive_batch"):
        run.set(adaptive_batch="norm")
    assert run.adaptive_batch == "off"
    with pytest.raises(ValueError, match="adaptive_batch"):
        tiny_run(data=DataLoader(TensorDataset(X, y), batch_size=16), adaptive_batch="norm")
