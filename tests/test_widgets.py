"""The dashboard and its feed, driven by setting widget values (no browser)."""
from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import panel as pn
import pytest
import torch
from bokeh.models import ColumnDataSource
from conftest import training_threads

from trainlab import Run
from trainlab.optimizers import optimizers
from trainlab.widgets import TrainingDashboard
from trainlab.widgets.app import create_app


@pytest.fixture
def dash():
    d = TrainingDashboard(Run(data="moons", device="cpu", seed=0))
    yield d
    d.close()


def _rows(source):
    return len(source.data["step"])


def test_controls_are_built_from_declared_parameters(dash):
    lr = dash.controls["lr"].widget
    lo, hi = Run.param.lr.softbounds
    grid = list(lr.options.values())
    assert grid[0] == lo and grid[-1] == hi and len(grid) == 10 * round(math.log10(hi / lo)) + 1
    ratios = np.diff(np.log10(grid))
    assert np.all(ratios > 0.05) and np.all(ratios < 0.15)  # evenly spaced on a log scale
    assert lr.value == dash.run.lr
    bs = dash.controls["batch_size"].widget
    assert bs.options == [2**k for k in range(0, 11)] and bs.value == 64
    momentum = dash.controls["momentum"].widget
    assert (momentum.start, momentum.end) == optimizers["sgd"].params["momentum"].softbounds
    assert momentum.value == pytest.approx(dash.run.opt_params.momentum)
    # every setting of the run and every declared hyperparameter of the optimizer has a control, nothing else
    assert set(dash.controls) == {*Run.SETTABLE, *optimizers["sgd"].params}


def test_moving_a_slider_sets_the_run_at_the_next_step(dash):
    dash.controls["lr"].widget.value = 0.01
    dash.controls["batch_size"].widget.value = 16
    dash.controls["momentum"].widget.value = 0.5
    assert dash.run.lr == pytest.approx(0.01) and dash.run.batch_size == 16
    dash.run.step(3)
    df = dash.run.history.frame()
    assert df["lr"].iloc[-1] == pytest.approx(0.01)
    group = dash.run.torch_optimizer.param_groups[0]
    assert group["momentum"] == 0.5 and group["lr"] == pytest.approx(0.01)


def test_a_rejected_change_is_shown_and_changes_nothing(dash):
    before = dash.run.settings()
    dash.controls["momentum"].widget.value = 0.0
    dash.controls["nesterov"].widget.value = True  # torch: Nesterov needs momentum > 0
    assert "Nesterov" in dash.error and "Rejected" in dash.status.object
    assert dash.status.alert_type == "danger"
    assert dash.run.opt_params.nesterov is False
    dash._apply("momentum", 1.0)  # outside the bounds, which no slider offers
    assert "momentum" in dash.error and "[0, 1)" in dash.error
    assert dash.run.settings() == {**before, "momentum": 0.0}
    assert dash.controls["nesterov"].widget.value is False  # the control shows the run's value again


def test_a_log_setting_whose_zero_means_off_has_a_zero_stop(dash):
    noise = dash.controls["grad_noise"].widget
    assert list(noise.options.values())[0] == 0.0 and noise.value == 0.0
    noise.value = 0.01
    assert dash.run.grad_noise == pytest.approx(0.01)
    noise.value = 0.0
    assert dash.run.grad_noise == 0.0


def test_controls_follow_changes_made_from_code(dash):
    dash.run.set(lr=0.2, batch_size=32)
    dash.tick()
    assert dash.controls["lr"].widget.value == pytest.approx(0.2)
    assert dash.controls["batch_size"].widget.value == 32


