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
    for alloc in P.allocations.names():
        m = __import__("copy").deepcopy(model)
        P.Sparsifier(m, sparsity=0.8, allocation=alloc).apply()
        assert P.sparsity(m)["global"] == pytest.approx(0.8, abs=0.01), alloc
