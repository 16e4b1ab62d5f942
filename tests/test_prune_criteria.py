"""Each criterion's scores against a direct autograd computation on a tiny float64 model (torch.func)."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, jacfwd

import trainlab.prune as P


def _tiny():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 5), nn.LayerNorm(5), nn.Tanh(), nn.Linear(5, 2)).double()
    x, y = torch.randn(7, 3, dtype=torch.float64), torch.randint(0, 2, (7,))
    return model, (x, y)


def _loss_of_weights(model, batch):
    """f(flat prunable weights) with every other parameter fixed: what the references differentiate."""
    x, y = batch
    names = list(P.prunable(model))
    params = {k: v.detach() for k, v in model.named_parameters()}
    shapes = [params[k].shape for k in names]

    def f(flat):
        chunks = torch.split(flat, [s.numel() for s in shapes])
        ps = {**params, **{k: c.reshape(s) for k, c, s in zip(names, chunks, shapes)}}
        return nn.functional.cross_entropy(functional_call(model, ps, (x,)), y)

    flat = torch.cat([params[k].reshape(-1) for k in names])
    return f, flat, names, shapes


def _unflat(v, names, shapes):
    return dict(zip(names, (c.reshape(s) for c, s in zip(torch.split(v, [s.numel() for s in shapes]), shapes))))


def _scores(method, model, batch, **opts):
    weights = P.prunable(model)
    return P.criteria[method].build(model, weights, batch, nn.functional.cross_entropy, **opts)


def test_magnitude_and_random():
    model, batch = _tiny()
    s = _scores("magnitude", model, batch)
    for k, w in P.prunable(model).items():
        assert torch.equal(s[k], w.detach().abs())
    a, b, c = (_scores("random", model, batch, seed=k) for k in (1, 1, 2))
    assert all(torch.equal(a[k], b[k]) for k in a) and not torch.equal(a["0.weight"], c["0.weight"])


@pytest.mark.parametrize("method", ["gradient", "snip"])
def test_first_order_scores_match_autograd(method):
    model, batch = _tiny()
    f, flat, names, shapes = _loss_of_weights(model, batch)
    ref = (flat * grad(f)(flat)).abs()
    if method == "snip":
        ref = ref / ref.sum()
    ref = _unflat(ref, names, shapes)
    got = _scores(method, model, batch)
    for k in names:
        torch.testing.assert_close(got[k], ref[k], rtol=1e-10, atol=1e-14)


def test_grasp_matches_a_dense_hessian():
    model, batch = _tiny()
    f, flat, names, shapes = _loss_of_weights(model, batch)
    H = jacfwd(grad(f))(flat)  # torch.func.hessian is wrong through LayerNorm in torch 2.13 (RECIPES.md)
    torch.testing.assert_close(H, H.T, rtol=0, atol=1e-12)
    ref = _unflat(flat * (H @ grad(f)(flat)), names, shapes)  # w ⊙ Hg = -S, the paper's score negated
    got = _scores("grasp", model, batch)
    for k in names:
        torch.testing.assert_close(got[k], ref[k], rtol=1e-8, atol=1e-12)


def _synflow_ref(model, density, rounds):
    """R = 1ᵀ f_|θ|(1) by functional_call, scores |θ ⊙ ∂R/∂θ|, global top-k each round."""
    names = list(P.prunable(model))
    params = {k: v.detach().abs().double() for k, v in model.named_parameters()}
    keep = {k: torch.ones_like(params[k]) for k in names}
    x = torch.ones(1, 3, dtype=torch.float64)
    for r in range(1, rounds + 1):
        def R(ws):
            return functional_call(model, {**params, **{k: ws[k] * keep[k] for k in names}}, (x,)).sum()
        g = grad(R)({k: params[k] for k in names})
        scores = {k: (params[k] * keep[k] * g[k]).abs() for k in names}
        if r < rounds:
            keep = {k: v.double() for k, v in P.allocations["global"].build(scores, 1 - density ** (r / rounds),
                                                                            {}).items()}
    return scores


@pytest.mark.parametrize("rounds", [1, 5])
def test_synflow_matches_direct_autograd(rounds):
    model, _ = _tiny()
    select = lambda s, d: P.allocations["global"].build(s, 1 - d, {})  # noqa: E731
    got = P.criteria["synflow"].build(model, P.prunable(model), None, None, select=select, iterations=rounds,
                                      density=0.3)
    ref = _synflow_ref(model, 0.3, rounds)
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], rtol=1e-10, atol=1e-14)


def test_data_driven_criteria_need_a_batch():
    model, _ = _tiny()
    with pytest.raises(ValueError, match="needs a batch"):
        _scores("snip", model, None)
