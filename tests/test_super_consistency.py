"""Super consistency (Noci et al. 2024): under μP the sharpness curves coincide across widths, under SP not;
and the lr-scaled sharpness μP's per-layer lrs call for, against the dense Hessian.

Setting of the slow test, measured (lr-scaled λ_max averaged over the second half of 200 full-batch SGD steps at
lr 1, spirals of 512 points, a one-hidden-layer ReLU MLP at widths 64/256/1024, base width 64): the relative
spread (max - min)/min across widths was 0.075, 0.028, 0.070 under μP for seeds 0, 1, 2 (every width at the edge
of stability 2/lr), 0.35, 0.42, 0.48 under SP (the widest one sinks below it to ~1.4).
"""
from __future__ import annotations

import pytest
import torch

import trainlab
from trainlab.analysis import transfer
from trainlab.probes import Sharpness
from tests.test_hessian import dense_hessian


def test_scaled_sharpness_is_that_of_the_lr_weighted_hessian_and_the_threshold_the_runs_lr():
    run = trainlab.Run(model=("mlp", {"width": 16, "depth": 1, "parametrization": "mup", "base_width": 8}),
                       data=("spirals", {"n": 80}), optimizer="sgd", lr=0.1, batch_size=100_000, device="cpu",
                       probes=[Sharpness(every=5, tol=1e-6)])
    run.step(10)
    row = run.history.frame().dropna(subset=["sharpness"]).iloc[-1]
    assert row["sharpness_threshold"] == pytest.approx(2 / 0.1)  # the run's lr, not a group's lr x multiplier
    # μP's SGD rule, written out (Tensor Programs V, Table 8): a parameter with one width-scaled dimension steps
    # width/base = 2 times faster; the read-out bias (none scaled) as the base
    sizes = {n: p.numel() for n, p in run.model.named_parameters()}
    m = {"fc1.weight": 2.0, "fc1.bias": 2.0, "out.weight": 2.0, "out.bias": 1.0}
    M = torch.cat([torch.full((sizes[n],), m[n], dtype=torch.float64) for n, _ in run.model.named_parameters()])
    H = dense_hessian(run.model_copy().double(), run.data.X.double(), run.data.y)
    scaled = torch.linalg.eigvalsh(M.sqrt()[:, None] * H * M.sqrt()[None, :]).max().item()
    assert row["scaled_sharpness"] == pytest.approx(scaled, rel=1e-4)
    assert row["sharpness"] == pytest.approx(torch.linalg.eigvalsh(H).max().item(), rel=1e-4)
    assert abs(scaled / row["sharpness"] - 1) > 0.1  # the two differ: the raw one is not what the step sees

    sp = trainlab.Run(model=("mlp", {"width": 16, "depth": 1}), data=("spirals", {"n": 80}), optimizer="sgd",
                      lr=0.1, device="cpu", probes=[Sharpness(every=5)])
    sp.step(5)
    assert "scaled_sharpness" not in sp.history.frame()  # one lr for all: nothing to scale


def test_sharpness_spread_refuses_a_bad_fraction():
    with pytest.raises(ValueError, match="late=0"):
        transfer.sharpness_spread(None, late=0)


@pytest.mark.slow
def test_sharpness_curves_coincide_across_widths_under_mup_and_not_under_sp():
    curves = transfer.sharpness_curves(widths=(64, 256, 1024), lr=1.0, steps=200, seeds=(0,))
    assert (curves["status"] == "finished").all()
    assert set(curves["width"]) == {64, 256, 1024} and set(curves["parametrization"]) == {"mup", "sp"}
    spread = transfer.sharpness_spread(curves)
    assert spread["mup"] < 0.15, spread   # measured 0.03-0.075 over seeds 0-2
    assert spread["sp"] > 0.25, spread    # measured 0.35-0.48
    late = curves[(curves["parametrization"] == "mup") & (curves["step"] > 100)]
    assert late.groupby("width")["sharpness"].mean().between(0.85 * 2, 1.15 * 2).all()  # all at 2/lr
