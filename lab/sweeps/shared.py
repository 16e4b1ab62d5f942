"""Sweeps started from a served lab: one LocalCluster for the whole server process, a job slot per sweep.

`trainlab serve` has many sessions in one process. Each starting its own LocalCluster would start a set of
worker processes per person; instead the first sweep starts one cluster (`cluster.connect`'s, sized to the
server's job slots and CPUs), which every later sweep of the process shares until it exits. A sweep holds
one of the installed `Share`'s job slots from its start to its end, as a landscape or a Hessian does, so
the server's `--max-jobs` limit counts sweeps too; with every slot held, `start` refuses, saying so. Without a
Share (a notebook, a script) there is no limit.
"""
from __future__ import annotations

import atexit
import threading
from typing import Any

from .. import share
from ..threads import available_cpus

_lock = threading.Lock()
_cluster: dict[str, Any] = {}


def client():
    """The process's shared cluster's Client, the cluster started on first use (tens of seconds on a busy machine)."""
    from .cluster import connect

    with _lock:
        if "client" not in _cluster:
            shared = share.current()
            workers = max(1, min(available_cpus(), shared.job_slots if shared is not None else available_cpus()))
            c, cluster, _ = connect(None, workers)
            _cluster.update(client=c, cluster=cluster)
            atexit.register(close)
        return _cluster["client"]


def close() -> None:
    """Close the shared cluster (at exit; a later sweep would start another)."""
    with _lock:
        c, cluster = _cluster.pop("client", None), _cluster.pop("cluster", None)
    for obj in (c, cluster):
        if obj is not None:
            try:
                obj.close()
            except Exception:  # at exit the loop may be gone already: nothing left to release
                pass


def start(**kwargs):
    """`trainlab.sweep(**kwargs)` on the shared cluster, holding a job slot of the installed Share until it ends;
    RuntimeError, with nothing started, when every slot is held."""
    from .launch import sweep

    shared = share.current()
    release = None
    if shared is not None:
        release = shared.try_job()
        if release is None:
            raise RuntimeError(f"this server runs at most {shared.job_slots} sweeps and analyses at once (trainlab "
                               f"serve --max-jobs) and all are busy; try again when one ends")
    try:
        sw = sweep(**kwargs, scheduler="shared")  # every configuration checked before the cluster starts
    except BaseException:
        if release is not None:
            release()
        raise
    if release is not None:
        threading.Thread(target=lambda: (sw.wait(), release()), name="trainlab-sweep-slot", daemon=True).start()
    return sw
