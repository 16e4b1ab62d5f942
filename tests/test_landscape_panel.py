"""The landscape panel: it builds, its jobs publish snapshots, and the feed's sources receive them."""
from __future__ import annotations

import time

import numpy as np
import pytest

from trainlab import Run
from trainlab.analysis.landscape import plane, wireframe
from trainlab.probes import TrajectoryProbe
from trainlab.widgets.feed import Feed
from trainlab.widgets.landscape import LANDSCAPE, LINE, LandscapePanel


@pytest.fixture
def panel():
    run = Run(model=("mlp", {"width": 16, "depth": 1, "norm": "batchnorm"}), data="digits", seed=0, probes=[])
    feed = Feed(run.history)  # as in the dashboard: the panel registers on a feed it does not start
    p = LandscapePanel(run, feed=feed, coarse=5, resolution=9, record_every=2, follow=False)
    yield p
    p.close()
    run.stop()


def test_panel_builds_with_controls_from_declared_parameters(panel):
    assert any(isinstance(q, TrajectoryProbe) for q in panel.run.probes)
    w = panel.controls["resolution"].widget
    assert (w.start, w.end) == LandscapePanel.param.resolution.softbounds
    panel.controls["view"].widget.value = "surface"
    assert panel.view == "surface" and panel.surf_fig.visible and not panel.map_fig.visible
    panel.view = "contour"
    assert panel.map_fig.visible and not panel.surf_fig.visible and not panel.heat.visible
    panel.__panel__()
    panel.close()
    assert not any(isinstance(q, TrajectoryProbe) for q in panel.run.probes)  # the probe it added goes with it


def test_job_publishes_coarse_then_fine_and_the_feed_receives_them(panel):
    run = panel.run
    run.step(12)
    job = panel.compute()
    job.wait(60)
    step, snap = run.history.snapshot(LANDSCAPE)
    assert snap["kind"] == "pca" and snap["mode"] == "eval" and snap["loss"].shape == (9, 9) and snap["step"] == 12
    assert run.history.snapshot(LINE)[1]["loss"].shape == (11,)
    panel.feed.tick()
    image = panel.image.data["z"][0]
    np.testing.assert_allclose(image, np.log10(snap["loss"].T))
    assert len(panel.path.data["x"]) == 6 and panel.path.data["x"][-1] == 0  # the path ends at the current weights
    assert len(panel.contours.data["xs"]) > 0 and len(panel.wire.data["xs"]) == 18
    # the 3-D wireframe is the core's projection of this grid's log-loss, seen from the panel's angles
    xs, ys = wireframe(snap["x"], snap["y"], np.log10(snap["loss"]), panel.azimuth, panel.elevation)
    for got, want in ((panel.wire.data["xs"], xs), (panel.wire.data["ys"], ys)):
        np.testing.assert_allclose(np.array(got), np.array(want), rtol=1e-12)
    panel.azimuth = -60.0  # turning the view redraws it from the new angle
    np.testing.assert_allclose(np.array(panel.wire.data["xs"]),
                               np.array(wireframe(snap["x"], snap["y"], np.log10(snap["loss"]), -60.0, panel.elevation)[0]))
    assert "BN running stats" in panel.map_fig.title.text
    assert len(panel.interp.data["loss"]) == 11
    # the published grid is the analysis' own: the same plane computed directly
    direct = plane(run.model, run.loss_fn, run.data, steps=9, directions=panel.probe.trajectory(run.model),
                   progress=False)
    np.testing.assert_allclose(snap["loss"], direct.loss, rtol=1e-5)


def test_following_recomputes_while_training(panel):
    run = panel.run
    panel.param.update(follow=True, refresh=5, coarse=3, resolution=3)
    run.start()
    jobs = []
    try:
        deadline = time.monotonic() + 60
        while len(jobs) < 2 and time.monotonic() < deadline:
            panel.feed.tick()  # what the periodic callback does: it starts jobs, with no click
            job = panel.slots["plane"].job
            if job is not None and (not jobs or job is not jobs[-1]):
                jobs.append(job)
                job.wait(60)
                jobs[-1].snap = run.history.snapshot(LANDSCAPE)[1]
            time.sleep(0.01)
    finally:
        run.stop()
    assert len(jobs) == 2
    assert jobs[1].snap["step"] > jobs[0].snap["step"]  # recomputed at a later step of the same run


def test_following_waits_while_its_tab_is_hidden():
    run = Run(model=("mlp", {"width": 16, "depth": 1}), data="digits", seed=0, probes=[])
    feed = Feed(run.history)
    with feed.group("Landscape"):  # as the dashboard builds it for its tab
        p = LandscapePanel(run, feed=feed, coarse=3, resolution=3, follow=True, refresh=5)
    try:
        feed.show("Training")
        run.start()
        wait = time.monotonic() + 60
        while run.steps < 50 and time.monotonic() < wait:
            feed.tick()
            time.sleep(0.01)
        assert run.steps >= 50 and p.slots["plane"].job is None  # hidden: nothing computed
        feed.show("Landscape")
        feed.tick()
        assert p.slots["plane"].job is not None  # shown: it follows at once
        p.slots["plane"].job.wait(60)
    finally:
        run.stop()
        p.close()


def test_cancel_keeps_the_last_complete_picture(panel):
    run = panel.run
    run.step(12)
    panel.param.update(coarse=3, resolution=101)
    job = panel.compute()
    deadline = time.monotonic() + 30
    while (job.progress.total != 101 * 101 or job.progress.done < 50) and time.monotonic() < deadline:
        time.sleep(0.005)  # the coarse grid is published and the fine one under way
    panel.cancel()
    assert job.done and job.error is None and job.cancelled
    snap = run.history.snapshot(LANDSCAPE)[1]
    assert snap["loss"].shape == (3, 3) and snap["complete"] and np.isfinite(snap["loss"]).all()  # not a half grid
    assert run.history.snapshot(LINE) is None  # the line comes after a complete grid
    panel.feed.tick()
    assert "cancelled" in panel.status.object


def test_intrinsic_job_publishes(panel):
    panel.param.update(id_steps=5, id_max_dim=8)
    panel.measure_intrinsic().wait(60)
    panel.feed.tick()
    assert list(panel.dims.data["d"]) == [1, 2, 4, 8]
    assert "Intrinsic dimension" in panel.id_fig.title.text


def test_wireframe_projection_from_above_is_the_grid():
    x = np.linspace(-1, 1, 4)
    z = np.add.outer(x, 2 * x)
    xs, ys = wireframe(x, x, z, azimuth=0, elevation=90)  # looking down: screen = (x, y)
    np.testing.assert_allclose(xs[0], np.full(4, -1.0))
    np.testing.assert_allclose(ys[0], x)
    xs, ys = wireframe(x, x, z, azimuth=0, elevation=0)  # from the side: height is z
    np.testing.assert_allclose(ys[1], (z[1] - z.min()) / (z.max() - z.min()) * 2 - 1)
