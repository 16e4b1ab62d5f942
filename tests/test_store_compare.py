"""Runs side by side from a store: the settings that differ, what changed mid-run and when, the best steps."""
from __future__ import annotations

import pandas as pd
import pytest

from trainlab import Run
from trainlab.store import Store
from trainlab.store.compare import best_steps, changes, settings_diff


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    s = Store(tmp_path_factory.mktemp("runs"))
    a = Run(model=("mlp", {"width": 16}), data="moons", lr=0.05, eval_every=20, probes=[])
    a.step(60)
    s.save(a, "a")
    b = Run(model=("mlp", {"width": 32}), data="moons", lr=0.05, eval_every=20, probes=[])
    b.step(40)
    b.set(lr=0.01)
    b.step(20)
    b.set(optimizer="adam")
    b.step(20)
    s.save(b, "b")
    return s


def test_only_differing_settings_are_listed(store):
    diff = settings_diff(store, ["a", "b"])
    assert diff.loc["model.width"].tolist() == ["16", "32"]
    assert diff.loc["lr"].tolist() == ["0.05", "0.01"] and diff.loc["optimizer"].tolist() == ["sgd", "adam"]
    assert "seed" not in diff.index and "data" not in diff.index and "train_loss" not in diff.index
    assert "train_loss" in settings_diff(store, ["a", "b"], metrics=True).index


def test_mid_run_changes_come_with_their_steps(store):
    table = changes(store, ["a", "b"])
    b = table[table.run == "b"]
    assert (table.run == "a").sum() == 0
    lr = b[b.change.str.startswith("lr=")]
    assert lr["step"].tolist() == [41] and lr["change"].iloc[0] == "lr=0.01"
    assert any("optimizer" in c and "adam" in c for c in b[b.step == 61]["change"])


def test_the_best_step_is_the_lowest_loss_or_the_highest_accuracy(store):
    history = store.history(["a", "b"])
    best = best_steps(history, "val_loss").set_index("run")
    for name in ("a", "b"):
        h = history[history.run == name].dropna(subset=["val_loss"])
        assert best.loc[name, "val_loss"] == pytest.approx(h["val_loss"].min())
        assert best.loc[name, "step"] == int(h.loc[h["val_loss"].idxmin(), "step"])
    acc = best_steps(history, "val_acc").set_index("run")
    assert acc.loc["a", "val_acc"] == pytest.approx(history[history.run == "a"]["val_acc"].max())
    assert best_steps(pd.DataFrame({"run": ["x"], "step": [1]}), "val_loss").empty
