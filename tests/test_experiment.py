"""trainlab.experiment: a configuration trains to the same result as the Run it describes."""
import pytest

from trainlab import Run
from trainlab.experiment import flatten, results, train

CONFIG = {"model": ("mlp", {"width": 16}), "data": "moons", "optimizer": "adam", "lr": 0.01, "seed": 3, "steps": 120}


def test_a_configuration_trains_like_its_run():
    row = train(CONFIG)
    run = Run(model=("mlp", {"width": 16}), data="moons", optimizer="adam", lr=0.01, seed=3, probes=[])
    run.step(120)
    direct = run.history.frame()
    assert row["status"] == "finished" and row["steps"] == 120
    assert row["history"]["train_loss"].tolist() == direct["train_loss"].tolist()
    final = run.evaluate()["val_loss"]
    assert row["val_loss"] == pytest.approx(final)
    best = min(direct["val_loss"].min(), final)  # the validation passes and the final weights
    assert row["best_val_loss"] == pytest.approx(best)
    assert row["train_loss"] == direct["train_loss"].iloc[-1]  # the last step's, as the store's final metrics


def test_stop_progress_and_divergence():
    seen = []
    row = train(CONFIG, chunk=20, stop=lambda: len(seen) >= 2, on_progress=lambda s, m: seen.append((s, m)))
    assert row["status"] == "cancelled" and row["steps"] == 40 and [s for s, _ in seen] == [20, 40]
    assert "train_loss" in seen[-1][1]
    wild = train({**CONFIG, "optimizer": "sgd", "lr": 1e6, "steps": 200}, keep_history=False)
    assert wild["status"] == "diverged" and wild["steps"] < 200 and "history" not in wild


def test_bad_configurations_name_the_setting():
    with pytest.raises(ValueError, match="steps"):
        train({**CONFIG, "steps": 0})
    with pytest.raises(ValueError, match="lr"):
        train({**CONFIG, "lr": -1.0})


def test_results_are_tidy():
    assert flatten(CONFIG)["model.width"] == 16 and flatten(CONFIG)["model"] == "mlp"
    frame = results([{"status": "finished", "val_loss": 0.5, "history": None}], [CONFIG])
    assert list(frame.columns)[:3] == ["model", "model.width", "data"] and "history" not in frame


def test_parallel_axes_are_log_for_lr_like_settings_and_keep_categories():
    import numpy as np
    import pandas as pd

    from trainlab.experiment import axis_kind, parallel_axes

    frame = pd.DataFrame({"lr": [1e-3, 1e-2, 1e-1], "model.width": [16, 64, 256], "momentum": [0.0, 0.5, 0.9],
                          "optimizer": ["sgd", "adam", "sgd"], "val_loss": [0.3, 0.2, np.nan]})
    config = {"model": ("mlp", {}), "optimizer": "sgd"}
    assert [axis_kind(c, frame[c], config) for c in frame] == ["log", "log", "linear", "category", "linear"]
    axes = parallel_axes(frame, list(frame), config)
    np.testing.assert_allclose(axes["lr"]["values"], [0, 0.5, 1])
    np.testing.assert_allclose(axes["model.width"]["values"], [0, 0.5, 1])
    np.testing.assert_allclose(axes["momentum"]["values"], [0, 5 / 9, 1])
    assert axes["optimizer"]["labels"] == ["sgd", "adam"] and list(axes["optimizer"]["values"]) == [0, 1, 0]
    assert np.isnan(axes["val_loss"]["values"][2]) and axes["lr"]["labels"] == ["0.001", "0.01", "0.1"]


def test_dotted_settings_round_trip():
    from trainlab.experiment import with_setting

    c = with_setting(CONFIG, "model.width", 64)
    assert c["model"] == ("mlp", {"width": 64}) and CONFIG["model"] == ("mlp", {"width": 16})
    assert with_setting({"model": "mlp"}, "model.depth", 3)["model"] == ("mlp", {"depth": 3})
    p = with_setting(with_setting(CONFIG, "pruning.method", "snip"), "pruning.sparsity", 0.5)
    assert p["pruning"] == {"method": "snip", "sparsity": 0.5}
    assert flatten(p)["pruning.sparsity"] == 0.5 and "pruning" not in flatten(p)
    with pytest.raises(ValueError, match="no options"):
        with_setting(CONFIG, "lr.x", 1)


def test_grid_and_measure():
    from trainlab.experiment import grid

    configs = grid(CONFIG, {"model.width": [8, 16], "lr": [0.1, 0.01]})
    assert [(c["model"][1]["width"], c["lr"]) for c in configs] == [(8, 0.1), (8, 0.01), (16, 0.1), (16, 0.01)]
    with pytest.raises(ValueError, match="non-empty"):
        grid(CONFIG, {"lr": []})
    row = train({**CONFIG, "steps": 20, "measure": {"GradNorm": {"every": 5}}})
    assert row["history"].dropna(subset=["grad_norm/fc1"])["step"].tolist() == [5, 10, 15, 20]
    with pytest.raises(ValueError, match="not probes"):
        train({**CONFIG, "measure": {"Sharpnes": {}}})
