"""μ-Transfer on a small case: the best lr holds across an 8x width range under μP and moves under SP.

Settings (chosen so that each of seeds 0, 1 and 2 alone passes; the test averages 0 and 1): digits, an MLP
of 3 hidden ReLU layers with Kaiming-normal weights, widths 32-256 with base width 32, Adam at lrs 2^-12
... 2^-4 (a grid step is a factor 2), 60 steps of batch 64; the best lr is the one with the lowest training
loss averaged over the run (`mean_train_loss`: how fast it learned; the final loss alone sits on a plateau
where the optimum is noisy).
"""
from __future__ import annotations

import pickle

import numpy as np
import pytest

import trainlab

from trainlab.analysis import transfer
from trainlab.analysis.transfer import best_lr, configurations, lr_sweep, run_config

SETTINGS = dict(model="mlp", widths=(32, 64, 128, 256), base_width=32, lrs=2.0 ** np.arange(-12, -3),
                parametrizations=("sp", "mup"), seeds=(0, 1), data="digits", optimizer="adam", steps=60,
                batch_size=64, model_options={"depth": 3, "init": "kaiming"})


def test_configurations_are_plain_data_and_run_config_a_row():
    configs = configurations(**{k: v for k, v in SETTINGS.items()})
    assert len(configs) == 2 * 4 * 9 * 2
    assert pickle.loads(pickle.dumps(configs)) == configs  # what a Dask worker receives
    assert pickle.loads(pickle.dumps(run_config)) is run_config
    row = run_config({**configs[0], "steps": 3})
    assert row["width"] == 32 and row["parametrization"] == "sp" and row["steps"] == 3 and not row["diverged"]
    assert np.isfinite(row["loss"]) and np.isfinite(row["mean_train_loss"])
    with pytest.raises(ValueError, match="lrs"):
        configurations(lrs=[])


@pytest.mark.slow
def test_mu_transfer_holds_under_mup_and_fails_under_sp():
    frame = lr_sweep(**SETTINGS)
    best = best_lr(frame, metric="mean_train_loss").set_index(["parametrization", "width"])["index"]
    mup, sp = best["mup"], best["sp"]
    assert mup.max() - mup.min() <= 1, best  # at most one grid step across 32 ... 256
    assert sp[32] - sp[256] >= 3, best  # three or more, toward smaller lrs as the width grows


@pytest.mark.slow
def test_depth_transfer_holds_for_branches_scaled_by_one_over_sqrt_depth():
    """The blocks' lr swept with the embedding and read-out at a fixed lr: theory puts the blocks' best lr
    ∝ 1/(L s²), so it falls with depth for s = 1, holds for 1/sqrt(L) and rises for 1/L."""
    frame = transfer.depth_sweep(depths=(2, 4, 8, 16), lrs=2.0 ** np.arange(-8, 7), seeds=(0, 1), steps=80,
                                 ends_lr=0.25)
    best = transfer.best_lr(frame, by="depth", metric="mean_train_loss", group="branch").set_index(["branch", "depth"])
    index = best["index"]
    moves = index.groupby(level=0).agg(lambda i: i.max() - i.min())
    assert moves["1/sqrt(L)"] <= 1, best  # measured: 2^1 at depth 2, 2^0 from 4 on
    assert index["1"][2] - index["1"][16] >= 3, best  # measured: 2^0 at depth 2 down to 2^-6 at 16
    assert index["1/L"][16] - index["1/L"][2] >= 2, best  # measured: 2^2 at depth 2 up to 2^4 at 16


def test_depth_sweep_holds_the_ends_lr_fixed():
    frame = transfer.depth_sweep(depths=(2,), lrs=(0.5, 2.0), branches=("1/L",), steps=2, ends_lr=0.25)
    assert len(frame) == 2 and not frame["diverged"].any()
    run = trainlab.Run(model=("resmlp", {"depth": 2, "width": 8, "ends_lr_mult": 0.125}), data="digits",
                       optimizer="sgd", lr=2.0)
    lrs = {name: g["lr"] for g in run.torch_optimizer.param_groups
           for name, p in run.model.named_parameters() if any(p is q for q in g["params"])}
    assert lrs["inp.weight"] == lrs["out.bias"] == 0.25 and lrs["block1.fc.weight"] == 2.0
    run.set(lr=4.0)
    run.step(1)
    assert sorted(g["lr"] for g in run.torch_optimizer.param_groups) == [0.5, 4.0]  # every group by the same factor
    with pytest.raises(ValueError, match="ends_lr must be a positive lr"):
        transfer.depth_sweep(depths=(2,), lrs=(0.5,), ends_lr=0.0)
    with pytest.raises(ValueError, match="ends_lr_mult"):
        trainlab.Run(model=("resmlp", {"ends_lr_mult": 0.5}), data="digits", optimizer="muon_po")

