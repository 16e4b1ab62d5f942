"""InitPanel: signal propagation live and at init beside the theory, and the fluctuation, coordinate-check,
μ-Transfer, super-consistency and depth-transfer jobs, whose results reach the plots."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import wait_until
from torch import nn

import trainlab
from trainlab.probes import SignalPropagation
from trainlab.widgets.init_panel import InitPanel


def finish(job):
    wait_until(lambda: job.done, 180, "the job to finish", every=0.05)
    assert job.error is None, job.error


def test_signal_is_drawn_now_and_at_init_beside_the_theory():
    run = trainlab.Run(model=("mlp", {"width": 64, "depth": 3, "init": "critical"}), data="digits", device="cpu")
    panel = InitPanel(run, every=5)
    try:
        assert any(isinstance(p, SignalPropagation) for p in run.probes)
        run.step(10)
        panel.feed.tick()
        init, now = panel.init_source.data, panel.signal_source.data
        assert list(init["depth"]) == [1, 2, 3, 4] and list(now["depth"]) == [1, 2, 3, 4]
        # at criticality (ReLU, C_W = 2) the hidden layers' std stays within the theory's few percent
        np.testing.assert_allclose(init["std"][:3], init["theory_std"][:3], rtol=0.15)
        panel.toggle.value = False
        assert not any(isinstance(p, SignalPropagation) for p in run.probes)
    finally:
        panel.close()


def test_the_signal_at_init_is_the_dense_initial_model_after_pruning_added_masks():
    """Pruning adds mask buffers the initial state lacks: the at-init line is still drawn (it once failed to load)."""
    run = trainlab.Run(model=("mlp", {"width": 64, "depth": 3}), data="digits", device="cpu",
                       pruning={"method": "magnitude", "sparsity": 0.9})
    run.step(5)
    before = InitPanel(trainlab.Run(model=("mlp", {"width": 64, "depth": 3}), data="digits", device="cpu"))
    panel = InitPanel(run)
    try:
        panel.feed.tick()
        before.feed.tick()
        assert not panel.error, panel.error
        np.testing.assert_allclose(panel.init_source.data["std"], before.init_source.data["std"], rtol=1e-5)
    finally:
        panel.close()
        before.close()


@pytest.mark.slow
def test_the_jobs_reach_their_plots():
    run = trainlab.Run(model=("mlp", {"width": 64, "activation": "linear"}), data="digits", device="cpu",
                       optimizer="adam", lr=0.01)
    panel = InitPanel(run, steps=20)
    try:
        for job in (panel.fluctuations(), panel.coord_check()):
            finish(job)
        panel.feed.tick()
        assert panel.fluct_source.data["label"][0] == "kaiming: NTK"
        coords = dict(zip(panel.coord_source.data["label"], panel.coord_source.data["ys"]))
        assert coords["sp: out"][-1] > 5 * coords["sp: out"][0]          # SP's read-out grows with width
        assert coords["mup: out"][-1] < 2 * coords["mup: out"][0]        # μP's stays put
        finish(panel.mu_transfer())
        panel.feed.tick()
        for par in ("sp", "mup"):
            data = panel.transfer_sources[par].data
            assert data["label"] == ["width 32", "width 64", "width 128", "width 256"] and len(data["xs"][0]) == 9
    finally:
        panel.close()


def test_depth_transfer_draws_a_line_per_depth_per_branch_with_its_best_lr_marked():
    """Whatever the run's model (here the user's own module): the study trains the residual MLP on the run's data."""
    run = trainlab.Run(model=nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), data="digits", device="cpu")
    panel = InitPanel(run)
    lrs = (0.25, 1.0, 4.0)
    try:
        finish(panel.depth_transfer(depths=(2, 4), lrs=lrs, steps=10, width=16, workers=1))
        panel.feed.tick()
        for branch in ("1", "1/sqrt(L)", "1/L"):
            curves, marks = panel.depth_sources[branch].data, panel.depth_marks[branch].data
            assert curves["label"] == ["depth 2", "depth 4"]
            for xs, ys, color in zip(curves["xs"], curves["ys"], curves["color"]):
                assert list(xs) == list(lrs) and np.isfinite(ys).all()
                i = marks["color"].index(color)  # the mark in this line's colour sits at the line's minimum
                assert (marks["lr"][i], marks["loss"][i]) == (xs[np.argmin(ys)], pytest.approx(min(ys)))
            assert len(marks["lr"]) == 2
        assert "Depth transfer: done" in panel.slots["depth"].status.object
    finally:
        panel.close()


def test_jobs_refuse_a_model_they_cannot_rebuild():
    run = trainlab.Run(model=nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 2)), data="moons", device="cpu")
    panel = InitPanel(run)
    try:
        assert panel.coord_check() is None and "registered model" in panel.error
        assert panel.mu_transfer() is None and panel.fluctuations() is None
    finally:
        panel.close()


@pytest.mark.slow
def test_super_consistency_draws_a_line_per_width_and_refuses_adam():
    run = trainlab.Run(model=("mlp", {"width": 32, "depth": 1}), data="moons", device="cpu", optimizer="sgd", lr=0.5,
                       batch_size=4096)
    panel = InitPanel(run, steps=20)
    try:
        finish(panel.super_consistency())
        panel.feed.tick()
        for par in ("mup", "sp"):
            data = panel.sharpness_sources[par].data
            assert data["label"] == ["width 32", "width 128", "width 512", "stability threshold"]
            assert len(data["xs"][0]) == 40 and np.all(np.asarray(data["ys"][0]) > 0)  # 2 x 20 steps, every step
            np.testing.assert_allclose(data["ys"][-1], 2 / 0.5)  # 2/lr for plain SGD
        # μP and SP agree at the base width (μP is SP there)
        np.testing.assert_allclose(panel.sharpness_sources["mup"].data["ys"][0],
                                   panel.sharpness_sources["sp"].data["ys"][0], rtol=1e-6)
    finally:
        panel.close()
    adam = trainlab.Run(model=("mlp", {"width": 32, "depth": 1}), data="moons", device="cpu", optimizer="adam")
    panel = InitPanel(adam)
    try:
        job = panel.super_consistency()
        wait_until(lambda: job.done, 60, "the job to end", every=0.05)
        assert "SGD-like" in str(job.error)
    finally:
        panel.close()
