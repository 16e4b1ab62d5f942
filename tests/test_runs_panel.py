"""RunsPanel: save the live run, overlay stored runs with best steps and changes marked, diff their settings,
reopen and fork a stored run or the live one (refusals leave everything as it was), export the histories and
the figure."""
from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import wait_until

import trainlab
from trainlab.store import Store
from trainlab.widgets.dashboard import TrainingDashboard
from trainlab.widgets.runs import LIVE, RunsPanel, parse_settings


def small(width=16, **kw):
    return trainlab.Run(model=("mlp", {"width": width}), data="moons", eval_every=10, probes=[], device="cpu", **kw)


def test_save_compare_and_export(tmp_path):
    store = Store(tmp_path / "runs")
    other = small(32, lr=0.1)
    other.step(30)
    other.set(lr=0.01)
    other.step(30)
    store.save(other, "wide")
    run = small()
    run.step(50)
    panel = RunsPanel(run, store=store)
    try:
        assert panel.save("narrow") == "narrow" and panel.selected == ["narrow"]
        panel.choose.value = ["narrow", "wide"]
        lines = dict(zip(panel.line_source.data["run"], panel.line_source.data["ys"]))
        history = store.history(["narrow", "wide"])
        np.testing.assert_allclose(lines["wide"], history[history.run == "wide"]["val_loss"].dropna())
        best = dict(zip(panel.best_source.data["run"], panel.best_source.data["y"]))
        assert best["narrow"] == pytest.approx(history[history.run == "narrow"]["val_loss"].min())
        assert panel.mark_source.data["change"] == ["lr=0.01"] and panel.mark_source.data["step"][0] == 31
        assert panel.diff.object.loc["model.width"].tolist() == ["16", "32"]
        assert panel.save("narrow") == "narrow"  # the same run saved again: its own place, a newer checkpoint
        stranger = RunsPanel(small(8), store=store)
        assert stranger.save("narrow") is None and "narrow" in stranger.error  # another run's name: refused
        stranger.close()
        csv = pd.read_csv(io.BytesIO(panel._csv().getvalue()))
        assert set(csv["run"]) == {"narrow", "wide"} and len(csv) == len(history)
        assert len(pd.read_parquet(panel._parquet())) == len(history)
        assert "<html" in panel._html().getvalue().lower()
        panel.metric = "train_loss"
        assert len(panel.line_source.data["ys"][0]) == 50
    finally:
        panel.close()


def test_reopen_and_fork_continue_a_stored_run(tmp_path):
    store = Store(tmp_path / "runs")
    run = small()
    run.step(40)
    store.save(run, "base")
    panel = RunsPanel(small(), store=store)
    try:
        again = panel.reopen("base")
        assert again.steps == 40 and panel.opened is again
        again.step(10)
        assert again.steps == 50
        forked = panel.fork("base", "lr=0.01, optimizer=adam")
        assert forked.steps == 40 and forked.optimizer == "adam" and forked.lr == 0.01
        assert panel.fork("base", "lr=-1") is None and "lr" in panel.error and panel.opened is forked
        assert panel.fork("base", "lr 0.1") is None and "name=value" in panel.error
        assert panel.reopen("missing") is None and "missing" in panel.error
        assert store.recording(forked) == "base.fork-40"  # recorded beside its parent
        store.untrack(forked)
    finally:
        panel.close()
    assert parse_settings("betas=(0.9, 0.99), optimizer=adam") == {"betas": (0.9, 0.99), "optimizer": "adam"}


def test_the_dashboard_shows_a_reopened_run(tmp_path, monkeypatch):
    store = Store(tmp_path / "runs")
    run = small()
    run.step(20)
    store.save(run, "kept")
    monkeypatch.setattr("trainlab.widgets.runs.STORE", str(tmp_path / "runs"))
    dashboard = TrainingDashboard(small())
    try:
        runs = dashboard.open_lab("Runs")
        runs.reopen("kept")
        assert dashboard.run.steps == 20 and dashboard.run is not run and "reopened" in dashboard.notice
    finally:
        dashboard.close()


