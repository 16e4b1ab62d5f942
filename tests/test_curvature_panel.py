"""CurvaturePanel: probes toggled on the run, live sources fed from the history, Hessian jobs with progress and cancel."""
from __future__ import annotations


import numpy as np
import pytest
from conftest import wait_until

import trainlab
from trainlab.probes import GradientNoise, GroupLoss, Sharpness
from trainlab.widgets.curvature import CurvaturePanel


def make_run(data="opposing", **kw) -> trainlab.Run:
    return trainlab.Run(model=("mlp", {"width": 16, "depth": 2, "activation": "tanh"}), data=data, optimizer="sgd",
                        momentum=0.0, lr=0.5, batch_size=100_000, device="cpu", eval_every=100_000, **kw)


def wait(job, timeout=120.0):
    wait_until(lambda: job.done, timeout, "the job to finish", every=0.05)


def test_toggles_add_and_remove_probes_and_curves_stream():
    run = make_run()
    panel = CurvaturePanel(run)
    try:
        assert any(isinstance(p, GroupLoss) for p in run.probes)  # opposing data: group losses on by default
        panel.sharpness_toggle.value = True
        panel.noise_toggle.value = True
        assert any(isinstance(p, Sharpness) for p in run.probes) and any(isinstance(p, GradientNoise) for p in run.probes)
        panel.controls["every"].widget.value = 5
        run.step(10)
        panel.feed.tick()
        data = panel.sharpness_source.data
        assert list(data["step"]) == [5.0, 10.0]
        frame = run.history.frame().dropna(subset=["sharpness"])
        np.testing.assert_allclose(data["sharpness"], frame["sharpness"])
        np.testing.assert_allclose(data["threshold"], 2 / 0.5)
        assert len(panel.groups_source.data["group_a"]) == 10
        assert len(panel.noise_source.data["noise_scale"]) == 2
        panel.sharpness_toggle.value = False
        assert not any(isinstance(p, Sharpness) for p in run.probes)
    finally:
        panel.close()
    assert not any(isinstance(p, (GroupLoss, GradientNoise)) for p in run.probes)


def test_buttons_run_jobs_whose_results_reach_the_sources():
    run = make_run(data="moons")
    run.step(5)
    panel = CurvaturePanel(run, k=3, vectors=2, iters=12)
    try:
        assert not panel.has_groups and panel.groups_source is None
        slot = panel.slots["hessian"]
        for what in ("top", "density", "trace"):
            panel.buttons[what].clicks += 1
            assert all(b.disabled for b in panel.buttons.values())  # one Hessian job at a time
            wait(slot.job)
            assert slot.job.error is None
            panel.feed.tick()
        top = panel.top_source.data["eigenvalue"]
        expected = trainlab.analysis.hessian.top_eigenvalues(run.model, run.loss_fn, (run.data.X, run.data.y), k=3)
        np.testing.assert_allclose(top, expected, rtol=1e-3)
        assert len(panel.density_source.data["grid"]) == 1000 and np.all(panel.density_source.data["density"] > 0)
        assert "trace(H) =" in panel.status.object
        assert not panel.progress.visible and panel.cancel_button.disabled
    finally:
        panel.close()


def test_cancel_stops_a_long_density():
    run = make_run(data="digits")
    panel = CurvaturePanel(run, vectors=8, iters=200)
    try:
        job = panel.compute("density")
        panel.feed.tick()
        assert not panel.cancel_button.disabled or job.done
        panel.cancel_button.clicks += 1
        wait(job)
        panel.feed.tick()
        assert isinstance(job.error, trainlab.jobs.Cancelled)
        assert "cancelled" in panel.status.object
        assert run.history.snapshot("hessian_density") is None
    finally:
        panel.close()


def test_controls_come_from_declared_params():
    run = make_run(data="moons")
    panel = CurvaturePanel(run)
    try:
        widget = panel.controls["k"].widget
        assert (widget.start, widget.end) == CurvaturePanel.param.k.softbounds
        with pytest.raises(ValueError):
            panel.k = 0
        panel.k = 10  # set from Python: the widget follows
        assert widget.value == 10
        widget.value = 7  # moved in the page: the setting follows
        assert panel.k == 7
    finally:
        panel.close()
