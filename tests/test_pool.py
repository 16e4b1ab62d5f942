"""trainlab.pool: a live job's runs on worker processes, the same rows as one after another, and cancellable."""
from __future__ import annotations

import time

import pytest

from trainlab.analysis.transfer import configurations, run_config
from trainlab.jobs import Progress
from trainlab.pool import imap


def _configs(n_lrs: int = 3):
    return configurations("mlp", widths=(8, 16), lrs=[0.01 * 2**k for k in range(n_lrs)], parametrizations=("sp",),
                          base_width=8, data="moons", optimizer="sgd", steps=5)


@pytest.mark.slow
def test_two_workers_give_the_rows_one_process_gives_and_cancel_drops_the_rest():
    configs = _configs()
    here = [run_config(c) for c in configs]
    there = dict(imap(run_config, configs, workers=2))
    assert sorted(there) == list(range(len(configs)))
    assert [there[i] for i in range(len(configs))] == here  # one torch thread each: the very same losses

    p = Progress(len(configs) * 4)
    got, t = [], time.perf_counter()
    for i, row in imap(run_config, _configs(12), workers=2, progress=p):
        got.append(i)
        p.cancel()
    assert len(got) < 24 and time.perf_counter() - t < 60


def test_one_worker_runs_here_in_order_and_workers_are_checked():
    p = Progress(3)
    out = []
    for i, row in imap(run_config, _configs(), workers=1, progress=p):
        out.append(i)
        if i == 1:
            p.cancel()
    assert out == [0, 1]
    with pytest.raises(ValueError, match="workers=0"):
        list(imap(run_config, _configs(), workers=0))


def test_a_served_lab_runs_a_jobs_configurations_in_its_own_process(monkeypatch):
    import trainlab.pool as pool
    from trainlab.share import Share, install

    made = []
    monkeypatch.setattr(pool.cf, "ProcessPoolExecutor", lambda *a, **k: made.append(a) or pytest.fail("a pool"))
    monkeypatch.setattr(pool, "available_cpus", lambda: 4)
    old = install(Share(concurrent=2, jobs=2))
    try:
        assert [i for i, _ in imap(run_config, _configs(2))] == [0, 1, 2, 3]  # in order: here, one after another
    finally:
        install(old)
    assert made == []