def test_live_depth_transfer_publishes_what_depth_sweep_gives():
    """The dashboard's job (worker processes, results as they finish) and the notebook's sweep are one study: the
    same configurations (the run's seed), the same losses, the same best lr per branch and depth."""
    from trainlab import live

    run = trainlab.Run(model=("mlp", {"width": 8}), data="digits", device="cpu", optimizer="sgd", seed=3)
    lrs = (0.5, 2.0)
    snaps = [s[live.DEPTH_TRANSFER] for s in live.depth_transfer(run, progress=False, depths=(2, 3), lrs=lrs, steps=5,
                                                                  width=8, workers=2)]
    assert [s["done"] for s in snaps] == [2, 4, 6, 8, 10, 12] and {s["total"] for s in snaps} == {12}
    frame = transfer.depth_sweep(depths=(2, 3), lrs=lrs, width=8, seeds=(3,), steps=5, ends_lr=0.25)
    rows = snaps[-1]["rows"]
    for c in ("branch", "depth", "lr"):
        assert list(rows[c]) == list(frame[c])
    for c in ("mean_train_loss", "loss"):
        np.testing.assert_allclose(rows[c], frame[c], rtol=1e-6)
    best = transfer.best_lr(frame, by="depth", metric="mean_train_loss", group="branch")
    assert snaps[-1]["best"]["best_lr"] == best["best_lr"].tolist()
    np.testing.assert_allclose(snaps[-1]["best"]["loss"], best["loss"], rtol=1e-6)


@pytest.mark.parametrize("bad, says", [
    (dict(depths=()), r"depths=\[\] rejected: numbers of residual blocks"), (dict(depths=(2, 0)), r"depths=\[2, 0\]"),
    (dict(depths=(2.5,)), r"depths=\[2.5\]"), (dict(lrs=()), r"lrs=\[\] rejected: learning rates"),
    (dict(lrs=(0.5, -1.0)), r"lrs=\[0.5, -1.0\]"), (dict(lrs=(float("nan"),)), r"lrs=\[nan\]"),
    (dict(steps=0), r"steps=0 rejected: steps per run"), (dict(width=-4), r"width=-4 rejected: units per"),
    (dict(branches=("1/L^2",)), r"branches=\['1/L\^2'\] rejected: .*'1/sqrt\(L\)'"),
    (dict(ends_lr=0.0), r"ends_lr must be a positive lr")])
def test_depth_transfer_names_a_bad_setting(bad, says):
    from trainlab import live

    run = trainlab.Run(model=("mlp", {"width": 8}), data="digits", device="cpu")
    with pytest.raises(ValueError, match=says):
        next(live.depth_transfer(run, progress=False, **bad))


def test_depth_transfer_needs_registered_data():
    from trainlab import live

    x = np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32)
    run = trainlab.Run(model=("mlp", {"width": 8}), data=(x, (x[:, 0] > 0).astype(np.int64)), device="cpu")
    with pytest.raises(ValueError, match="registered data"):
        next(live.depth_transfer(run, progress=False))


def test_depth_transfer_moves_its_default_grid_to_the_optimizers_usual_lr():
    """SGD's measured grid (blocks 2^-8 … 2^6, ends 0.25) would blow every Adam run up: for Adam (usual lr 1e-3,
    SGD's 0.05) the grid and the ends' lr move by 2^-6, the power of two nearest 1e-3 / 0.05."""
    from trainlab import live

    run = trainlab.Run(data="moons", optimizer="adam", lr=1e-3, device="cpu")
    last = None
    for last in live.depth_transfer(run, progress=False, depths=(2,), branches=("1",), steps=3, width=8, workers=1):
        pass
    rows = last[live.DEPTH_TRANSFER]["rows"]
    assert sorted(rows["lr"]) == pytest.approx(list(2.0 ** np.arange(-14, 1)))
    assert np.isfinite(np.asarray(rows["mean_train_loss"], float)).all()
