"""DSnoT-style repair: the vectorized swaps equal a per-row loop of the rule, keep each row's count, shrink the
expected reconstruction error, and regrow weights at their dense values."""
from __future__ import annotations

import copy

import torch
from torch import nn

import trainlab.prune as P
from trainlab.prune.repair import expected_error, repair, repair_layer


def _row_reference(w, keep, mu, wanda, cycles):
    """One row, the rule spelled out with loops."""
    keep = list(keep)
    c = [float(a) * float(b) for a, b in zip(w, mu)]
    for _ in range(cycles):
        delta = sum(ci for ci, k in zip(c, keep) if not k)
        pruned = [j for j, k in enumerate(keep) if not k]
        if not pruned:
            break
        j = min(pruned, key=lambda q: (abs(delta - c[q]), q))
        after = delta - c[j]
        cands = [q for q, k in enumerate(keep) if k and q != j and abs(after + c[q]) < abs(delta) - 1e-15]
        if not cands:
            break
        k = min(cands, key=lambda q: (float(wanda[q]), q))
        keep[j], keep[k] = True, False
    return keep


def test_repair_layer_equals_the_row_loop():
    torch.manual_seed(0)
    w = torch.randn(6, 12, dtype=torch.float64)
    x = torch.randn(40, 12, dtype=torch.float64) + 0.5
    keep = torch.rand(6, 12) > 0.6
    got = repair_layer(w, keep, x, cycles=8)
    mu, col = x.mean(0), x.norm(dim=0)
    for i in range(6):
        ref = _row_reference(w[i], keep[i].tolist(), mu, (w[i].abs() * col), 8)
        assert got[i].tolist() == ref, i
    assert torch.equal(got.sum(1), keep.sum(1))  # each row keeps its count
    assert (expected_error(w, got, mu).abs() <= expected_error(w, keep, mu).abs() + 1e-12).all()


def test_repair_of_a_pruned_model():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 4))
    x = torch.randn(128, 10) + 0.3
    dense = {k: v.detach().clone() for k, v in P.prunable(model).items()}
    P.Sparsifier(model, sparsity=0.7, scope="layer").apply()
    before = copy.deepcopy(P.masks(model))
    ratio = repair(model, dense, x)
    assert all(r < 1 for r in ratio.values())
    for k, keep in P.masks(model).items():
        w = dict(model.named_parameters())[k].detach()
        assert int(keep.sum()) == int(before[k].sum())
        assert (w[~keep] == 0).all()
        grown = keep & ~before[k]
        assert grown.any() and torch.equal(w[grown], dense[k][grown])


def test_the_live_repair_refuses_what_it_cannot_do():
    import pytest
    from conftest import small_run

    from trainlab import live

    run = small_run()
    with pytest.raises(ValueError, match="needs a pruned run"):
        live.repair(run, progress=False)
    run = small_run(pruning={"sparsity": 0.5, "scope": "layer"})
    with pytest.raises(ValueError, match="apply='maybe' rejected: one of 'better', 'always', 'never'"):
        live.repair(run, progress=False, apply="maybe")
    r = live.repair(run, progress=False, apply="never")[live.REPAIR]  # a preview: the run's masks untouched
    assert not r["applied"] and r["layers"] == ["fc1.weight", "out.weight"]
