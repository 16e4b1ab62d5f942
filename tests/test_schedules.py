"""Schedules: torch.optim.lr_scheduler's equivalents to 1e-12, closed forms otherwise, and the run's use of them."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from conftest import wait_until
from trainlab import Run
from trainlab.schedules import Schedule, as_schedule, preview, schedules

BASE = 0.1


def torch_lrs(make_scheduler, steps: int) -> list[float]:
    """The lr torch's scheduler gives each of `steps` optimizer steps (index t = steps taken before)."""
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=BASE)
    sched = make_scheduler(opt)
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def ours(spec, steps: int) -> list[float]:
    s = as_schedule(spec)
    return [BASE * s(t) for t in range(steps)]


def close(a, b, tol=1e-12):
    np.testing.assert_allclose(np.array(a), np.array(b), rtol=tol, atol=tol * BASE)


def test_step_matches_steplr():
    close(ours(("step", {"step_size": 7, "gamma": 0.3}), 50),
          torch_lrs(lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=7, gamma=0.3), 50))


def test_cosine_matches_cosineannealinglr_then_holds():
    total = 40
    theirs = torch_lrs(lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=total, eta_min=0.2 * BASE), total + 1)
    mine = ours(("cosine", {"total": total, "min_fraction": 0.2}), total + 10)
    close(mine[: total + 1], theirs)
    assert mine[total:] == [pytest.approx(0.2 * BASE, rel=1e-12)] * 10  # torch's would climb back up


def test_warmup_cosine_matches_linearlr_then_cosine_in_sequentiallr():
    warmup, total = 10, 60

    def make(o):
        up = torch.optim.lr_scheduler.LinearLR(o, start_factor=1 / (warmup + 1), end_factor=1.0, total_iters=warmup)
        down = torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=total - warmup, eta_min=0.1 * BASE)
        return torch.optim.lr_scheduler.SequentialLR(o, [up, down], milestones=[warmup])

    close(ours(("warmup_cosine", {"warmup": warmup, "total": total, "min_fraction": 0.1}), total + 1), torch_lrs(make, total + 1))


def test_warmup_cosine_is_nanogpts_get_lr():
    warmup, total, lo = 5, 30, 0.1

    def get_lr(it):  # nanoGPT train.py, with min_lr = lo * lr and lr_decay_iters = total
        if it < warmup:
            return BASE * (it + 1) / (warmup + 1)
        if it > total:
            return lo * BASE
        ratio = (it - warmup) / (total - warmup)
        return lo * BASE + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (BASE - lo * BASE)

    close(ours(("warmup_cosine", {"warmup": warmup, "total": total, "min_fraction": lo}), 40), [get_lr(t) for t in range(40)])


@pytest.mark.parametrize("total, pct", [(100, 0.3), (57, 0.25), (10, 0.5)])
def test_onecycle_matches_onecyclelr(total, pct):
    make = lambda o: torch.optim.lr_scheduler.OneCycleLR(
        o, max_lr=BASE, total_steps=total, pct_start=pct, div_factor=20.0, final_div_factor=300.0, cycle_momentum=False)
    spec = ("onecycle", {"total": total, "pct_start": pct, "div_factor": 20.0, "final_div_factor": 300.0})
    close(ours(spec, total), torch_lrs(make, total))
    assert ours(spec, total + 5)[total:] == [pytest.approx(BASE / 20 / 300, rel=1e-12)] * 5


@pytest.mark.parametrize("shape, drop", [("linear", lambda x: 1 - x), ("cosine", lambda x: 0.5 * (1 + math.cos(math.pi * x))),
                                         ("1-sqrt", lambda x: 1 - math.sqrt(x))])
def test_wsd_closed_form(shape, drop):
    warmup, total, frac, lo = 10, 100, 0.3, 0.05
    mine = ours(("wsd", {"warmup": warmup, "total": total, "decay_fraction": frac, "shape": shape, "min_fraction": lo}), 110)
    expected = []
    for t in range(110):
        if t < warmup:
            m = (t + 1) / (warmup + 1)
        elif t < 70:
            m = 1.0
        else:
            m = lo + (1 - lo) * drop(min(t - 70, 30) / 30)
        expected.append(BASE * m)
    close(mine, expected)
    assert mine[69] == BASE and mine[100] == pytest.approx(lo * BASE)


def test_constant():
    assert ours("constant", 5) == [BASE] * 5


def test_every_entry_declares_documented_params():
    for entry in schedules:
        for name, p in entry.params.items():
            assert p.doc, (entry.name, name)
        Schedule(entry.name)  # the defaults are valid


@pytest.mark.parametrize("spec, words", [
    ("cosinus", ["unknown schedule", "warmup_cosine"]),
    (("cosine", {"total": 0}), ["total", "[1, inf)"]),
    (("cosine", {"min_fraction": 1.5}), ["min_fraction"]),
    (("warmup_cosine", {"warmup": 500, "total": 100}), ["warmup=500", "total=100"]),
    (("cosine", {"steps": 10}), ["no setting 'steps'", "total"]),
    (42, ["schedule must be"]),
])
def test_bad_schedules_are_refused_clearly(spec, words):
    with pytest.raises(ValueError) as e:
        as_schedule(spec)
    for w in words:
        assert w in str(e.value)


