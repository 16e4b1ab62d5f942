"""The dashboard's Sweeps tab: a preset started from it draws its results as they arrive, on the process's
one shared cluster, holding a job slot of the server's Share; refused when the slots are held; closing the
session cancels its sweep."""
from __future__ import annotations

import math

import pytest
from conftest import wait_until

from trainlab import share
from trainlab.share import Share
from trainlab.sweeps import shared
from trainlab.widgets import SweepLab


@pytest.fixture
def served():
    """A Share installed as `trainlab serve` does (2 job slots); the shared cluster closed afterwards."""
    old = share.install(Share(jobs=2))
    yield share.current()
    share.install(old)
    shared.close()


def _ticks_until(lab, cond, timeout, what):
    return wait_until(lambda: (lab._tick(), cond())[1], timeout, what, every=0.1)


def test_refused_while_the_servers_job_slots_are_held(served):
    held = [served.try_job(), served.try_job()]
    assert all(held) and served.try_job() is None
    lab = SweepLab()
    lab.options.steps = 5
    lab.start()
    assert lab.start_button.disabled  # starting: a second press does nothing
    _ticks_until(lab, lambda: "Not started" in lab.message, 30, "the refusal")
    assert "at most 2 sweeps and analyses at once" in lab.message and "--max-jobs" in lab.message
    assert lab.sweep is None and not shared._cluster  # nothing started, no cluster
    assert not lab.start_button.disabled
    for release in held:
        release()
    assert served.try_job() is not None


def test_bad_options_are_refused_naming_the_setting(served):
    lab = SweepLab(preset="lr_optimizer")
    with pytest.raises(ValueError, match="steps"):
        lab.options.steps = 0  # the preset's declared bounds
    lab.options.optimizers = ["sgd", "nosuch"]
    lab.start()
    _ticks_until(lab, lambda: "Not started" in lab.message, 30, "the refusal")
    assert "unknown optimizer 'nosuch'" in lab.message and lab.sweep is None
    assert not shared._cluster and _all_free(served)  # checked before any cluster started; the slot given back


@pytest.mark.slow
def test_a_preset_started_from_the_tab_draws_live_and_closing_cancels_it(served):
    lab = SweepLab(preset="lr_optimizer")
    lab.options.param.update(steps=400, optimizers=["sgd", "adam"])
    lab.start()
    _ticks_until(lab, lambda: lab.panel is not None and len(lab.panel.lines.data["row"]) >= 2, 240,
                 "two results drawn")
    sw, panel = lab.sweep, lab.panel
    assert not _all_free(served)  # the sweep holds a slot while it runs
    metric = panel.lines.data["metric"]
    assert all(math.isfinite(v) and v > 0 for v in metric)  # val_loss values, not an empty canvas
    drawn = set(panel.lines.data["row"])
    frame = sw.results()
    assert set(frame.loc[frame["status"] == "finished", "index"]) >= drawn
    assert panel.settings == ["optimizer", "lr"] and "/18 done" in lab.info.object and "results" in panel.status.object
    lab.close()  # the session ended
    sw.wait(120)
    frame = sw.results()
    assert sorted(frame["index"]) == list(range(18)) and frame["status"].isin(["finished", "cancelled"]).all()
    assert (frame["status"] == "cancelled").any(), frame[["status", "steps"]]
    wait_until(lambda: _all_free(served), 30, "the sweep's slot released")


def _all_free(shared_: Share) -> bool:
    taken = [shared_.try_job() for _ in range(shared_.job_slots)]
    for release in filter(None, taken):
        release()
    return all(taken)
