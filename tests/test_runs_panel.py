"""RunsPanel: save the live run, overlay stored runs with best steps and changes marked, diff their settings,
reopen and fork (refusals leave everything as it was), export the histories and the figure."""
from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest

import trainlab
from trainlab.store import Store
from trainlab.widgets.dashboard import TrainingDashboard
from trainlab.widgets.runs import RunsPanel, parse_settings


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
