"""Layer allocations against their closed forms: ER/ERK densities (Evci et al. 2020), LAMP's definition."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import trainlab.prune as P

SHAPES = {"conv1.weight": (16, 3, 3, 3), "conv2.weight": (32, 16, 3, 3), "fc.weight": (10, 512)}


def _closed_form(shapes, s, kernel):
    """ε solved by hand: no layer exceeds density 1 at this sparsity (checked)."""
    raw = {k: (sum(v) / math.prod(v)) if kernel else (v[0] + v[1]) / (v[0] * v[1]) for k, v in shapes.items()}
    n = {k: math.prod(v) for k, v in shapes.items()}
    eps = (1 - s) * sum(n.values()) / sum(raw[k] * n[k] for k in shapes)
    assert all(eps * r <= 1 for r in raw.values())
    return {k: eps * raw[k] for k in shapes}


@pytest.mark.parametrize("kernel", [True, False])
def test_erk_and_er_match_the_closed_form(kernel):
    got = P.erk_densities(SHAPES, 0.9, kernel=kernel)
    ref = _closed_form(SHAPES, 0.9, kernel)
    for k in SHAPES:
        assert got[k] == pytest.approx(ref[k], rel=1e-12)
    kept = sum(got[k] * math.prod(v) for k, v in SHAPES.items())
    assert kept == pytest.approx(0.1 * sum(math.prod(v) for v in SHAPES.values()))


def test_erk_makes_a_layer_dense_when_its_density_passes_one():
    shapes = {"small": (4, 3), "big": (256, 256)}
    d = P.erk_densities(shapes, 0.5)
    assert d["small"] == 1.0
    # the rest is solved again: the big layer keeps the remaining budget exactly
    total = 12 + 256 * 256
    assert d["big"] * 256 * 256 == pytest.approx(0.5 * total - 12)


def test_erk_masks_have_those_densities():
    torch.manual_seed(0)
    scores = {k: torch.rand(v) for k, v in SHAPES.items()}
    masks = P.allocations["erk"].build(scores, 0.9, SHAPES)
    d = P.erk_densities(SHAPES, 0.9)
    for k, m in masks.items():
        assert int(m.sum()) == round(d[k] * m.numel())
        thr = scores[k][m].min()  # each layer keeps its own largest scores
        assert (scores[k][~m] <= thr).all()


def _lamp_by_definition(w):
    flat = w.reshape(-1).double() ** 2
    out = torch.empty_like(flat)
    for u in range(flat.numel()):
        out[u] = flat[u] / flat[flat >= flat[u]].sum()  # Σ over v with w_v² ≥ w_u² (distinct values)
    return out.reshape(w.shape)


def test_lamp_scores_match_the_definition_and_keep_each_layers_largest():
    torch.manual_seed(1)
    ws = {"a": torch.randn(6, 5), "b": 3 * torch.randn(4, 6)}
    for w in ws.values():
        torch.testing.assert_close(P.lamp_scores(w), _lamp_by_definition(w))
        assert P.lamp_scores(w).max() == 1.0  # the largest weight of every layer scores 1: never pruned first
    masks = P.allocations["lamp"].build({k: w.abs() for k, w in ws.items()}, 0.7, {})
    assert sum(int(m.sum()) for m in masks.values()) == round(0.3 * 54)
    allscores = torch.cat([P.lamp_scores(w).reshape(-1) for w in ws.values()])
    thr = allscores.sort(descending=True).values[round(0.3 * 54) - 1]
    for k, w in ws.items():
        assert torch.equal(masks[k], P.lamp_scores(w) >= thr)


def test_global_and_uniform():
    torch.manual_seed(2)
    scores = {"a": torch.rand(10, 10), "b": torch.rand(5, 20) * 0.5}
    g = P.allocations["global"].build(scores, 0.6, {})
    allv = torch.cat([s.reshape(-1) for s in scores.values()])
    thr = allv.sort(descending=True).values[79]
    assert all(torch.equal(g[k], scores[k] >= thr) for k in scores)
    u = P.allocations["uniform"].build(scores, 0.6, {})
    assert all(int(m.sum()) == 40 for m in u.values())


def test_sparsifier_allocations_on_a_model_reach_the_target():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 10))
    batch = (torch.randn(16, 3, 8, 8), torch.randint(0, 10, (16,)))
    for alloc in P.allocations.names():
        m = __import__("copy").deepcopy(model)
        P.Sparsifier(m, sparsity=0.8, allocation=alloc).apply(batch=batch)
        assert P.sparsity(m)["global"] == pytest.approx(0.8, abs=0.01), alloc


def test_knapsack_equals_brute_force():
    import itertools

    import numpy as np

    from trainlab.prune.adaptive import knapsack

    rng = np.random.default_rng(0)
    densities = np.arange(1, 6) / 5
    sizes = {"a": 120, "b": 300, "c": 80}
    curves = {k: np.sort(rng.random(5))[::-1] * rng.uniform(1, 10) for k in sizes}  # distortion falls as d rises
    budget = 0.45 * sum(sizes.values())
    got = knapsack(curves, densities, sizes, budget, buckets=sum(sizes.values()))  # one bucket per weight: exact
    best = min((c for c in itertools.product(range(5), repeat=3)
                if sum(densities[j] * sizes[k] for j, k in zip(c, sizes)) <= budget + 1e-9),
               key=lambda c: sum(curves[k][j] for j, k in zip(c, sizes)))
    assert got == {k: densities[j] for j, k in zip(best, sizes)}


def test_adaptive_curves_additivity_and_a_smaller_total_distortion_than_uniform():
    from trainlab import Run
    from trainlab.prune.adaptive import additivity, distortion_curves

    run = Run(model=("mlp", {"width": 32}), data="digits", device="cpu", seed=0)
    run.step(150)
    model = run.model_copy()
    x, y = run.data.fixed_sample(256, 0)
    weights = P.prunable(model)
    scores = {k: w.detach().abs() for k, w in weights.items()}
    dens, curves = distortion_curves(model, weights, scores, x)
    k = "fc1.weight"
    with torch.no_grad():
        dense = model(x)
        w0 = weights[k].detach().clone()
        weights[k].mul_(P.allocations["uniform"].build({k: scores[k]}, 0.5, {})[k])
        ref = float((model(x) - dense).pow(2).sum(-1).mean())
        weights[k].copy_(w0)
    assert curves[k][list(dens).index(0.5)] == pytest.approx(ref, rel=1e-6)
    assert all(c[-1] == 0 for c in curves.values())  # density 1: no distortion
    summed, joint = additivity(model, weights, scores, x, {k: 0.9 for k in weights})
    assert joint == pytest.approx(summed, rel=0.25)  # Xu et al.'s additivity, near for small perturbations
    sizes = {k: w.numel() for k, w in weights.items()}
    m_ad = __import__("copy").deepcopy(model)
    P.Sparsifier(m_ad, sparsity=0.8, allocation="adaptive").apply(batch=(x, y))
    assert P.sparsity(m_ad)["global"] >= 0.8 - 1e-9
    chosen = {k: 1 - P.sparsity(m_ad)[k] for k in weights}
    total = sum(curves[k][int(round(chosen[k] * 20)) - 1] for k in weights)  # the DP's objective, Σ δ_l
    uniform = sum(curves[k][list(dens).index(0.2)] for k in weights)
    assert total < uniform  # uniform densities lie on the grid within the budget: the DP can only do better
    assert sum(chosen[k] * sizes[k] for k in weights) <= 0.2 * sum(sizes.values()) + 1e-6