def test_feed_streams_only_new_rows(dash, monkeypatch):
    sent = []
    train = dash.feed._channels[0]
    stream = ColumnDataSource.stream

    def spy(self, data, *args, **kwargs):
        if self is train.source:
            sent.append(data)
        return stream(self, data, *args, **kwargs)

    monkeypatch.setattr(ColumnDataSource, "stream", spy)
    dash.run.step(30)
    dash.tick()
    dash.run.step(20)
    dash.tick()
    dash.tick()  # nothing new: nothing sent
    assert [len(s["step"]) for s in sent] == [30, 20]
    assert sent[1]["step"].tolist() == list(range(31, 51))
    hist = dash.run.history.frame()
    np.testing.assert_allclose(train.source.data["train_loss"], hist["train_loss"])
    np.testing.assert_allclose(train.source.data["lr"], hist["lr"])
    val = dash.feed._channels[1]
    assert list(val.source.data["step"]) == hist.dropna(subset=["val_loss"])["step"].tolist()
    np.testing.assert_allclose(val.source.data["val_acc"], hist["val_acc"].dropna())


def test_reset_starts_the_plots_over(dash):
    dash.run.step(20)
    dash.tick()
    assert _rows(dash.feed._channels[0].source) == 20
    dash.reset_button.clicks += 1
    dash.tick()
    assert _rows(dash.feed._channels[0].source) == 0 and dash.run.steps == 0


def test_decision_boundary_streams_for_2d_data(dash):
    grid = dash.feed.snapshot_source("boundary")
    assert np.all(grid.data["z"][0] == 0.5)  # drawn before the first measurement
    dash.run.step(20)
    dash.tick()
    z = grid.data["z"][0]
    assert z.shape == (60, 60) and 0 <= z.min() < z.max() <= 1
    snap = dash.run.history.snapshot("boundary")[1]
    np.testing.assert_array_equal(z, snap["z"])
    assert grid.data["x0"][0] == snap["x"][0] and grid.data["dw"][0] == pytest.approx(snap["x"][-1] - snap["x"][0])


def test_choosing_data_and_model_builds_a_new_run_or_refuses(dash):
    old = dash.run
    dash._model.value = "cnn"  # moons are not images
    assert dash.run is old and dash._model.value == "mlp" and "cnn needs image data" in dash.error
    dash._data.value = "digits"
    assert dash.run is not old and dash.run.data.name == "digits" and dash.error == ""
    assert not dash.feed.follows("boundary")  # 10-D data: no decision boundary
    dash._model.value = "cnn"
    assert dash.run.model_spec[0] == "cnn"
    assert dash.run.lr == old.lr and dash.run.settings() == old.settings()


def test_switching_optimizer_rebuilds_its_controls(dash):
    dash.controls["optimizer"].widget.value = "adam"
    assert dash.run.optimizer == "adam"
    assert set(dash.controls) == {*Run.SETTABLE, *optimizers["adam"].params}
    dash.controls["beta1"].widget.value = 0.8
    dash.run.step(1)
    assert dash.run.torch_optimizer.param_groups[0]["betas"] == (0.8, 0.999)


def test_switching_keeps_the_optimizers_state_only_when_asked(dash):
    dash.controls["optimizer"].widget.value = "adam"
    dash.run.step(5)
    moments = [dash.run.torch_optimizer.state[p]["exp_avg"].clone() for p in dash.run.params]
    dash.keep_state.value = True
    dash.controls["optimizer"].widget.value = "adamw"
    dash.run.step(1)
    state = dash.run.torch_optimizer.state[dash.run.params[0]]
    assert int(state["step"]) == 6  # carried over: five adam steps, then one adamw step
    assert not torch.equal(state["exp_avg"], moments[0] * 0)
    dash.keep_state.value = False
    dash.controls["optimizer"].widget.value = "adam"
    dash.run.step(1)
    assert int(dash.run.torch_optimizer.state[dash.run.params[0]]["step"]) == 1  # fresh
    events = dash.run.history.frame()["event"].dropna().tolist()
    assert "kept" in events[1] and "reset" in events[2]


def test_divergence_is_shown(dash):
    dash.run.set(lr=1e6, momentum=0.0)
    dash.run.step(50)
    dash.tick()
    assert dash.run.status == "paused"
    assert "diverged" in dash.status.object and dash.status.alert_type == "danger"


