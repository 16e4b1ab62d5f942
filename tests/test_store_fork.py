"""Forking a stored run at a past step: periodic checkpoints of a recorded run (atomic, thinned), the fork
replaying exactly from the nearest one, with the settings its changes say were in force there, its lineage
saved; bad input refused naming the setting, nothing written. Forking the live run (`Run.fork`) from its
restore points in memory: the same replay, the source untouched, also while it trains in its thread."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import small_run, wait_until

from trainlab.store import Store
from trainlab.store import points
from trainlab.store.compare import changes, lineage, settings_diff
from trainlab.store.fork import settings_at
from torch import nn


@pytest.fixture
def store(tmp_path):
    return Store(tmp_path / "runs")


def files(store):
    return sorted(str(p.relative_to(store.root)) for p in store.root.rglob("*"))


def test_a_fork_at_a_checkpoint_replays_the_parent_exactly(store):
    run = small_run(lr=0.1, momentum=0.9, eval_every=20, probes=[])
    with store.track(run, "base", every=100) as t:
        run.step(300)
    assert t.points.written == 3 and t.points.skipped == 0
    assert store.checkpoints("base") == [0, 100, 200, 300]
    fork = store.fork("base", step=200, device="cpu")
    assert fork.steps == 200 and fork.parent == {"run": "base", "step": 200, "asked": 200}
    assert fork.settings() == run.settings()
    # its history up to the fork is the parent's; the data order and noise generators come with the checkpoint
    parent = run.history.frame()
    pd.testing.assert_frame_equal(fork.history.frame(), parent[parent.step <= 200], check_dtype=False)
    fork.step(100)
    mine = fork.history.frame()
    for column in ("train_loss", "grad_norm", "train_acc", "val_loss", "val_acc", "epoch"):
        np.testing.assert_allclose(mine[column], parent[column], rtol=1e-6, err_msg=column)
    for a, b in zip(run.model.state_dict().values(), fork.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert mine.event.dropna().tolist() == ["forked from base at step 200"] and mine.step[mine.event.notna()].item() == 201


def test_points_are_taken_at_their_steps_while_the_run_trains_in_the_background(store):
    run = small_run(probes=[], threads=1)
    t = store.track(run, "bg", every=25, keep=100)
    run.start(100)
    run.wait(120)
    wait_until(lambda: store.checkpoints("bg") == [0, 25, 50, 75, 100], 60, "four checkpoints on disk")
    fork = store.fork("bg", step=60, device="cpu")
    assert fork.steps == 50 and fork.parent["asked"] == 60
    assert fork.history.frame().step.max() == 50
    t.close()


def test_the_settings_at_the_fork_are_those_its_changes_put_in_force(store):
    run = small_run(lr=0.05, momentum=0.5, probes=[])
    with store.track(run, "changed", every=40):
        run.step(150)
        run.set(lr=0.01)  # first trained with at step 151
        run.step(30)
        run.set(optimizer="adam", lr=0.003, beta1=0.8)  # at step 181
        run.step(60)
    late, early, switched = (store.fork("changed", step=s, device="cpu") for s in (200, 120, 239))
    assert (late.steps, late.lr, late.optimizer, late.settings()["beta1"]) == (200, 0.003, "adam", 0.8)
    assert (early.steps, early.lr, early.optimizer, early.settings()["momentum"]) == (120, 0.05, "sgd", 0.5)
    middle = store.fork("changed", step=179, device="cpu")
    assert (middle.steps, middle.lr, middle.optimizer) == (160, 0.01, "sgd")
    assert switched.steps == 200 and switched.changes == [c for c in run.changes if c["step"] <= 201]
    # the replay agrees with what each checkpoint recorded of its own settings
    for step in points.steps(store.path("changed") / "points"):
        ckpt = points.read(store.path("changed") / "points", step, "test")
        replayed = settings_at(ckpt["initial_settings"], ckpt["changes"])
        assert {k: replayed[k] for k in ckpt["settings"]} == ckpt["settings"]
        assert {k: replayed[k] for k in ckpt["optimizer_hparams"]} == ckpt["optimizer_hparams"]
    # new settings apply before the fork's next step, logged as a change there
    what_if = store.fork("changed", step=160, lr=0.002, device="cpu")
    assert what_if.lr == 0.002 and what_if.step(5) == 5 and what_if.changes[-1] == {"step": 161, "set": {"lr": 0.002}}


def test_step_zero_is_a_fresh_run_of_the_parents_seed_and_initial_settings(store):
    run = small_run(lr=0.2, seed=3, probes=[])
    run.step(30)
    store.save(run, "plain")  # no periodic checkpoints: step 0 and its last
    assert store.checkpoints("plain") == [0, 30]
    fork = store.fork("plain", step=12, device="cpu", probes=[])
    assert fork.steps == 0 and fork.parent == {"run": "plain", "step": 0, "asked": 12} and fork.lr == 0.2
    fork.step(30)
    np.testing.assert_allclose(fork.history.frame().train_loss, run.history.frame().train_loss, rtol=1e-6)


def test_bad_input_is_refused_naming_it_and_nothing_is_written(store):
    run = small_run(probes=[])
    with store.track(run, "base", every=10):
        run.step(30)
    before = files(store)
    for step, message in ((31, r"step=31 rejected for fork of 'base': a step from 0 to 30 .*checkpoints at steps 0, "
                                r"10, 20, 30"), (-1, "step=-1 rejected"), (2.5, "step=2.5 rejected.*whole number"),
                          ("10", "step='10' rejected")):
        with pytest.raises(ValueError, match=message):
            store.fork("base", step=step)
    with pytest.raises(ValueError, match=r"name='nope': no such run .*\(runs: base\)"):
        store.fork("nope", step=10)
    with pytest.raises(ValueError, match="lr=-1 rejected"):
        store.fork("base", step=10, lr=-1)
    with pytest.raises(ValueError, match="unknown setting 'widht'"):
        store.fork("base", step=10, widht=3)
    for kw, message in (({"every": 0}, "every=0 rejected for store.track"),
                        ({"seconds": -1.0}, "seconds=-1.0 rejected"), ({"every": 5, "keep": 1}, "keep=1 rejected"),
                        ({"every": 2.5}, "every=2.5 rejected")):
        with pytest.raises(ValueError, match=message):
            store.track(small_run(), "other", **kw)
    assert files(store) == before


def test_old_checkpoints_are_thinned_and_a_reset_drops_those_of_the_old_timeline(store):
    run = small_run(probes=[])
    t = store.track(run, "long", every=5, keep=6)
    run.step(200)
    t.recorder.flush()
    found = points.steps(store.path("long") / "points")
    assert len(found) <= 6 and found[0] == 5 and found[-3:] == [190, 195, 200]
    gaps = np.diff(found)
    assert (gaps >= 5).all() and (gaps[:-1] >= gaps[1:]).all()  # sparser towards the start, as the history
    run.reset()
    run.step(12)
    t.recorder.flush()
    assert store.checkpoints("long") == [0, 5, 10]
    fork = store.fork("long", step=10, device="cpu")
    assert fork.history.frame().step.tolist() == list(range(1, 11))
    t.close()
    assert store.checkpoints("long") == [0, 5, 10, 12]
    assert not [p for p in (store.path("long") / "points").iterdir() if p.name.startswith(".")]


def test_a_continued_run_keeps_the_checkpoints_of_its_timeline(store):
    run = small_run(probes=[])
    with store.track(run, "c", every=10):
        run.step(25)
    again = store.load("c", device="cpu")
    with store.track(again, "c", every=10):
        again.step(10)
    assert store.checkpoints("c") == [0, 10, 20, 30, 35]
    other = small_run(seed=5)
    other.step(3)
    store.save(other, "c", overwrite=True)  # another run in its place: none of these are its own
    assert store.checkpoints("c") == [0, 3]


def test_the_lineage_is_saved_listed_and_compared(store):
    run = small_run(lr=0.1, probes=[], eval_every=10)
    with store.track(run, "parent", every=20):
        run.step(60)
    fork = store.fork("parent", step=40, lr=0.01, device="cpu")
    with store.track(fork, "child", every=20):  # recorded live: listed with its parent at once
        assert store.list().set_index("name").parent["child"] == "parent@40"
        fork.step(20)
    again = store.load("child", device="cpu")
    assert again.parent == {"run": "parent", "step": 40, "asked": 40}
    assert lineage(store, ["parent", "child"]).to_dict("records") == [{"run": "child", "parent": "parent", "step": 40}]
    diff = settings_diff(store, ["parent", "child"])
    assert diff.loc["parent"].tolist() == ["", "parent@40"] and diff.loc["lr"].tolist() == ["0.1", "0.01"]
    ch = changes(store, ["child"])
    assert {"run": "child", "step": 41, "change": "forked from parent at step 40"} in ch.to_dict("records")
    grandchild = store.fork("child", step=60, device="cpu")
    assert grandchild.parent["run"] == "child" and grandchild.history.frame().step.tolist() == list(range(1, 61))
    # before it forked, a fork's states are its parent's: forked again there, from the parent's checkpoint
    assert store.checkpoints("child") == [0, 20, 40, 60]
    early = store.fork("child", step=30, device="cpu")
    assert early.steps == 20 and early.parent == {"run": "child", "step": 20, "asked": 30} and early.lr == 0.1
    np.testing.assert_array_equal(early.history.frame().train_loss, run.history.frame().train_loss[:20])


def test_checkpoints_by_time_are_bounded_too(store):
    run = small_run(probes=[])
    with store.track(run, "timed", seconds=1e-6, keep=4) as t:  # every step is due: the writer falls behind
        run.step(60)
    found = points.steps(store.path("timed") / "points")
    assert t.points.written + t.points.skipped == 60 and 1 <= len(found) <= 4 and found[0] == 1
    newest = store.fork("timed", step=found[-1], device="cpu")
    assert newest.steps == found[-1] and newest.step(60 - found[-1]) == 60 - found[-1]
    np.testing.assert_allclose(newest.history.frame().train_loss, run.history.frame().train_loss, rtol=1e-6)


def test_a_fork_replays_a_schedule_and_pruning_chosen_mid_run(store):
    run = small_run(optimizer="adam", lr=0.01, probes=[], pruning=("magnitude", {"sparsity": 0.5, "schedule": (
        "gradual", {"start": 2, "end": 60, "frequency": 5})}))
    with store.track(run, "pruned", every=20):
        run.step(25)
        run.set(schedule=("cosine", {"total": 100}), sparsity=0.7)
        run.step(35)
    fork = store.fork("pruned", step=40, device="cpu", probes=[])
    assert (fork.steps, fork.schedule, fork.schedule_start, fork.pruning) == (40, run.schedule, 25, run.pruning)
    fork.step(20)
    np.testing.assert_allclose(fork.history.frame().train_loss, run.history.frame().train_loss, rtol=1e-6)
    for a, b in zip(run.model.state_dict().values(), fork.model.state_dict().values()):
        torch.testing.assert_close(a, b)


# ---- forking the live run (Run.fork) --------------------------------------------------------------------
def state_of(run):
    """Copies of everything a fork must not touch in its source."""
    return {"weights": {k: v.clone() for k, v in run.model.state_dict().items()}, "steps": run.steps,
            "settings": run.settings(), "changes": run.changes, "points": run.restore_points,
            "history": run.history.frame(), "status": run.status, "optimizer": {
                k: v.clone() for k, v in run.torch_optimizer.state_dict()["state"][0].items()}}


def assert_unchanged(run, before):
    now = state_of(run)
    for k, v in before["weights"].items():
        assert torch.equal(now["weights"][k], v), k
    for k, v in before["optimizer"].items():
        assert torch.equal(now["optimizer"][k], v), k
    assert {k: now[k] for k in ("steps", "settings", "changes", "points", "status")} == \
        {k: before[k] for k in ("steps", "settings", "changes", "points", "status")}
    pd.testing.assert_frame_equal(now["history"], before["history"])


def test_a_fork_of_the_live_run_starts_from_its_restore_point_and_leaves_it_as_it_was():
    run = small_run(lr=0.1, momentum=0.9, eval_every=20, probes=[])
    run.step(250)
    assert run.restore_points == [100, 200]
    before = state_of(run)
    fork = run.fork(150, lr=0.01)  # no point at 150: the newest before it
    assert fork.steps == 100 and fork.parent == {"run": None, "step": 100, "asked": 150}
    assert_unchanged(run, before)
    # the weights and optimizer state are those of step 100: a fresh run of the same seed stepped there
    ref = small_run(lr=0.1, momentum=0.9, eval_every=20, probes=[])
    ref.step(100)
    for (k, a), b in zip(fork.model.state_dict().items(), ref.model.state_dict().values()):
        assert torch.equal(a, b), k
    for p, q in zip(fork.params, ref.params):
        assert torch.equal(fork.torch_optimizer.state[p]["momentum_buffer"], ref.torch_optimizer.state[q]["momentum_buffer"])
    assert all(p is not q for p, q in zip(fork.params, run.params))
    history = fork.history.frame()
    assert history.step.max() == 100
    pd.testing.assert_frame_equal(history, before["history"][before["history"].step <= 100])
    # the new lr applies before its first step; the source trains on at its own
    fork.step(10)
    rows = fork.history.frame()
    assert rows.lr.iloc[-10:].tolist() == [0.01] * 10 and rows.step.iloc[-1] == 110
    assert rows.event.dropna().tolist() == [
        "forked from the live run at step 100 (asked for step 150: the nearest restore point at or before it)"]
    assert fork.changes[-1] == {"step": 101, "set": {"lr": 0.01}}
    assert_unchanged(run, before)
    assert run.step(10) == 10 and run.history.frame().lr.iloc[-1] == 0.1 and run.steps == 260


def test_a_fork_with_the_same_settings_replays_the_source_exactly():
    run = small_run(lr=0.1, momentum=0.9, eval_every=20, probes=[])
    run.step(250)
    fork = run.fork()  # the newest point
    assert fork.steps == 200 and fork.settings() == run.settings()
    fork.step(50)  # the data order and generators come with the point
    mine, theirs = fork.history.frame(), run.history.frame()
    for column in ("train_loss", "grad_norm", "train_acc", "val_loss", "val_acc", "epoch"):
        np.testing.assert_allclose(mine[column], theirs[column], rtol=1e-6, err_msg=column)
    for a, b in zip(run.model.state_dict().values(), fork.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_a_fork_of_the_live_run_has_the_settings_in_force_at_its_point():
    run = small_run(lr=0.05, momentum=0.5, probes=[])
    run.step(130)
    run.set(optimizer="adam", lr=0.003, beta1=0.8)  # applied before step 131: a restore point at 130
    run.step(20)
    run.set(lr=0.001)  # not applied yet: not in force at any point
    assert run.restore_points == [100, 130]
    early, late = run.fork(120), run.fork()
    assert (early.steps, early.optimizer, early.lr, early.settings()["momentum"]) == (100, "sgd", 0.05, 0.5)
    assert (late.steps, late.optimizer, late.lr, late.settings()["beta1"]) == (130, "adam", 0.003, 0.8)
    assert late.changes == run.changes and early.changes == []
    late.step(20)
    np.testing.assert_allclose(late.history.frame().train_loss, run.history.frame().train_loss, rtol=1e-6)
    assert run.lr == 0.001 and run.step(1) == 1 and run.history.frame().lr.iloc[-1] == 0.001


def test_a_live_fork_replays_a_schedule_and_pruning_chosen_mid_run():
    run = small_run(optimizer="adam", lr=0.01, probes=[], pruning=("magnitude", {"sparsity": 0.5, "schedule": (
        "gradual", {"start": 2, "end": 60, "frequency": 5})}))
    run.step(25)
    run.set(schedule=("cosine", {"total": 100}), sparsity=0.7)
    run.step(35)
    fork = run.fork(40, probes=[])
    assert (fork.steps, fork.schedule, fork.schedule_start, fork.pruning) == (25, run.schedule, 25, run.pruning)
    fork.step(35)
    np.testing.assert_allclose(fork.history.frame().train_loss, run.history.frame().train_loss, rtol=1e-6)
    for a, b in zip(run.model.state_dict().values(), fork.model.state_dict().values()):
        torch.testing.assert_close(a, b)


def test_bad_settings_and_steps_are_refused_and_nothing_changes():
    run = small_run(lr=0.1, momentum=0.9, probes=[])
    run.step(120)
    before = state_of(run)
    for kwargs, said in [({"lr": -1}, "lr=-1 rejected"), ({"momentum": 2}, "momentum=2"),
                         ({"optimizer": "nope"}, "nope"), ({"lrr": 0.1}, "lrr"),
                         ({"step": 500}, "step=500 rejected for fork: a step from 0 to 120"),
                         ({"step": -1}, "step=-1 rejected"), ({"step": "late"}, "step")]:
        with pytest.raises(ValueError, match=said):
            run.fork(**kwargs)
        assert_unchanged(run, before)
    with pytest.raises(ValueError, match="lr=-1 rejected for Run: allowed range"):
        run.fork(lr=-1)
    run.step(200)  # points at 200 and 300 only now
    with pytest.raises(ValueError, match=r"no restore point at or before step 150; the run keeps points at steps \[200, 300\]"):
        run.fork(150)


def test_a_fork_of_your_own_model_gets_a_copy_of_it():
    net = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 2))
    run = small_run(model=net, probes=[])
    run.step(20)
    fork = run.fork(0, lr=0.2)
    assert fork.model is not net and fork.steps == 0 and fork.lr == 0.2
    for k, v in run.initial_state.items():
        assert torch.equal(fork.model.state_dict()[k], v)
    fork.step(5)
    assert run.steps == 20 and not torch.equal(fork.model[0].weight, net[0].weight)


def test_forking_while_the_source_trains_in_its_thread():
    run = small_run(lr=0.1, momentum=0.9, eval_every=20, probes=[], threads=1)
    run.start()  # until paused
    try:
        forks = []
        for upto in (150, 350, 550):
            wait_until(lambda: run.steps >= upto, 120, f"the run past step {upto}")
            forks.append(run.fork())  # the newest point, copied between two of the thread's steps
            assert run.status == "running"
        wait_until(lambda: run.steps > forks[-1].parent["step"] + 100, 120, "the source going on training")
        run.pause()
        assert run.status == "paused"
        theirs = run.history.frame()
        # the newest point at each fork, never an older one (two forks may share one when a busy machine checked
        # the step count late)
        assert sorted(f.steps for f in forks) == [f.steps for f in forks] and forks[0].steps >= 100
        for fork in forks:
            at = fork.steps
            assert fork.parent["step"] == at and fork.history.frame().step.max() == at
            pd.testing.assert_frame_equal(fork.history.frame(), theirs[theirs.step <= at], check_dtype=False)
            fork.step(30)  # with the source's settings: its steps again
            mine = fork.history.frame()
            np.testing.assert_allclose(mine.train_loss.iloc[at:], theirs.train_loss.iloc[at:at + 30], rtol=1e-6)
    finally:
        run.stop()  # no training thread left behind for the next test


def test_a_fork_of_a_recorded_run_names_it_and_stores_beside_it(store):
    run = small_run(lr=0.1, probes=[])
    with store.track(run, "base", every=50):
        run.step(230)
        fork = run.fork(lr=0.01)
    assert fork.parent == {"run": "base", "step": 200, "asked": 200}
    with store.track(fork, "base.fork-200"):
        fork.step(20)
    assert store.list().set_index("name").parent["base.fork-200"] == "base@200"
    assert store.checkpoints("base.fork-200") == [0, 50, 100, 150, 200, 220]
    assert lineage(store, ["base", "base.fork-200"]).to_dict("records") == [
        {"run": "base.fork-200", "parent": "base", "step": 200}]
    alone = small_run(probes=[])
    alone.step(10)
    orphan = alone.fork()
    store.save(orphan, "orphan")  # a fork of a run no store recorded: nothing to link to
    assert pd.isna(store.list().set_index("name").parent["orphan"])