def test_fork_at_a_past_step_from_the_dashboard_continues_live_beside_its_parent(tmp_path, monkeypatch):
    store = Store(tmp_path / "runs")
    monkeypatch.setattr("trainlab.widgets.runs.STORE", str(tmp_path / "runs"))
    dashboard = TrainingDashboard(small(lr=0.1))
    try:
        runs = dashboard.open_lab("Runs")
        runs.checkpoint_every = 20
        assert runs.save("base") == "base" and store.recording(dashboard.run) == "base"
        parent = dashboard.run
        parent.step(70)
        runs.pick.value = "base"
        runs.refresh()
        assert runs.fork_step.options == [0, 20, 40, 60] and "steps 0, 20, 40, 60" in runs.fork_steps.object
        runs.fork_step.value = 40
        forked = runs.fork("base", "lr=0.01", 50)  # no checkpoint at 50: from 40, and it says so
        assert forked is dashboard.run and forked.steps == 40 and forked.lr == 0.01
        assert "at step 40 (step 50 has no checkpoint" in runs.note.object
        assert store.recording(parent) is None and store.status("base") == "complete"  # the old one saved whole
        assert store.recording(forked) == "base.fork-40"
        forked.step(30)
        assert forked.history.frame().step.tolist() == list(range(1, 71))
        assert "the fork of base at step 40" in dashboard.notice
        panel = dashboard.open_lab("Runs")  # the tab, rebuilt for the fork, draws it beside its parent
        assert panel.selected == ["base", "base.fork-40"] and panel.pick.value == "base.fork-40"
        assert panel.fork_source.data["run"] == ["base.fork-40"] and list(panel.fork_source.data["step"]) == [40]
        assert panel.fork_source.data["parent"] == ["base"]
        assert panel.fork("base", "lr=0.01", 99) is None and "step=99 rejected" in panel.error
        assert dashboard.run is forked
    finally:
        dashboard.close()
    assert store.status("base.fork-40") == "complete" and store.list().set_index("name").step["base.fork-40"] == 70


def test_fork_the_live_run_at_a_restore_point_from_the_dashboard(tmp_path, monkeypatch):
    store = Store(tmp_path / "runs")
    monkeypatch.setattr("trainlab.widgets.runs.STORE", str(tmp_path / "runs"))
    dashboard = TrainingDashboard(small(lr=0.1, momentum=0.9))
    try:
        runs = dashboard.open_lab("Runs")
        source = dashboard.run
        assert runs.pick.options == [LIVE] and runs.pick.value == LIVE and runs.reopen_button.disabled
        assert runs.fork_step.options == [0]
        source.step(250)
        dashboard.tick()  # the slider follows the run's restore points
        assert runs.fork_step.options == source.restore_points == [100, 200] and runs.fork_step.value == 200
        assert "Restore points of the live run at steps 100, 200" in runs.fork_steps.object
        runs.fork_step.value = 100
        before = {k: v.clone() for k, v in source.model.state_dict().items()}
        assert runs.fork(LIVE, "lr=-1", 100) is None and "lr=-1 rejected" in runs.error  # nothing changed
        assert dashboard.run is source and source.steps == 250
        forked = runs.fork(LIVE, "lr=0.01", 150)  # no point at 150: the one at 100
        assert forked is dashboard.run and forked is not source and forked.steps == 100 and forked.lr == 0.01
        assert forked.parent == {"run": None, "step": 100, "asked": 150}
        assert "(step 150 has no restore point: the nearest before it)" in runs.note.object
        assert "not recorded" in runs.note.object and store.names() == []
        assert "the fork at step 100 of an unsaved run" in dashboard.notice
        for k, v in before.items():  # the source's weights as they were (the dashboard closed it after)
            assert torch.equal(source.model.state_dict()[k], v)
        assert source.steps == 250
        ref = small(lr=0.1, momentum=0.9)
        ref.step(100)
        for a, b in zip(forked.model.state_dict().values(), ref.model.state_dict().values()):
            assert torch.equal(a, b)
        assert forked.history.frame().step.tolist() == list(range(1, 101))
        forked.step(5)
        assert forked.history.frame().lr.iloc[-5:].tolist() == [0.01] * 5
    finally:
        dashboard.close()


