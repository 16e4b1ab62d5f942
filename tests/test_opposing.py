"""The opposing-signals data set: its groups, and their losses swinging in antiphase at the edge of stability."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import trainlab
from trainlab import datasets
from trainlab.probes import GroupLoss, Sharpness


def test_registered_with_declared_params():
    entry = datasets["opposing"]
    assert {"n", "noise", "outliers", "strength", "seed"} <= set(entry.params)
    with pytest.raises(ValueError, match="outliers"):
        datasets.build("opposing", outliers=0.9)


def test_groups_carry_the_opposing_signal():
    data = datasets.build("opposing", n=400, outliers=0.05, strength=5.0, seed=3)
    groups = data.info["groups"]
    assert set(groups) == {"bulk", "group_a", "group_b"}
    idx = torch.cat(list(groups.values()))
    assert sorted(idx.tolist()) == list(range(len(data.X)))  # a partition of the training set
    a, b, bulk = (data.X[groups[g]] for g in ("group_a", "group_b", "bulk"))
    assert len(a) == len(b) == pytest.approx(0.05 * 400 * 0.8, abs=2)
    # the same large x2 in both outlier groups, with opposite labels; the bulk has x2 near 0
    assert (a[:, 1] > 4).all() and (b[:, 1] > 4).all() and bulk[:, 1].abs().max() < 1
    assert (data.y[groups["group_a"]] == 1).all() and (data.y[groups["group_b"]] == 0).all()
    # the bulk is separable by x1 alone
    yb = data.y[groups["bulk"]]
    assert ((bulk[:, 0] > 0).long() == yb).float().mean() > 0.97


def test_group_losses_swing_in_antiphase_at_the_edge():
    lr = 1.0
    run = trainlab.Run(model=("mlp", {"width": 32, "depth": 2, "activation": "tanh"}), data="opposing",
                       optimizer="sgd", momentum=0.0, lr=lr, batch_size=100_000, device="cpu", eval_every=100_000,
                       probes=[GroupLoss(every=1), Sharpness(every=10)])
    run.step(300)
    df = run.history.frame()
    late = df.iloc[150:]
    assert late["sharpness"].dropna().between(0.8 * 2 / lr, 1.2 * 2 / lr).all()  # at the edge
    da, db = np.diff(late["loss/group_a"].to_numpy()), np.diff(late["loss/group_b"].to_numpy())
    assert np.corrcoef(da, db)[0, 1] < -0.5
    assert late["loss/group_a"].std() > 10 * late["loss/bulk"].std()  # the outliers swing, the bulk is quiet
