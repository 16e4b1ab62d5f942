"""PruningPanel: controls from the pruning registries, live changes reaching the run (or refused, the run
unchanged), the plan drawn from trainlab.prune.preview, and the compact preview's table."""
from __future__ import annotations

import numpy.testing as npt
import pytest
import torch
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
    assert panel.mask_measured.data[panel.mask_name][-1] == pytest.approx(0.6, abs=1e-3)  # the masks agree
    # the pre-activation variance per layer right before and after the pruning: the probe's snapshot, drawn
    _, snap = run.history.snapshot("activation_variance")
    assert list(panel.variance.data["name"]) == snap["layers"] == ["fc1", "fc2", "out"]
    npt.assert_allclose(panel.variance.data["after"], snap["after"])
    assert (snap["after"] < snap["before"]).all()  # pruning without a rescaling shrinks every layer's variance
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


def _pruned_run():
    r = trainlab.Run(model=("mlp", {"width": 32}), data="digits", lr=0.1, momentum=0.9, seed=0, probes=[])
    r.step(150)
    r.set(pruning={"method": "magnitude", "sparsity": 0.8, "scope": "layer", "schedule": "oneshot"})
    r.step(1)
    return r


def _state(run):
    return {k: v.clone() for k, v in run.model.state_dict().items()}


def test_repair_is_one_click_and_reaches_the_run_between_steps():
    import copy

    from trainlab.prune.repair import repair as dsnot

    run = _pruned_run()
    panel = PruningPanel(run)
    panel.repair_control.widget.value = "always"
    # the reference: DSnoT on a copy of the same moment, against the weights kept from right before the pruning
    ref, dense = copy.deepcopy(run.model), run.pruning_state.dense
    x = run.data.fixed_sample(256, run.seed, run.device)[0]
    ratio = dsnot(ref, dense, x)
    before = {k: v.clone() for k, v in P.masks(run.model).items()}
    panel.repair_button.clicks += 1
    assert panel.slots["repair"].running or panel.slots["repair"].job.done
    wait_until(lambda: (panel.feed.tick(), not panel.slots["repair"].running)[1], 60, "the repair")
    panel.feed.tick()
    _, r = run.history.snapshot(live.REPAIR)
    assert r["applied"] and r["layers"] == list(ratio)
    npt.assert_allclose(r["error_ratio"], list(ratio.values()))
    live_w = dict(run.model.named_parameters())
    for k, keep in P.masks(run.model).items():
        assert torch.equal(keep, P.masks(ref)[k]), k                      # the repaired masks, on the live run
        grown = keep & ~before[k]
        assert grown.any() and torch.equal(live_w[k].detach()[grown], dense[k][grown])  # regrown at their values
        assert (live_w[k].detach()[~keep] == 0).all()
    status = panel.slots["repair"].status.object
    assert "calibration loss" in status and "applied" in status and "×" in status
    run.step(1)
    assert "repair (DSnoT)" in run.history.frame()["event"].dropna().iloc[-1]
    assert P.sparsity(run.model)["global"] == pytest.approx(0.8, abs=1e-3)  # each row keeps its count


def test_repair_by_default_only_if_the_loss_fell():
    run = _pruned_run()
    panel = PruningPanel(run)
    kept = _state(run)
    job = panel.repair()
    job.wait(60)
    _, r = run.history.snapshot(live.REPAIR)
    assert r["apply"] == "better" and r["applied"] == (r["loss_after"] < r["loss_before"])
    if not r["applied"]:
        assert all(torch.equal(v, kept[k]) for k, v in run.model.state_dict().items())
        panel.feed.tick()
        assert "not applied: the loss rose" in panel.slots["repair"].status.object


@pytest.mark.parametrize("interrupt", ["masks changed", "cancelled"])
def test_a_refused_or_cancelled_repair_leaves_the_run_as_it_was(monkeypatch, interrupt):
    import sys
    import threading

    R = sys.modules["trainlab.prune.repair"]  # the module (trainlab.prune.repair, the attribute, is its function)

    run = _pruned_run()
    panel = PruningPanel(run)
    panel.repair_apply = "always"
    started, go, dsnot = threading.Event(), threading.Event(), R.repair

    def held(*a, **kw):  # the repair computed while the test changes the run or cancels
        started.set()
        go.wait(30)
        return dsnot(*a, **kw)

    monkeypatch.setattr(R, "repair", held)
    job = panel.repair()
    assert started.wait(30)
    if interrupt == "masks changed":
        run.set(sparsity=0.9)  # a new final sparsity: the schedule prunes again before the next step
        run.step(1)
    else:
        panel.slots["repair"].cancel()
    kept = _state(run)
    go.set()
    wait_until(lambda: job.done, 60, "the repair job")
    assert all(torch.equal(v, kept[k]) for k, v in run.model.state_dict().items())  # nothing applied
    panel.feed.tick()
    status = panel.slots["repair"].status.object
    assert ("masks changed while it ran" in status) if interrupt == "masks changed" else ("cancelled" in status)
    assert run.step(2) == 2