def test_a_refused_fork_of_the_live_run_leaves_everything_as_it_was(tmp_path):
    store = Store(tmp_path / "runs")
    run = small(lr=0.1)
    run.step(250)  # restore points at 100 and 200
    panel = RunsPanel(run, store=store)
    try:
        points, history = run.restore_points, run.history.frame()
        for text, said in [("lr=-1", "lr=-1 rejected"), ("optimizer=nope", "nope"), ("lr 0.1", "name=value")]:
            assert panel.fork(LIVE, text, 100) is None and said in panel.error
        assert panel.fork(LIVE, "lr=0.01", 50) is None and "no restore point at or before step 50" in panel.error
        assert panel.reopen(LIVE) is None and "the live run is open already" in panel.error
        assert panel.opened is None and run.steps == 250 and run.lr == 0.1 and run.restore_points == points == [100, 200]
        pd.testing.assert_frame_equal(run.history.frame(), history)
        assert store.names() == []
    finally:
        panel.close()


def test_a_fork_of_the_recorded_live_run_while_it_trains_is_recorded_beside_it(tmp_path, monkeypatch):
    store = Store(tmp_path / "runs")
    monkeypatch.setattr("trainlab.widgets.runs.STORE", str(tmp_path / "runs"))
    dashboard = TrainingDashboard(small(lr=0.1))
    try:
        runs = dashboard.open_lab("Runs")
        runs.checkpoint_every = 50
        assert runs.save("base") == "base"
        source = dashboard.run
        runs.pick.value = LIVE
        source.start()

        def offered():
            dashboard.tick()
            return source.steps >= 250 and runs.fork_step.options == source.restore_points

        wait_until(offered, 120, "the slider offering the restore points of the training run")
        at = runs.fork_step.value
        assert at == runs.fork_step.options[-1] and at >= 200
        assert source.status == "running"
        forked = runs.fork(LIVE, "lr=0.01", at)  # taken between two of the thread's steps
        for _ in range(20):  # on a busy machine the run may train past the point it offered (it keeps two)
            if forked is not None or at in source.restore_points:
                break
            at = source.restore_points[-1]
            forked = runs.fork(LIVE, "lr=0.01", at)
        assert forked is dashboard.run and forked.steps == at and forked.lr == 0.01
        assert forked.parent == {"run": "base", "step": at, "asked": at}
        assert store.recording(forked) == f"base.fork-{at}" and f"recorded as base.fork-{at}" in runs.note.object
        assert source.status == "stopped" and store.status("base") == "complete"  # the dashboard moved on
        assert f"the fork of base at step {at}" in dashboard.notice
        panel = dashboard.open_lab("Runs")  # rebuilt for the fork: drawn beside its parent
        assert panel.selected == ["base", f"base.fork-{at}"] and list(panel.fork_source.data["step"]) == [at]
        stored = store.history("base")
        assert forked.history.frame().train_loss.tolist() == stored[stored.step <= at].train_loss.tolist()
    finally:
        dashboard.close()


def test_the_chosen_runs_follow_the_live_run_while_it_is_recorded(tmp_path, monkeypatch):
    monkeypatch.setattr("trainlab.widgets.runs.STORE", str(tmp_path / "runs"))
    monkeypatch.setattr("trainlab.widgets.runs.FOLLOW_S", 0.0)
    dashboard = TrainingDashboard(small(lr=0.1))
    try:
        runs = dashboard.open_lab("Runs")
        assert runs.save("live") == "live"
        runs.choose.value = ["live"]
        assert len(runs.line_source.data["xs"][0]) == 0  # drawn before it trained

        def followed(step):
            dashboard.feed.tick()
            xs = runs.line_source.data["xs"][0]
            return len(xs) and max(xs) == step

        # the store appends the history every 0.25 s, behind the run; the panel redraws on the feed's tick
        for upto in (20, 60):
            dashboard.run.step(upto - dashboard.run.steps)
            wait_until(lambda: followed(upto), timeout=60, what=f"the recorded live run's drawn curve at {upto}")
        at = runs._drawn
        dashboard.feed.tick()
        assert runs._drawn == at  # all drawn: no redraw while the run stands still
    finally:
        dashboard.close()
