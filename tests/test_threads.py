"""Torch threads: chosen from the CPUs this process may use, 1 for small models, set on the training thread only."""
from __future__ import annotations

import os

import pytest
import torch
from conftest import small_run, wait_until

from trainlab import threads


@pytest.mark.parametrize("files, quota", [
    ({"cpu.max": "150000 100000\n"}, 1.5),                             # cgroup v2, 1.5 CPUs
    ({"cpu.max": "max 100000\n"}, None),                               # v2, unlimited
    ({"cpu/cpu.cfs_quota_us": "200000", "cpu/cpu.cfs_period_us": "100000"}, 2.0),  # v1
    ({"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000"}, None),     # v1, unlimited
    ({}, None),                                                        # no cgroup files at all
])
def test_the_cgroup_quota_is_read_in_cpus(tmp_path, files, quota):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert threads.cgroup_quota(str(tmp_path)) == quota


def test_available_cpus_is_the_affinity_capped_by_the_quota(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5, 6, 7})
    monkeypatch.setattr(threads, "cgroup_quota", lambda: 1.5)  # a container allowed 1.5 of 8 visible cores
    assert threads.available_cpus() == 2
    monkeypatch.setattr(threads, "cgroup_quota", lambda: None)
    assert threads.available_cpus() == 8


def test_auto_is_one_thread_for_small_models_and_the_cpus_for_large(monkeypatch):
    monkeypatch.setattr(threads, "available_cpus", lambda: 6)
    assert threads.choose("auto", parameters=26_000, batch_size=64) == 1
    assert threads.choose("auto", parameters=10_000_000, batch_size=64) == 6
    assert threads.choose(3, parameters=10, batch_size=1) == 3
    for bad in (0, -1, 1.5, True, "many"):
        with pytest.raises(ValueError, match="threads="):
            threads.choose(bad, 10, 1)


def test_a_run_trains_on_its_threads_and_leaves_the_callers_alone():
    seen = []

    class Count(__import__("trainlab").Probe):
        def measure(self, run):
            seen.append(torch.get_num_threads())
            return {}

    before = torch.get_num_threads()
    run = small_run(threads=2, probes=[Count(every=1)])
    assert run.threads == 2 and small_run().threads == 1  # auto: a small model gets one
    run.step(2)
    assert seen == [2, 2] and torch.get_num_threads() == before  # set for step() only
    run.start()
    wait_until(lambda: len(seen) >= 5, 60, "steps in the background")
    run.stop()
    assert set(seen) == {2} and torch.get_num_threads() == before
    with pytest.raises(ValueError, match="threads="):
        small_run(threads=0)
