"""Where a sweep runs: an embedded LocalCluster over this machine's cores, or an existing Dask cluster.

The embedded cluster has one single-threaded worker process per core (a run per core, torch's threads at
1) and `allowed-failures=0`: a run that loses its worker fails at once instead of being retried by Dask
three times over about a minute (the sweep retries it itself if asked). An existing cluster keeps its own
settings; the sweep watches its workers leave instead (see `Sweep`). Either way, before anything is
submitted the workers are asked to import trainlab and the user's own modules, so a model class they
cannot import is refused up front, naming the worker.
"""
from __future__ import annotations

import logging
import threading
import warnings
from typing import Any, Callable

from ..threads import available_cpus


# The embedded cluster's settings. Beside allowed-failures, each drops a periodic callback's cost for a view this
# cluster does not show: measured idle, the scheduler, two nannies and two workers took 85 ms CPU a second
# together (a 5 s sweep on 2 cores: ~4 % of their time), 20-30 ms with these.
QUIET = {
    "distributed.scheduler.allowed-failures": 0,
    # the statistical profiler walks the running run's stack every 10 ms on the worker's event loop (taking the
    # GIL from the training thread) for a dashboard this cluster does not start
    "distributed.worker.profile.enabled": False,
    # each server's loop-health tick, 50 a second by default: it only feeds the "event loop unresponsive" warning
    "distributed.admin.tick.interval": "1s",
    # CPU, memory and network counters for the dashboard, every 0.5 s by default
    "distributed.admin.system-monitor.interval": "2s",
    # each nanny's and worker's look at the worker's memory (its limit, spilling), 10 a second by default: twice
    # a second still stops a run that outgrows its worker's memory well before the machine runs out
    "distributed.worker.memory.monitor-interval": "500ms",
    # the LocalCluster's widget text, asked of the scheduler every 0.5 s by default; no widget is shown
    "distributed.deploy.cluster-repr-interval": "1h",
}


def connect(scheduler: Any = None, workers: int | None = None, timeout: float = 5.0):
    """(client, cluster we own or None, client we own?) for a scheduler address, Client, cluster object or None."""
    import dask
    from distributed import Client, LocalCluster

    if scheduler is None:
        n = available_cpus() if workers is None else workers
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"workers={workers!r} rejected: a whole number >= 1 (this machine has {available_cpus()} CPUs)")
        with dask.config.set(QUIET):
            try:
                # no dashboard (it would import Bokeh); the scheduler's HTTP routes (health, metrics) on any
                # free loopback port, not on 8787, which another cluster may hold
                cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None,
                                       scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
                                       silence_logs=logging.ERROR)
            except RuntimeError as e:
                raise RuntimeError(f"the local cluster's workers failed to start ({e}). In a script, start the sweep "
                                   f"under `if __name__ == '__main__':`: each worker is a new process that imports "
                                   f"your script") from e
        try:
            return Client(cluster), cluster, True
        except BaseException:
            cluster.close()
            raise
    if workers is not None:
        raise ValueError("workers= sizes the embedded local cluster; an existing cluster has its own workers")
    if isinstance(scheduler, str) and scheduler == "shared":  # the process's one cluster (a served lab's sessions)
        from .shared import client

        return client(), None, False
    if isinstance(scheduler, Client):
        return scheduler, None, False
    if hasattr(scheduler, "scheduler_address"):  # a cluster object (LocalCluster, a dask-jobqueue cluster, ...)
        return Client(scheduler), None, True
    if not isinstance(scheduler, str):
        raise ValueError(f"scheduler={scheduler!r} rejected: None (a local cluster), \"shared\" (this process's shared "
                         f"local cluster), an address such as "
                         f"'tcp://host:8786', a distributed.Client or a cluster object")
    try:
        client = Client(scheduler, timeout=timeout)
    except (OSError, TimeoutError, ValueError) as e:
        raise ConnectionError(f"no Dask scheduler answers at {scheduler!r} within {timeout:g} s "
                              f"({type(e).__name__}: {e}). Start one with `dask scheduler` and workers with "
                              f"`dask worker {scheduler}`, or leave scheduler=None for a local cluster; "
                              f"nothing was started") from None
    try:
        client.wait_for_workers(1, timeout=timeout)
    except TimeoutError:
        client.close()
        raise ConnectionError(f"the Dask scheduler at {scheduler!r} has no workers (none joined within "
                              f"{timeout:g} s): start some with `dask worker {scheduler}`; nothing was started") from None
    return client, None, True


def _probe(refs: list[tuple[str, str]]) -> dict[str, Any]:
    """On a worker: import trainlab's task (torch with it, so the first run does not pay for it) and each ref."""
    import trainlab
    from trainlab.sweeps import task  # noqa: F401
    from trainlab.sweeps.config import resolve

    failed = {}
    for what, ref in refs:
        try:
            resolve(ref, what)
        except ValueError as e:
            failed[ref] = str(e)
    return {"version": trainlab.__version__, "failed": failed}


def _probe_scheduler() -> str:
    import trainlab

    return trainlab.__version__


def check_workers(client, refs: list[tuple[str, str]]) -> None:
    """Refuse (ValueError, naming the worker) when a worker cannot import trainlab or one of the user's modules,
    or the scheduler cannot import trainlab (it unpickles each task, so it needs the module of the function)."""
    from .. import __version__

    try:
        client.run_on_scheduler(_probe_scheduler)
    except Exception as e:
        raise ValueError(f"the Dask scheduler cannot import trainlab ({type(e).__name__}: {e}); it unpickles the "
                         f"sweep's tasks, so it needs trainlab installed like the workers; nothing was started") from None
    answers = client.run(_probe, refs, on_error="return")
    for worker, answer in answers.items():
        if isinstance(answer, BaseException):
            raise ValueError(f"worker {worker} cannot run trainlab's sweep tasks ({type(answer).__name__}: {answer}); "
                             f"install trainlab in the workers' environment; nothing was started")
        for ref, error in answer["failed"].items():
            raise ValueError(f"worker {worker} cannot import {ref!r}: {error}. The workers import your model or "
                             f"data by its module's name: install that module there or add its folder to their "
                             f"PYTHONPATH; nothing was started")
        if answer["version"] != __version__:
            warnings.warn(f"worker {worker} runs trainlab {answer['version']}, this process {__version__}",
                          stacklevel=3)


# One "all" subscription per client (Dask keeps a single handler per topic), shared by its sweeps.
_watchers: dict[int, tuple[Any, dict[str, Callable[[str], None]]]] = {}
_watch_lock = threading.Lock()


def watch_workers(client, uid: str, fn: Callable[[str], None]) -> None:
    """Call fn(worker address) whenever the scheduler removes a worker (it died or was retired)."""
    with _watch_lock:
        if id(client) not in _watchers:
            handlers: dict[str, Callable[[str], None]] = {}

            def dispatch(event) -> None:
                msg = event[1]
                if isinstance(msg, dict) and msg.get("action") == "remove-worker":
                    for f in list(handlers.values()):
                        f(msg.get("worker"))

            client.subscribe_topic("all", dispatch)
            _watchers[id(client)] = (client, handlers)
        _watchers[id(client)][1][uid] = fn


def unwatch_workers(client, uid: str) -> None:
    with _watch_lock:
        entry = _watchers.get(id(client))
        if entry is None:
            return
        entry[1].pop(uid, None)
        if not entry[1]:
            del _watchers[id(client)]
            client.unsubscribe_topic("all")