def test_buttons_start_pause_and_close_leave_no_thread():
    dash = TrainingDashboard(Run(data="moons", device="cpu"))
    dash.start_button.clicks += 1
    assert dash.run.status == "running"
    dash.pause_button.clicks += 1
    assert dash.run.status == "paused"
    n = dash.run.steps
    assert dash.run.steps == n
    dash.close()
    assert not training_threads()
    assert not dash.feed.running


def test_each_session_gets_its_own_run():
    a, b = create_app(data="moons", device="cpu"), create_app(data="moons", device="cpu")
    da, db = a, b
    try:
        assert da.run is not db.run
        da.controls["lr"].widget.value = 0.32
        da.run.step(5)
        assert db.run.lr == Run.param.lr.default and db.run.steps == 0
    finally:
        da.close()
        db.close()


def test_displays_as_a_panel_and_as_an_ipywidget():
    import ipywidgets
    from bokeh.document import Document

    run = Run(data="moons", device="cpu")
    inline, other = TrainingDashboard(run), TrainingDashboard(run)
    try:
        root = inline.__panel__().get_root(Document())
        sources = list(root.select({"type": ColumnDataSource}))
        assert len(sources) >= 4  # the plots' sources are in the page
        widget = pn.ipywidget(other)  # a second view of the same run is a second dashboard
        assert isinstance(widget, ipywidgets.DOMWidget)
        run.step(15)
        inline.tick()
        other.tick()
        assert _rows(inline.feed._channels[0].source) == _rows(other.feed._channels[0].source) == 15
    finally:
        inline.close()
        other.close()


