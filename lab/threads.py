"""How many torch threads a run trains with: the CPUs this process may use, and 1 for small models.

torch's default is one intra-op thread per core it sees. Small models gain nothing from more, and
on a busy or CPU-limited machine they lose an order of magnitude (measured on a loaded 2-core
machine: 300 steps of the default xor MLP took 34 s on torch's 2 threads, 3.6 s on 1; see
benchmarks/threads.py). Containers (Binder) often report the host's cores while their CPU quota
allows one or two, so the count comes from the affinity mask and the cgroup quota, not os.cpu_count().
"""
from __future__ import annotations

import math
import os

# below this many multiply-adds a step (parameters x batch size), one thread is the fastest choice:
# a step is then tens of microseconds of work per layer, less than waking a second thread costs
SMALL_STEP = 2**24


def available_cpus() -> int:
    """CPUs this process may run on: its affinity mask, capped by a cgroup CPU quota (v2 or v1)."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    quota = cgroup_quota()
    return max(1, min(n, math.ceil(quota))) if quota else max(1, n)


def cgroup_quota(root: str = "/sys/fs/cgroup") -> float | None:
    """The cgroup's CPU limit in CPUs (v2 cpu.max, or v1 cpu.cfs_quota_us / cpu.cfs_period_us), None if unlimited."""
    try:
        with open(os.path.join(root, "cpu.max")) as f:
            quota, period = f.read().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        with open(os.path.join(root, "cpu", "cpu.cfs_quota_us")) as f:
            quota = int(f.read())
        with open(os.path.join(root, "cpu", "cpu.cfs_period_us")) as f:
            period = int(f.read())
        return None if quota <= 0 else quota / period
    except (OSError, ValueError):
        return None


def choose(threads: int | str, parameters: int, batch_size: int) -> int:
    """The thread count for a run: `threads` if a number, else ("auto") 1 for small steps and the
    available CPUs for large ones."""
    if threads == "auto":
        return 1 if parameters * batch_size < SMALL_STEP else available_cpus()
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads={threads!r} rejected: 'auto' or a whole number >= 1 "
                         f"(this process may use {available_cpus()} CPUs)")
    return threads


if __name__ == "__main__":  # `python lab/threads.py`: the count for OMP_NUM_THREADS (binder/start), without importing torch
    print(available_cpus())
