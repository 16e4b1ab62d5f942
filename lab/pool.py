"""A live job's independent runs on the machine's cores: a process pool that yields results as they come.

A served lab's job runs in a thread of the dashboard's process; its short runs (μ-Transfer's one per width and
lr) are independent plain-data configurations, so they go to worker processes, one torch thread each. Not
Dask (`trainlab.sweep`): its LocalCluster takes seconds to start and a scheduler to run, which a button in
the dashboard should not; `concurrent.futures` is enough for a few dozen runs, and cancellation drops the
queued ones (a running one ends in well under a second). Workers come from a forkserver that has imported
the function's module once (spawn where there is none); never fork, since the dashboard runs threads. As for
Dask's LocalCluster, a script that calls it needs the `if __name__ == "__main__":` guard (a child imports it).
On a served lab (a `Share` installed) the default is one process: the server's cores are its sessions', and a job
holds one of its job slots, not all of them.
"""
from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from . import share
from .jobs import Progress
from .threads import available_cpus

POLL = 0.1  # seconds between two looks at the job's cancellation


def _context(module: str):
    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        # what every run needs, imported once by the server (a child forks from it) rather than once per child
        ctx.set_forkserver_preload(["torch", "trainlab.experiment", "trainlab.run", module])
        return ctx
    return mp.get_context("spawn")


def _one_thread() -> None:
    import torch

    # a run sets its own threads while it steps, but not for what it does around the steps (building, the final
    # loss): torch's default there, one thread per core in each worker, made the runs several times slower
    torch.set_num_threads(1)


def imap(fn: Callable, items: Iterable, *, workers: int | None = None, progress: Progress | None = None
         ) -> Iterator[tuple[int, Any]]:
    """(index, fn(item)) for each item, in the order they finish, on `workers` processes (default: the CPUs
    this process may use, or 1 on a served lab; 1 runs them here, in order). `fn` must be a module-level function and the items
    plain data. Stops early, dropping what is queued, once `progress` is cancelled; a run's exception is raised."""
    items = list(items)
    if workers is None:
        n = 1 if share.current() is not None else available_cpus()
    else:
        n = int(workers)
    if n < 1:
        raise ValueError(f"workers={workers!r} rejected: a whole number >= 1, or None for the machine's CPUs")
    n = min(n, len(items))
    if n <= 1:
        for i, item in enumerate(items):
            if progress is not None and progress.cancelled:
                return
            yield i, fn(item)
        return
    pool = cf.ProcessPoolExecutor(n, mp_context=_context(fn.__module__), initializer=_one_thread)
    finished = False
    try:
        futures = {pool.submit(fn, item): i for i, item in enumerate(items)}
        pending = set(futures)
        while pending:
            if progress is not None and progress.cancelled:
                return
            done, pending = cf.wait(pending, timeout=POLL, return_when=cf.FIRST_COMPLETED)
            for f in done:
                yield futures[f], f.result()
        finished = True
    finally:
        # all done: wait for the workers to exit (cheap), else the interpreter's exit finds their pipes closed and
        # prints an ignored OSError; stopped early: return at once, dropping what is queued
        pool.shutdown(wait=finished, cancel_futures=True)
