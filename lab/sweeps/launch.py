"""`trainlab.sweep(...)`: check every configuration, connect to the cluster, start the Sweep."""
from __future__ import annotations

import os
import re
import time
from typing import Any

from ..registry import number
from .config import check, expand, flatten, refs, seed_list
from .monitor import Grid, Sweep

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


def sweep(base: dict[str, Any], grid: dict[str, list] | None = None, *, samples: int | None = None,
          space: dict[str, Any] | None = None, seeds: list[int] | None = None, steps: int | None = None,
          scheduler: Any = None, workers: int | None = None, store: Any = None, retries: int = 0,
          name: str | None = None, sampler: Any = "tpe", storage: Any = None, objective: str = "val_loss",
          report_every: float = 0.5, timeout: float = 5.0) -> Sweep:
    """Train every configuration of a grid (or `samples` drawn by Optuna) on Dask; returns the running Sweep.

    `base` holds one run's settings: Run's keyword arguments (model, data, optimizer, lr, batch_size,
    schedule, pruning, the optimizer's hyperparameters, ...; a spec as (name, {options}) or as dotted names,
    "model.width") and `steps`. `grid` maps setting names to lists of values: every combination runs, once
    per seed of `seeds`. Or `samples=N` with `space` (see `trainlab.sweeps.space`): N configurations asked
    of an Optuna study (`sampler`: "tpe", "random", "qmc", "gp" or (name, {options}); `storage`: None in
    memory, or a journal file path) that minimizes or maximizes `objective`.

    Every configuration is checked before anything starts: a bad one raises ValueError naming the
    configuration and the setting. `scheduler=None` starts a LocalCluster of `workers` single-threaded
    processes (default: this machine's CPUs), closed when the sweep ends; "shared" the process's one LocalCluster,
    kept for later sweeps (a served lab's, `trainlab.sweeps.shared`); an address ("tcp://host:8786"),
    a distributed.Client or a cluster object runs the same sweep there (an address that does not answer
    within `timeout` s raises ConnectionError). `store` (a trainlab.store.Store, or its folder) receives
    each finished run as "<name>-<index>". A run whose worker dies fails (reported within seconds), or is
    tried again `retries` times.
    """
    if grid is not None and samples is not None:
        raise ValueError("give grid= or samples= (with space=), not both")
    if grid is None and samples is None:
        raise ValueError("nothing to sweep: give grid={'lr': [0.01, 0.1], ...} or samples=N with space={...}")
    base = flatten(base)
    if steps is not None:
        if "steps" in base:
            raise ValueError(f"steps given twice: steps={steps!r} and base['steps']={base['steps']!r}")
        base["steps"] = steps
    retries = number(retries, "retries", integer=True, what="the sweep")
    if retries < 0:
        raise ValueError(f"retries={retries} rejected: a whole number >= 0")
    report_every = number(report_every, "report_every", integer=False, what="the sweep")
    if not report_every > 0:
        raise ValueError(f"report_every={report_every} rejected: seconds > 0")
    name = _name(name)
    if grid is not None:
        configs, columns = expand(base, grid, seeds)
        source, study, checked = Grid(configs), None, [c for c, _ in configs]
    else:
        source, study, columns, checked = _study(base, samples, space, seeds, sampler, storage, objective, name)
    store = _store(store)

    from .cluster import check_workers, connect

    client, cluster, own = connect(scheduler, workers, timeout)
    try:
        check_workers(client, refs(checked))
        parallel = sum(client.nthreads().values()) or 1
        if study is not None:
            source.slots = max(1, -(-parallel // len(source.seeds)))
    except BaseException:
        if own:
            client.close()
        if cluster is not None:
            cluster.close()
        raise
    return Sweep(source, columns, client, cluster=cluster, own_client=own, store=store, name=name, retries=retries,
                 report_every=report_every, study=study)


def _name(name: str | None) -> str:
    if name is None:
        return time.strftime("sweep-%Y%m%d-%H%M%S-") + os.urandom(2).hex()
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"name={name!r} rejected: letters, digits, '_', '-' and '.', starting with a letter or "
                         f"digit (it names the runs in the store)")
    return name


def _store(store: Any) -> Any:
    """A store the workers can use: a Store-like object (with save(run, name)), sent to them as it is, or a
    folder's path, sent as its absolute path."""
    if store is None:
        return None
    if isinstance(store, (str, os.PathLike)):
        root = os.path.abspath(os.fspath(store))  # the workers' working folder may differ from ours
        if os.path.isfile(root):
            raise ValueError(f"store={os.fspath(store)!r} is a file: a store is a folder (created if missing)")
        try:
            from ..store import Store
        except ImportError:
            raise ValueError("store= as a path needs trainlab.store; pass an object with save(run, name)") from None
        Store(root)  # its own checks, here and now; each worker opens the folder itself
        return root
    if not callable(getattr(store, "save", None)):
        raise ValueError(f"store={store!r} rejected: a trainlab.store.Store (or an object with save(run, name)), "
                         f"or a folder's path")
    from distributed.protocol.pickle import dumps

    try:
        dumps(store)
    except Exception as e:
        raise ValueError(f"store={store!r} cannot be sent to the workers ({type(e).__name__}: {e})") from None
    return store


def _study(base, samples, space, seeds, sampler, storage, objective, name):
    from .space import OBJECTIVES, Study, as_sampler, as_storage, distributions

    samples = number(samples, "samples", integer=True, what="the sweep")
    if samples < 1:
        raise ValueError(f"samples={samples} rejected: a whole number >= 1")
    if objective not in OBJECTIVES:
        raise ValueError(f"objective={objective!r} rejected: one of {', '.join(OBJECTIVES)}")
    try:
        check(base)
    except ValueError as e:
        raise ValueError(f"base: {e}") from None
    seed_values = seed_list(seeds, base, "seed" in (space or {}))
    dists = distributions(base, space)
    import optuna

    study = optuna.create_study(storage=as_storage(storage), sampler=as_sampler(sampler), study_name=name,
                                direction=OBJECTIVES[objective], load_if_exists=storage is not None)
    source = Study(study, base, dists, seed_values, samples, objective, parallel=1)
    return source, study, list(space), [base]

