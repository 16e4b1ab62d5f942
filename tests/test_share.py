"""trainlab.share: runs take turns at training (never more than `concurrent` at once, every one progressing),
a changed setting goes to the front, the step-rate cap holds, and jobs wait for a slot."""
from __future__ import annotations

import threading
import time

import pytest
from conftest import wait_until

from trainlab import Run, share
from trainlab.jobs import Cancelled, Job


@pytest.fixture
def shared():
    def make(**kw):
        s = share.Share(**kw)
        share.install(s)
        return s
    yield make
    share.install(None)


def small_run(seed=0):
    return Run(model=("mlp", {"width": 8}), data="moons", seed=seed, probes=[], device="cpu")


def test_runs_take_turns_and_all_progress(shared):
    s = shared(concurrent=1, slice=0.01)
    runs = [small_run(i) for i in range(3)]
    most, queued = [0], [0]
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            most[0], queued[0] = max(most[0], s.training), max(queued[0], s.queued)
            time.sleep(0.001)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        for r in runs:
            r.start()
        wait_until(lambda: all(r.steps >= 50 for r in runs), 120, "every sharing run to take 50 steps")
    finally:
        stop.set()
        for r in runs:
            r.stop()
    assert most[0] == 1 and queued[0] >= 1  # one at a time, the others waiting their turn


def _queued_behind_a_holder(urgent_second):
    """One slot held; "first" (not urgent) queues, then "second" (urgent_second: a bool or a function). Returns
    the Share, the order they got their turns in, and a function releasing the holder and joining everyone."""
    s = share.Share(concurrent=1, slice=5)
    order, holder_in, release = [], threading.Event(), threading.Event()

    def hold():
        with s.turn("holder"):
            holder_in.set()
            release.wait(30)

    def wait_for(name, urgent):
        with s.turn(name, urgent=urgent):
            order.append(name)

    threads = [threading.Thread(target=hold)]
    threads[0].start()
    holder_in.wait(30)
    for name, urgent in (("first", False), ("second", urgent_second)):
        threads.append(threading.Thread(target=wait_for, args=(name, urgent)))
        threads[-1].start()
        wait_until(lambda n=len(threads) - 1: s.queued == n, 30, f"{name} to queue")

    def finish() -> None:
        release.set()
        for t in threads:
            t.join(30)

    return s, order, finish


def test_a_changed_setting_goes_to_the_front():
    s, order, finish = _queued_behind_a_holder(True)
    assert s.waiting("second") == 0 and s.waiting("first") == 1
    finish()
    assert order == ["second", "first"]


def test_a_run_whose_setting_changes_while_it_waits_goes_next():
    changed = threading.Event()
    s, order, finish = _queued_behind_a_holder(changed.is_set)
    assert s.waiting("second") == 1  # nothing changed yet: behind the first
    changed.set()  # its setting changed (Run._dirty) while it waited
    wait_until(lambda: s.waiting("second") == 0, 30, "the changed run to move to the front")
    finish()
    assert order == ["second", "first"]


def test_the_step_rate_cap_holds(shared):
    shared(concurrent=2, slice=0.02, max_rate=200)
    run = small_run()
    run.start()
    try:
        t0 = time.perf_counter()
        wait_until(lambda: run.steps >= 100, 120, "100 capped steps")
        elapsed = time.perf_counter() - t0
    finally:
        run.stop()
    assert run.steps <= 200 * (time.perf_counter() - t0) + 10
    assert elapsed >= 100 / 200 * 0.8  # no faster than the cap, whatever the machine


def test_jobs_wait_for_a_slot_and_can_be_cancelled_while_waiting(shared):
    shared(jobs=1)
    gate, spans = threading.Event(), []

    def work(name, progress):
        spans.append((name, "start"))
        if name == "first":
            gate.wait(30)
        spans.append((name, "end"))
        return name

    first = Job(work, "first")
    wait_until(lambda: spans == [("first", "start")], 30, "the first job to start")
    second, third = Job(work, "second"), Job(work, "third")
    wait_until(lambda: "waiting" in second.progress.desc and "waiting" in third.progress.desc, 30, "both to wait")
    third.cancel()
    wait_until(lambda: third.done, 30, "the cancelled job to end")
    assert isinstance(third.error, Cancelled) and ("third", "start") not in spans
    gate.set()
    assert first.wait(30) == "first" and second.wait(30) == "second"
    assert spans == [("first", "start"), ("first", "end"), ("second", "start"), ("second", "end")]


def test_bad_shares_are_refused():
    for kw, name in (({"concurrent": 0}, "concurrent"), ({"jobs": True}, "jobs"), ({"slice": 0}, "slice"),
                     ({"max_rate": -1}, "max_rate")):
        with pytest.raises(ValueError, match=name):
            share.Share(**kw)


def test_a_model_past_the_servers_cap_is_refused(shared):
    shared(max_params=1000)
    with pytest.raises(ValueError, match=r"--max-params"):
        Run(model=("mlp", {"width": 64}), data="digits")
    assert Run(model=("mlp", {"width": 8}), data="moons").steps == 0


def test_a_huge_model_is_refused_before_it_is_allocated(shared):
    shared(max_params=10_000)
    with pytest.raises(ValueError, match=r"401,520,010 parameters"):  # 20k x 20k: 1.6 GB were it built
        Run(model=("mlp", {"width": 20_000, "depth": 2}), data="digits")


def test_contending_counts_the_runs_asking_for_turns():
    s = share.Share(concurrent=1)
    for name in ("a", "b", "c"):
        with s.turn(name):
            pass
    assert s.contending() == 3 and s.contending(within=0) == 0