def test_preview_is_the_schedule_ahead_of_time():
    p = preview(("step", {"step_size": 100, "gamma": 0.5}), 0.2, steps=350)
    assert p["step"][0] == 1 and p["step"][-1] == 350
    for k, lr in zip(p["step"], p["lr"]):
        assert lr == pytest.approx(0.2 * 0.5 ** ((k - 1) // 100))
    assert {100, 101, 200, 201} <= set(p["step"].tolist())  # both sides of every jump
    assert len(preview(("cosine", {"total": 3000}), 1.0)["step"]) <= 400 + 1
    assert preview(("cosine", {"total": 3000}), 1.0)["step"][-1] == 3300


# ---- the run ----------------------------------------------------------------------------------
def tiny_run(**kw) -> Run:
    return Run(model=("mlp", {"width": 8, "depth": 1}), data="moons", device="cpu", probes=[], **kw)


def test_run_writes_the_scheduled_lr_and_logs_it():
    run = tiny_run(lr=0.2, schedule=("step", {"step_size": 3, "gamma": 0.5}))
    seen = []
    orig = run.torch_optimizer.step

    def spy(*a, **k):
        seen.append(run.torch_optimizer.param_groups[0]["lr"])
        return orig(*a, **k)

    run.torch_optimizer.step = spy
    run.step(8)
    expected = [0.2 * 0.5 ** (t // 3) for t in range(8)]
    assert seen == pytest.approx(expected, rel=1e-15)
    assert run.history.frame()["lr"].tolist() == pytest.approx(expected, rel=1e-15)
    assert run.lr == 0.2  # the base lr is the setting; the schedule multiplies it


def test_schedule_changes_live_from_now_and_a_rejected_one_changes_nothing():
    run = tiny_run(lr=0.1)
    run.step(4)
    run.set(schedule=("cosine", {"total": 8}), lr=0.2)  # chosen at step 4: it counts from there
    run.step(2)
    assert run.schedule_start == 4
    df = run.history.frame()
    lrs = df["lr"].tolist()
    assert lrs[:4] == [0.1] * 4
    assert lrs[4:] == pytest.approx([0.2 * 0.5 * (1 + math.cos(math.pi * t / 8)) for t in (0, 1)])
    assert "schedule cosine from step 4" in df["event"].dropna().iloc[-1]
    with pytest.raises(ValueError, match="warmup"):
        run.set(schedule=("warmup_cosine", {"warmup": 50, "total": 20}), lr=0.5)
    assert run.schedule == ("cosine", {"total": 8, "min_fraction": 0.0}) and run.lr == 0.2
    with pytest.raises(ValueError, match="unknown schedule"):
        run.set(schedule="nope")
    run.step(1)
    assert run.history.frame()["lr"].iloc[-1] == pytest.approx(0.2 * 0.5 * (1 + math.cos(math.pi * 2 / 8)))


def test_a_schedule_can_count_from_the_runs_start_instead():
    """The old way: a warm-up-cosine of 2,000 steps chosen at step 2,500 with schedule_start=0 is over
    already, and holds the lr at its minimum (0) for good; from now (the default) it warms up."""
    late = tiny_run(lr=0.1)
    late.step(30)
    late.set(schedule=("warmup_cosine", {"warmup": 5, "total": 20}), schedule_start=0)
    late.step(2)
    assert late.history.frame()["lr"].tail(2).tolist() == [0.0, 0.0] and late.current_lr == 0.0
    now = tiny_run(lr=0.1)
    now.step(30)
    now.set(schedule=("warmup_cosine", {"warmup": 5, "total": 20}))
    now.step(2)
    assert now.history.frame()["lr"].tail(2).tolist() == pytest.approx([0.1 / 6, 0.2 / 6])
    p = preview(now.schedule, now.lr, 20, start=now.schedule_start)
    assert p["step"][0] == 31 and p["lr"][0] == pytest.approx(0.1 / 6)  # drawn from where it starts
    with pytest.raises(ValueError, match="schedule_start"):
        now.set(schedule_start=3)
    with pytest.raises(ValueError, match="schedule_start=-1"):
        now.set(schedule="constant", schedule_start=-1)


def test_schedule_while_training_in_the_background():
    run = tiny_run(lr=0.1)
    run.start()
    try:
        run.set(schedule=("step", {"step_size": 1, "gamma": 0.9}))
        wait_until(lambda: run.steps >= 20, 60, "20 steps in the background")
    finally:
        run.stop()
    df = run.history.frame()
    set_at = int(run.schedule_start)
    after = df[df["step"] > set_at]
    assert len(after) > 0 and (df[df["step"] <= set_at]["lr"] == 0.1).all()
    for step, lr in zip(after["step"], after["lr"]):
        assert lr == pytest.approx(0.1 * 0.9 ** (step - 1 - set_at))


def test_save_and_load_keep_the_schedule(tmp_path):
    run = tiny_run(lr=0.3, schedule=("onecycle", {"total": 20}))
    run.step(5)
    run.save(tmp_path / "r.pt")
    back = Run.load(tmp_path / "r.pt", probes=[])
    assert back.schedule == run.schedule
    run.step(5)
    back.step(5)
    assert back.history.frame()["lr"].tolist() == pytest.approx(run.history.frame()["lr"].tolist(), rel=1e-15)


def test_the_schedule_scales_a_new_lr_and_a_new_optimizer():
    run = tiny_run(lr=0.1, schedule=("step", {"step_size": 2, "gamma": 0.5}))
    run.step(3)
    run.set(lr=0.4)  # the new base lr, still scaled by the schedule at this step
    run.step(1)
    run.set(optimizer="adam", lr=0.01)  # a fresh optimizer: its groups take the new base
    run.step(2)
    lrs = run.history.frame()["lr"].tolist()
    assert lrs == pytest.approx([0.1, 0.1, 0.05, 0.4 * 0.5, 0.01 * 0.25, 0.01 * 0.25])
    assert run.torch_optimizer.param_groups[0]["lr"] == pytest.approx(0.01 * 0.25)
