"""PruningPanel: controls from the pruning registries, live changes reaching the run (or refused, the run
unchanged), the plan drawn from trainlab.prune.preview, and the compact preview's table."""
from __future__ import annotations

import numpy.testing as npt
import pytest
from conftest import wait_until

import trainlab
import trainlab.prune as P
from trainlab import live
from trainlab.widgets import PruningPanel


@pytest.fixture
def run():
    r = trainlab.Run(model=("mlp", {"width": 32}), data="digits", seed=0, probes=[])
    yield r
    r.stop()


def test_controls_come_from_the_declared_parameters(run):
    panel = PruningPanel(run)
    c = panel.controls
    assert c["method"].widget.options == P.criteria.names()
    assert c["allocation"].widget.options == P.allocations.names()
    assert c["schedule"].widget.options == P.prune_schedules.names()
    assert c["pattern"].widget.options == ["unstructured", "nm", "block"]
    assert (c["sparsity"].widget.start, c["sparsity"].widget.end) == (0, 0.99)  # the softbounds
    assert list(panel.schedule_controls) == list(P.prune_schedules["gradual"].params)
    assert not c["n"].widget.visible  # N:M's knobs only with the N:M pattern
    c["schedule"].widget.value = "imp"  # pruning off: the next pruning's options, checked, nothing sent
    assert list(panel.schedule_controls) == list(P.prune_schedules["imp"].params)
    assert run.pruning is None and panel.error == ""
    # the run's own pruning, set from Python, shows in the controls
    run.set(pruning={"method": "snip", "sparsity": 0.7, "allocation": "erk", "schedule": ("oneshot", {"at": 5})})
    run.step(1)
    panel.feed.tick()
    assert (c["method"].widget.value, c["allocation"].widget.value, c["scope"].widget.value) == ("snip", "erk", "layer")
    assert c["sparsity"].widget.value == 0.7 and panel.schedule_controls["at"].widget.value == 5
    assert panel.toggle.label == "Turn pruning off"


def test_turning_on_and_moving_the_slider_prune_the_run(run):
    panel = PruningPanel(run)
    panel.controls["schedule"].widget.value = "oneshot"
    panel.controls["sparsity"].widget.value = 0.6  # off: the next pruning's
    assert run.pruning is None
    assert panel.toggle.label == "Turn pruning on"
    panel.toggle.clicks += 1
    run.step(20)
    panel.feed.tick()
    assert run.pruning["sparsity"] == 0.6 and run.pruning["schedule"][0] == "oneshot"
    assert P.sparsity(run.model)["global"] == pytest.approx(0.6, abs=1e-3)  # counted from the weights
    assert panel.measured.data[panel.measured_name][-1] == pytest.approx(0.6, abs=1e-3)
    assert set(panel.per_layer.data) == {"step", "fc1", "fc2", "out"}
    # the histogram's columns are the ones its figure draws, and they count every surviving weight
    drawn = {r.glyph.y for r in panel.surviving_figure.renderers}
    assert drawn == {"fc1", "fc2", "out"} and drawn <= set(panel.surviving.data)
    assert sum(panel.surviving.data[k].sum() for k in drawn) == sum(
        int((w != 0).sum()) for w in P.prunable(run.model).values())
    panel.controls["sparsity"].widget.value = 0.8  # the same plan, a new final sparsity
    run.step(20)
    panel.feed.tick()
    assert run.pruning["sparsity"] == 0.8 and P.sparsity(run.model)["global"] == pytest.approx(0.8, abs=1e-3)
    panel.controls["allocation"].widget.value = "erk"  # a new pruning from now, the scope following
    run.step(5)
    panel.feed.tick()
    assert (run.pruning["allocation"], run.pruning["scope"]) == ("erk", "layer")
    assert panel.controls["scope"].widget.value == "layer"
    panel.toggle.clicks += 1
    run.step(1)
    panel.feed.tick()
    assert run.pruning is None and P.masks(run.model) == {} and panel.toggle.label == "Turn pruning on"


def test_a_refused_value_leaves_the_run_as_it_was(run):
    panel = PruningPanel(run)
    panel.controls["pattern"].widget.value = "nm"
    panel.controls["schedule"].widget.value = "oneshot"
    panel.turn(True)
    run.step(3)
    panel.feed.tick()
    before = run.pruning
    assert before["pattern"] == "nm" and before["n"] == 2
    panel.controls["n"].widget.value = 5  # N > M
    assert "n=5, m=4 rejected" in panel.error and panel.alert.visible
    assert panel.controls["n"].widget.value == 2 and panel.choice.n == 2  # the control back on the run's value
    run.step(5)
    panel.feed.tick()
    assert run.pruning == before and run.steps == 8
    assert P.sparsity(run.model)["global"] == pytest.approx(0.5)
    panel.schedule_controls["at"].widget.value = 100  # an accepted change clears the refusal
    assert panel.error == "" and not panel.alert.visible
    run.step(1)
    assert run.pruning["schedule"][1]["at"] == 100


def test_the_plan_is_the_cores_preview(run):
    panel = PruningPanel(run)
    run.step(7)
    assert panel.preview_source.data["step"].size == 0  # off: nothing planned
    panel.turn(True)
    run.step(1)
    panel.feed.tick()
    spec, start = run.pruning, run.pruning_state.sparsifier.start
    assert start == 7
    ref = P.preview(run.model, spec, 1200, start=start)  # gradual to step 1000: drawn over 1.2 x its end
    npt.assert_array_equal(panel.preview_source.data["step"], ref["step"])
    npt.assert_allclose(panel.preview_source.data["sparsity"], ref["sparsity"])


def test_compact_preview_publishes_its_table(run):
    run.step(10)
    panel = PruningPanel(run)
    panel.ratio_control.widget.value = 0.25
    assert panel.compact_ratio == 0.25 and panel.slots["compact"].running
    wait_until(lambda: (panel.feed.tick(), not panel.slots["compact"].running)[1], 60, "the compact preview")
    panel.feed.tick()
    step, r = run.history.snapshot(live.COMPACT)
    ref = P.Compactor(run.model_copy()).preview(0.25)
    assert step == 10 and (r["params"], r["params_dense"], r["macs"]) == (ref.params, ref.params_dense, ref.macs)
    table = panel.table.object
    assert table[""].tolist() == ["parameters", "MACs/example", "latency (64)"]
    assert table["compact"][0] == f"{ref.params:,}" and table["dense"][0] == f"{ref.params_dense:,}"
    assert r["latency"] > 0 and r["latency_dense"] > 0
    assert "latency" in panel.slots["compact"].status.object and "Unstructured zeros" in panel.compact_note.object
