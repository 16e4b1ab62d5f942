"""Long computations (progress, cancel, background jobs) and instruments added to a live run."""
from __future__ import annotations

import time

import pytest
import torch

import trainlab
from conftest import wait_until
from trainlab.jobs import Cancelled, Job, Progress, as_progress


def _count(n, progress=True, pause=0.0):
    p = as_progress(progress, n, "counting")
    done = []
    for i in range(n):
        if p.cancelled:
            break
        time.sleep(pause)
        done.append(i)
        p.update()
    p.close()
    return done


def test_progress_counts_and_restarts():
    p = Progress()
    assert as_progress(p, 4, "a") is p and p.total == 4 and p.done == 0
    _count(4, progress=p)
    assert p.done == 4 and p.fraction == 1.0
    as_progress(p, 10, "b")  # a second analysis on the same Progress starts over
    assert (p.done, p.total, p.desc) == (0, 10, "b")


def test_tqdm_bar_only_when_asked(capsys):
    assert as_progress(False, 3, "x")._bar is None
    bar = as_progress(True, 3, "x")
    assert bar._bar is not None and bar._bar.total == 3
    bar.close()


def test_job_returns_result_and_reports_progress():
    job = Job(_count, 5)
    assert job.wait(10) == [0, 1, 2, 3, 4]
    assert job.done and job.progress.done == 5 and job.error is None


def test_job_cancel_keeps_what_was_computed():
    job = Job(_count, 1000, pause=0.005)
    wait_until(lambda: job.progress.done >= 3, 30, "the job to count to 3", every=0.001)
    job.cancel(wait=10)
    assert job.done and job.cancelled
    assert 3 <= len(job.result) < 1000  # the partial result survives


def test_job_error_is_kept_and_reraised():
    def fails(progress):
        raise Cancelled("stopped by the user")

    job = Job(fails)
    with pytest.raises(Cancelled, match="stopped by the user"):
        job.wait(10)
    assert isinstance(job.error, Cancelled)


class _Counter(trainlab.Probe):
    def measure(self, run):
        return {"counted": run.steps}


def test_probe_added_and_removed_while_training():
    run = trainlab.Run(data="moons", probes=[])
    run.step(2)
    probe = run.add_probe(_Counter(every=1))
    run.start()
    wait_until(lambda: run.steps >= 20, 60, "20 steps in the background", every=0.005)
    run.remove_probe(probe)
    seen = run.steps
    wait_until(lambda: run.steps >= seen + 20, 60, "20 more steps", every=0.005)
    run.stop()
    df = run.history.frame().set_index("step")
    assert df["counted"].isna()[[1, 2]].all()  # before it was added
    measured = df["counted"].dropna()
    assert (measured.index == measured.values).all() and len(measured) >= 10
    assert df["counted"].loc[seen + 2 :].isna().all()  # after it was removed
    with pytest.raises(ValueError, match="trainlab.Probe"):
        run.add_probe(lambda r: {})


def test_model_copy_is_independent_of_training():
    run = trainlab.Run(data="moons")
    copy = run.model_copy()
    before = [p.detach().clone() for p in copy.parameters()]
    run.step(5)
    assert all(torch.equal(a, b) for a, b in zip(before, copy.parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(before, run.model.parameters()))


def _counting(run, *, progress, n, pause=0.0):
    """A live analysis in the shape of trainlab.live's: results as {snapshot name: value}."""
    return {"counted": _count(n, progress=progress, pause=pause)}


def test_a_panel_runs_one_job_per_slot_publishes_it_and_cancels_it_on_close():
    from trainlab.widgets.base import LabPanel

    run = trainlab.Run(data="moons", probes=[])
    panel = LabPanel(run)
    button = __import__("panel").widgets.Button(label="count")
    slot = panel.job_slot("count", "Counting", [button])
    first = panel.run_job(_counting, "count", n=3)
    first.wait(10)
    assert run.history.snapshot("counted") == (0, [0, 1, 2])  # published at the step the job started
    panel.feed.tick()
    assert slot.status.object == "Counting: done" and not button.disabled
    slow = panel.run_job(_counting, "count", n=10_000, pause=0.005)
    assert panel.run_job(_counting, "count", n=1) is slow  # one at a time in a slot
    assert slot.job is slow  # the finished one (and its result) is not kept
    panel.feed.tick()
    assert button.disabled and slot.bar.visible and not slot.cancel_button.disabled
    panel.close()
    slow.wait(10)
    assert slow.cancelled
    assert run.history.snapshot("counted")[1] != list(range(10_000))
