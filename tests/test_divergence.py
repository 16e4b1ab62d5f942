"""Divergence the user can recover from: caught before the weights are ruined, rolled back to a restore
point, and "lower the lr and resume" works; roll back to a step by hand."""
from __future__ import annotations

import math

import pytest
import torch
from conftest import small_run

from trainlab import Run
from trainlab.divergence import Guard


def full_loss(run: Run) -> float:
    with torch.no_grad():
        return float(run.loss_fn(run.model(run.data.X), run.data.y))


@pytest.mark.parametrize("momentum", [0.0, 0.9])
@pytest.mark.parametrize("lr", [3.0, 10.0, 100.0])
def test_lower_the_lr_and_resume_after_a_blow_up(lr, momentum):
    """The README's promise, in the sequence that used to leave the run stuck with weights of 1e12-1e17."""
    run = Run(momentum=momentum, probes=[], device="cpu")
    run.step(20)
    before = full_loss(run)
    run.set(lr=lr)
    taken = run.step(500)
    assert taken < 500 and run.status == "paused" and "diverged" in run.message, run.message
    assert "rolled back to step 20" in run.message
    assert max(float(p.detach().abs().max()) for p in run.model.parameters()) < 100  # the weights are not ruined
    assert full_loss(run) == pytest.approx(before, rel=1e-6)  # they are the weights of step 20
    run.set(lr=0.001)
    assert run.step(20) == 20, run.message
    assert full_loss(run) < before  # training goes on from where it was before the blow-up
    events = run.history.frame()["event"].dropna().tolist()
    assert any("rolled back to step 20" in e for e in events)


def test_roll_back_to_a_step_by_hand():
    run = small_run(probes=[])
    run.step(200)  # restore points every 100 healthy steps, two kept
    at_200 = [p.detach().clone() for p in run.params]
    run.step(50)
    assert run.restore_points == [100, 200]
    assert run.rollback(250) == 200  # the newest at or before 250
    assert all(torch.equal(p, q) for p, q in zip(run.params, at_200))
    assert run.steps == 250  # the steps go on counting: the history keeps what happened
    assert run.rollback(150) == 100
    with pytest.raises(ValueError, match=r"no restore point at or before step 50.*\[100, 200\]"):
        run.rollback(50)
    run.step(1)
    assert "rolled back to step 100" in run.history.frame()["event"].dropna().iloc[-1]
    with pytest.raises(TypeError, match="step"):
        run.rollback("last")


def test_a_settings_change_leaves_a_restore_point_before_its_first_step():
    run = small_run(probes=[])
    run.step(7)
    run.set(lr=0.3)
    run.step(1)
    assert run.restore_points[-1] == 7
    run.set(optimizer="adam")
    run.step(1)
    assert run.rollback() == 8  # the restore point of the switch carries adam's state
    assert run.step(2) == 2


def test_a_single_bad_batch_keeps_the_weights_and_twice_rolls_back():
    poisoned = {"steps": set()}

    def loss(out, y):
        value = torch.nn.functional.cross_entropy(out, y)
        return value * math.nan if len(poisoned["steps"]) else value

    run = small_run(loss=loss, probes=[])
    run.step(30)
    at_30 = [p.detach().clone() for p in run.params]
    poisoned["steps"].add(31)
    assert run.step(1) == 0 and "kept from step 30" in run.message  # weights are fine: one bad batch
    assert all(torch.equal(p, q) for p, q in zip(run.params, at_30))
    assert run.step(1) == 0 and "rolled back to step 0" in run.message  # again at the same weights: go back
    poisoned["steps"].clear()
    assert run.step(3) == 3


def test_the_factor_is_a_live_setting_and_zero_leaves_only_non_finite_values():
    run = Run(momentum=0.9, probes=[], device="cpu", diverge_factor=0)
    run.step(20)
    run.set(lr=3.0)
    run.step(500)
    assert "not finite" in run.message or "nan" in run.message or "inf" in run.message
    with pytest.raises(ValueError, match="diverge_factor"):
        run.set(diverge_factor=-1)


def test_the_guard_reads_the_scale_of_the_loss():
    g = Guard(factor=100)
    for _ in range(20):
        g.record(2.0)
    assert g.check(150.0, 1.0) is None and g.check(250.0, 1.0) is None  # over the limit: once is not yet
    assert "100×" in g.check(300.0, 1.0)  # twice in a row is
    assert "not" in str(g.check(math.nan, 1.0)) or "nan" in g.check(math.nan, 1.0)
    assert "gradient norm" in g.check(1.0, math.inf)
    tiny = Guard(factor=100)
    for _ in range(20):
        tiny.record(1e-4)  # a loss near 0: 10x the first loss is the floor, not 100x 1e-4
    assert tiny.check(5e-4, 1.0) is None
    zero = Guard(factor=100)
    for _ in range(20):
        zero.record(-1.0)  # a loss that can be negative has no scale to grow from
    assert zero.check(1e6, 1.0) is None


def test_one_hard_example_in_a_batch_of_one_is_not_a_blow_up():
    g = Guard(factor=100)
    for _ in range(50):
        g.record(1e-4)  # a fitted model: most single examples cost almost nothing
    assert g.check(6.7, 1.0) is None  # one hard example: over the limit once
    g.record(6.7)
    assert g.check(1e-4, 1.0) is None  # and gone at the next step
    assert g.check(9.0, 1.0) is None and "100×" in g.check(50.0, 1.0)  # a blow-up stays over it


def test_a_run_on_single_examples_trains_on():
    run = small_run(batch_size=1, probes=[], lr=0.05)
    assert run.step(1500) == 1500, run.message


def test_auto_threads_count_the_examples_a_step_sees():
    run = small_run(batch_size=100_000)  # full batch: 320 examples a step, a small model
    assert run.threads == 1
