"""OptimizerPanel driven by its widgets (no browser): schedule, preview, LR range test job, internals plots."""
from __future__ import annotations


import numpy as np
import pytest
from conftest import wait_until

from trainlab import Run, live
from trainlab.probes import EffectiveStep, ScaleInvariantNorm, SecondMoment, UpdateRatio
from trainlab.schedules import preview, schedules
from trainlab.widgets.feed import Feed
from trainlab.widgets.optimizer_panel import OptimizerPanel


@pytest.fixture
def panel():
    run = Run(model=("mlp", {"width": 16, "depth": 2, "norm": "batchnorm"}), data="digits", optimizer="adam",
              device="cpu", seed=0)
    p = OptimizerPanel(run)
    yield p
    p.close()
    run.stop()


def rows(source) -> int:
    return len(next(iter(source.data.values())))


def test_the_panel_turns_its_probes_on_once(panel):
    kinds = [type(p) for p in panel.run.probes]
    for cls in (EffectiveStep, UpdateRatio, ScaleInvariantNorm, SecondMoment):
        assert kinds.count(cls) == 1, cls
    again = OptimizerPanel(panel.run)  # a second view reuses them
    assert [type(p) for p in panel.run.probes] == kinds
    again.close()
    assert [type(p) for p in panel.run.probes] == kinds  # still in use by the first view
    panel.close()
    assert not any(isinstance(p, (EffectiveStep, ScaleInvariantNorm, SecondMoment)) for p in panel.run.probes)


def test_its_own_settings_follow_python_and_the_widgets(panel):
    panel.range_steps = 500
    assert panel.range_controls["range_steps"].widget.value == 500
    panel.range_controls["range_steps"].widget.value = 300
    assert panel.range_steps == 300


def test_schedule_chooser_and_options_set_the_run_and_the_preview(panel):
    run = panel.run
    assert panel.schedule_select.options == schedules.names()
    panel.schedule_select.value = "cosine"
    assert run.schedule == ("cosine", schedules["cosine"].defaults())
    assert set(panel.schedule_controls) == set(schedules["cosine"].params)
    panel.schedule_controls["total"].widget.value = 500
    assert run.schedule[1]["total"] == 500
    expected = preview(run.schedule, run.lr, 1000)
    np.testing.assert_allclose(panel._preview.data["lr"], expected["lr"])
    np.testing.assert_array_equal(panel._preview.data["step"], expected["step"])
    # the options shared with the next schedule carry over
    panel.schedule_select.value = "warmup_cosine"
    assert run.schedule[0] == "warmup_cosine" and run.schedule[1]["total"] == 500


def test_a_rejected_schedule_option_is_shown_and_changes_nothing(panel):
    run = panel.run
    panel.schedule_select.value = "warmup_cosine"
    panel.schedule_controls["total"].widget.value = 300
    before = run.schedule
    panel.schedule_controls["warmup"].widget.value = 400  # warmup >= total: refused by the schedule
    assert run.schedule == before
    assert "warmup=400" in panel.error and panel.status.visible
    assert panel.schedule_controls["warmup"].widget.value == before[1]["warmup"]


def test_the_preview_follows_a_change_made_elsewhere_and_marks_the_step(panel):
    run = panel.run
    run.set(schedule=("step", {"step_size": 100, "gamma": 0.5}), lr=0.01)
    run.step(30)
    panel.feed.tick()
    assert panel.schedule_select.value == "step"
    assert panel._now.location == 30
    assert panel._preview.data["lr"][0] == pytest.approx(0.01)
    assert min(panel._preview.data["lr"]) == pytest.approx(0.01 * 0.5**9)  # 1,000 steps ahead
    np.testing.assert_allclose(panel.feed._channels[0].source.data["lr"][-30:], 0.01)


def wait(job, timeout=120.0):
    wait_until(lambda: job.done, timeout, "the job to finish", every=0.05)


def test_range_test_button_runs_a_job_and_apply_sets_the_suggestion(panel):
    run = panel.run
    panel.range_controls["range_steps"].widget.value = 100
    # the run trains meanwhile but hardly learns, so the sweep on its copy has a dip worth a suggestion (a run
    # some hundred Adam steps along already sits where the loss hardly moves: no suggestion, rightly)
    run.set(lr=1e-6)
    run.start()
    try:
        panel.range_button.clicks += 1
        job = panel.slots["range"].job
        assert job is not None and panel.range_button.disabled and not panel.cancel_button.disabled
        wait(job)
        panel.feed.tick()  # the feed streams the published result to the plot
    finally:
        run.stop()
    result = panel.result
    assert job.error is None and result["suggestion"] is not None
    assert rows(panel.range_curve) == len(result["lr"]) > 10
    np.testing.assert_allclose(panel.range_curve.data["trend"], result["trend"])
    assert list(panel.range_marks.data["lr"]) == [result["minimum"], result["suggestion"]]
    assert f"{result['suggestion']:.3g}" in panel.range_text.object
    assert not panel.apply_button.disabled
    panel.apply_button.clicks += 1
    assert run.lr == result["suggestion"]
    run.set(optimizer="sgd")  # a suggestion measured with adam does not apply to sgd
    panel.feed.tick()
    assert panel.apply_button.disabled and "measured with adam" in panel.range_text.object


def test_cancel_stops_the_range_test(panel):
    panel.range_controls["range_steps"].widget.value = 1000
    panel.range_controls["range_start"].widget.value = 1e-8
    panel.range_controls["range_end"].widget.value = 1e-2  # a sweep that does not blow up: it would run long
    panel.range_button.clicks += 1
    panel.cancel_button.clicks += 1
    job = panel.slots["range"].job
    wait(job)
    panel.feed.tick()
    assert job.cancelled and job.result[live.RANGE_TEST]["stopped"] == "cancelled"
    assert "cancelled" in panel.range_text.object and not panel.range_button.disabled


def test_internals_plots_get_data_while_the_run_trains(panel):
    run = panel.run
    run.step(50)
    panel.feed.tick()
    columns = {}
    for ch in panel.feed._channels:
        columns.update({src: rows(ch.source) for src in ch.columns})
    for layer in run.layers:
        assert columns[f"effective_lr/{layer}"] == 2  # steps 25 and 50
        assert columns[f"update_ratio/{layer}"] == 2
        assert columns[f"second_moment/{layer}"] == 1
    assert columns["scale_invariant_norm/fc1"] == 5 and columns["scale_invariant_norm/fc2"] == 5
    hist = panel.feed.snapshot_source("second_moment")
    snap = run.history.snapshot("second_moment")[1]
    np.testing.assert_array_equal(hist.data["fc1"], snap["counts"]["fc1"])
    assert len(panel.figures) == 7


def test_a_model_without_norm_layers_says_so():
    run = Run(model=("mlp", {"width": 8, "depth": 1}), data="moons", device="cpu")
    p = OptimizerPanel(run, feed=Feed(run.history))
    try:
        assert "no layer of this model feeds a normalization layer" in p.notes.object
        assert len(p.figures) == 6
    finally:
        p.close()