def test_cli_version_and_port_check():
    from trainlab import __version__

    out = subprocess.run([sys.executable, "-m", "trainlab.widgets.cli", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and __version__ in out.stdout
    bad = subprocess.run([sys.executable, "-m", "trainlab.widgets.cli", "serve", "--port", "0"],
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "--port" in bad.stderr


def test_a_dashboard_on_a_trained_run_shows_its_past_before_any_tick():
    run = Run(data="moons", device="cpu")
    run.step(120)
    dash = TrainingDashboard(run)  # no tick yet: a notebook renders the sources as they are now
    try:
        assert _rows(dash.feed._channels[0].source) == 120
        assert list(dash.feed._channels[1].source.data["step"]) == [50.0, 100.0]
        grid = dash.feed.snapshot_source("boundary")
        np.testing.assert_array_equal(grid.data["z"][0], run.history.snapshot("boundary")[1]["z"])
    finally:
        dash.close()


def test_data_and_model_options_come_from_their_registry_entries(dash):
    from trainlab import datasets, models

    assert list(dash.spec_controls["data"]) == list(datasets["moons"].params)
    assert list(dash.spec_controls["model"]) == list(models["mlp"].params)
    width = dash.spec_controls["model"]["width"].widget
    assert width.options == [2**k for k in range(1, 11)] and width.value == 128
    noise = dash.spec_controls["data"]["noise"].widget
    assert (noise.start, noise.end) == datasets["moons"].params["noise"].softbounds


def test_moving_a_model_or_data_option_rebuilds_the_run_and_keeps_it_training(dash):
    from torch import nn

    dash.run.set(lr=0.2)
    dash.start_button.clicks += 1
    dash.spec_controls["model"]["depth"].widget.value = 3
    dash.spec_controls["model"]["norm"].widget.value = "batchnorm"
    run = dash.run
    assert run.status == "running" and run.lr == 0.2
    assert sum(isinstance(m, nn.BatchNorm1d) for m in run.model.modules()) == 3
    assert [n for n in run.layers if n.startswith("fc")] == ["fc1", "fc2", "fc3"]
    dash.spec_controls["data"]["noise"].widget.value = 0.3
    assert dash.run.data.spec == ("moons", {"n": 400, "noise": 0.3, "seed": 0})
    assert dash.run.model_spec[1]["norm"] == "batchnorm"  # the model's options carried over
    assert not run._thread  # the replaced run's thread ended
    dash.run.pause()


def test_a_custom_model_has_no_option_controls():
    from torch import nn

    dash = TrainingDashboard(Run(model=nn.Sequential(nn.Linear(2, 2)), data="moons", device="cpu"))
    try:
        assert "model" not in dash.spec_controls and dash._model.value == "(your own)"
        assert "data" in dash.spec_controls
    finally:
        dash.close()


def test_the_amsgrad_checkbox_mid_run_keeps_the_run_training():
    dash = TrainingDashboard(Run(data="moons", device="cpu", optimizer="adam"))
    try:
        dash.run.step(20)
        dash.controls["amsgrad"].widget.value = True  # used to pause the run: KeyError 'max_exp_avg_sq'
        assert dash.run.step(10) == 10, dash.run.message
        dash.tick()
        assert "paused" not in dash.status.object and dash.controls["amsgrad"].widget.value is True
    finally:
        dash.close()


def test_a_rejected_value_is_shown_as_text_never_as_markup(dash):
    dash._apply("optimizer", "<img src=x onerror=alert(1)>")
    dash.tick()
    assert "<img" not in dash.status.object and "&lt;img src=x onerror=alert(1)&gt;" in dash.status.object


def test_roll_back_after_a_blow_up_from_the_dashboard():
    dash = TrainingDashboard(Run(data="digits", device="cpu", probes=[]))
    try:
        run = dash.run
        run.step(20)
        run.set(lr=10.0)  # far too large
        run.step(200)
        dash.tick()
        assert run.status == "paused" and "rolled back to step 20" in dash.status.object
        run.step(30)  # still at lr 10 after the rollback: it blows up again and rolls back again
        dash.rollback_button.clicks += 1
        assert "rolled back to step 20" in dash.status.object and run.restore_points[-1] == 20
        dash.controls["lr"].widget.value = 0.01
        assert run.step(10) == 10
    finally:
        dash.close()


def test_switching_optimizer_offers_its_usual_lr_and_marks_the_switch():
    dash = TrainingDashboard(Run(data="moons", device="cpu", lr=0.05))
    try:
        dash.run.step(5)
        assert not dash.usual_lr_button.visible  # sgd at 0.05: its usual lr
        dash.controls["optimizer"].widget.value = "lion"
        dash.run.step(3)
        dash.tick()
        assert dash.usual_lr_button.visible and "0.0001" in dash.usual_lr_button.label
        assert "lion" in dash.status.object and "usually trains with lr 0.0001" in dash.status.object
        dash.usual_lr_button.clicks += 1
        assert dash.run.lr == optimizers["lion"].meta.usual_lr
        dash.run.step(1)
        dash.tick()
        assert not dash.usual_lr_button.visible
        marks = dash.feed._channels[[ch.text for ch in dash.feed._channels].index(True)].source
        assert list(marks.data["step"]) == [6.0] and "sgd -> lion" in marks.data["text"][0]
    finally:
        dash.close()


def test_the_status_shows_the_lr_the_run_steps_with(dash):
    dash.run.set(schedule=("cosine", {"total": 10}))
    dash.run.step(5)
    dash.tick()
    lr = float(dash.status.object.split("· lr ")[1].split()[0])
    assert dash.controls["lr"].widget.value == 0.05  # the slider keeps the base lr ...
    assert lr == pytest.approx(dash.run.current_lr, rel=1e-3) and 0 < lr < 0.05  # ... the status the scheduled one


def test_the_status_warns_of_lr_zero_and_dead_units(dash):
    dash.run.set(schedule=("cosine", {"total": 5}))
    dash.run.step(8)
    dash.tick()
    assert "lr is 0" in dash.status.object and "cosine" in dash.status.object
    dash.run.set(schedule="constant")
    with torch.no_grad():
        dash.run.model.fc1.bias.fill_(-1e3)  # every first-layer ReLU silenced
    dash.run.step(50)
    dash.tick()
    assert "of act1's ReLUs are dead" in dash.status.object


def test_an_lr_set_off_the_sliders_grid_is_shown_as_it_is(dash):
    dash.run.set(lr=0.108)
    dash.tick()
    w = dash.controls["lr"].widget
    assert w.value == 0.108 and "0.108" in w.options  # not snapped to its neighbour 0.1
