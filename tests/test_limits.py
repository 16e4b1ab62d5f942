"""A served lab's limits: the session cap says the lab is full, an idle run is paused, bad flags are refused."""
from __future__ import annotations

import panel as pn
import pytest
from conftest import wait_until

from trainlab import Run, share
from trainlab.widgets import app as app_module
from trainlab.widgets.app import Limits, create_app
from trainlab.widgets.cli import main
from trainlab.widgets.dashboard import TrainingDashboard


def test_past_the_session_limit_the_page_says_the_lab_is_full(monkeypatch):
    monkeypatch.setattr(app_module, "_LIVE", {})
    limits = Limits(sessions=2)
    made = [create_app(limits, model=("mlp", {"width": 8}), data="moons") for _ in range(2)]
    try:
        assert all(isinstance(d, TrainingDashboard) for d in made)
        full = create_app(limits)
        assert isinstance(full, pn.pane.Alert) and "full" in full.object and "2 people" in full.object
    finally:
        for d in made:
            d.close()


def test_an_idle_run_is_paused_and_says_why():
    dashboard = TrainingDashboard(Run(model=("mlp", {"width": 8}), data="moons"), idle_timeout=0.2)
    try:
        dashboard.run.start()
        wait_until(lambda: dashboard.run.steps > 0, 60, "the run to train")
        wait_until(lambda: (dashboard._refresh(), dashboard.run.status)[1] == "paused", 60, "the idle pause")
        assert "nobody has used this page" in dashboard.status.object
        dashboard.touch()
        dashboard.run.start()
        dashboard._refresh()
        assert dashboard.run.status == "running"
    finally:
        dashboard.close()


def test_the_status_says_when_runs_take_turns_and_how_many_step_at_a_time():
    old = share.install(Limits(training=1).share())
    boards = [TrainingDashboard(Run(model=("mlp", {"width": 8}), data="moons", device="cpu")) for _ in range(2)]
    try:
        assert boards[0]._sharing() == ""  # not running: nothing to say
        for d in boards:
            d.run.start()
        wait_until(lambda: "2 runs take turns: on this server one run steps at a time" in boards[0]._sharing(),
                   what="both runs asked for turns")
        assert Limits().training == 1  # the default: one at a time
    finally:
        for d in boards:
            d.close()
        share.install(old)


def test_the_share_follows_the_limits():
    s = Limits(training=3, steps_per_second=50, jobs=1, params=1234).share()
    assert (s.concurrent, s.max_rate, s.job_slots, s.max_params) == (3, 50, 1, 1234)
    assert share.current() is None  # making one installs nothing


@pytest.mark.parametrize("flags, says", [(["--max-sessions", "0"], "--max-sessions"),
                                         (["--max-steps-per-second", "0"], "--max-steps-per-second"),
                                         (["--oauth-provider", "github"], "--cookie-secret")])
def test_bad_limits_are_refused_by_name(flags, says, capsys):
    with pytest.raises(SystemExit):
        main(["serve", *flags])
    assert says in capsys.readouterr().err
