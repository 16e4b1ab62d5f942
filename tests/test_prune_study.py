"""The sparsity study: matched layer ratios across criteria, and accuracy against sparsity from real runs."""
import pytest

from trainlab.experiment import build, results, train
from trainlab.prune import sparsity
from trainlab.prune.study import configs, curves

BASE = {"model": ("mlp", {"width": 32}), "data": "digits", "optimizer": "adam", "lr": 0.003, "steps": 150, "seed": 0}


def test_every_criterion_gets_the_same_layer_sparsities():
    cs = configs(BASE, sparsities=(0.9,), methods=("random", "magnitude", "snip"))
    per_layer = []
    for c in cs:
        run = build(c)
        run.step(1)  # pruned once, at step 0
        s = sparsity(run.model)
        per_layer.append({k: round(v, 2) for k, v in s.items()})
    assert per_layer[0] == per_layer[1] == per_layer[2]
    assert per_layer[0]["global"] == pytest.approx(0.9, abs=0.01)


def test_accuracy_falls_with_sparsity_for_each_criterion():
    cs = configs(BASE, sparsities=(0.5, 0.98), methods=("random", "magnitude"))
    table = curves(results([train(c, keep_history=False) for c in cs], cs))
    assert set(table["method"]) == {"random", "magnitude"} and (table["count"] == 1).all()
    for method, rows in table.groupby("method"):
        acc = rows.set_index("sparsity")["mean"]
        assert acc[0.5] > acc[0.98] + 0.05, method


def test_bad_studies_are_refused():
    with pytest.raises(ValueError, match="not pruning criteria"):
        configs(BASE, methods=("magnitud",))
    with pytest.raises(ValueError, match="matches them"):
        configs(BASE, allocation="global")
    with pytest.raises(ValueError, match=r"outside \[0, 1\)"):
        configs(BASE, sparsities=(1.0,))
