"""Search beyond grids with Optuna: the space from the registries' declared parameters, samplers by name.

`space` maps a setting to "auto" (its declared range: the softbounds a slider offers, on a log scale for a
LogNumber/LogInteger, a Selector's choices), to {"low": .., "high": .., "log": .., "step": ..} (a range of
your own, checked against the declared bounds), or to a list of values (a categorical choice). Trials are
asked for and told through Optuna's ask-and-tell interface, a few in flight at a time, so the sampler
learns from the runs that have ended while the cluster stays busy.
"""
from __future__ import annotations

import math
from typing import Any

import param

from ..optimizers import optimizers
from ..registry import LogInteger, LogNumber, Registry
from ..run import Run
from .config import DEFAULTS, SPECS, check, describe, flatten, is_ref

samplers = Registry("sampler")
_SEED = dict(seed=param.Integer(0, bounds=(0, None), allow_None=True,
                                doc="the sampler's random seed: the same seed asks for the same trials (None: fresh)"))
_STARTUP = dict(n_startup_trials=param.Integer(10, bounds=(0, None), softbounds=(0, 50),
                                               doc="random trials before the sampler models the results"))

OBJECTIVES = {"val_loss": "minimize", "best_val_loss": "minimize", "train_loss": "minimize",
              "val_acc": "maximize", "best_val_acc": "maximize", "train_acc": "maximize"}


@samplers.register("tpe", **_SEED, **_STARTUP,
                   multivariate=param.Boolean(False, doc="model the settings jointly, not one by one"))
def tpe(seed=0, n_startup_trials=10, multivariate=False):
    """Tree-structured Parzen Estimator (Optuna's default)."""
    import optuna

    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=n_startup_trials, multivariate=multivariate)


@samplers.register("random", **_SEED)
def random(seed=0):
    """Independent uniform draws (log-uniform on log ranges)."""
    import optuna

    return optuna.samplers.RandomSampler(seed=seed)


@samplers.register("qmc", **_SEED, qmc_type=param.Selector(default="sobol", objects=["sobol", "halton"],
                                                             doc="the low-discrepancy sequence"))
def qmc(seed=0, qmc_type="sobol"):
    """Quasi-Monte Carlo: a low-discrepancy sequence that covers the space evenly."""
    import optuna

    return optuna.samplers.QMCSampler(seed=seed, qmc_type=qmc_type)


@samplers.register("gp", **_SEED, **_STARTUP)
def gp(seed=0, n_startup_trials=10):
    """Gaussian-process Bayesian optimization."""
    import optuna

    return optuna.samplers.GPSampler(seed=seed, n_startup_trials=n_startup_trials)


def as_sampler(spec: Any):
    """An Optuna sampler from a name, a (name, {options}) pair, or a sampler itself."""
    from ..registry import parse_spec

    if hasattr(spec, "sample_independent"):
        return spec
    name, options = parse_spec(spec, "sampler")
    return samplers.build(name, **options)


def as_storage(storage: Any):
    """None: in memory; a path: an Optuna journal file (appends, survives a crash; ~3x the in-memory cost a
    trial, where SQLite costs ~10x); an Optuna storage object as it is."""
    import os

    if storage is None or not isinstance(storage, (str, os.PathLike)):
        return storage
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    if os.path.isdir(storage):
        raise ValueError(f"storage={storage!r} is a folder: give a file for Optuna's journal (e.g. 'study.log')")
    return JournalStorage(JournalFileBackend(os.fspath(storage)))


def declared(config: dict[str, Any], name: str) -> param.Parameter | None:
    """The declared parameter behind a setting of this configuration (None where there is none)."""
    if name in Run.SETTABLE:
        return Run.param[name]
    if "." in name:
        key, option = name.split(".", 1)
        spec = config.get(key)
        if key in ("model", "data", "schedule") and isinstance(spec, str) and not is_ref(spec) and spec in SPECS[key]:
            return SPECS[key][spec].params.get(option)
        return None
    optimizer = config.get("optimizer", "sgd")
    return optimizers[optimizer].params.get(name) if optimizer in optimizers else None


def distributions(base: dict[str, Any], space: dict[str, Any]) -> dict[str, Any]:
    """name -> Optuna distribution, each end and choice checked as a configuration of its own."""
    if not isinstance(space, dict) or not space:
        raise ValueError("space is empty: give the settings to search, e.g. space={'lr': 'auto', 'momentum': "
                         "{'low': 0.5, 'high': 0.99}, 'optimizer': ['sgd', 'adam']}")
    base = {**DEFAULTS, **flatten(base)}
    return {name: _distribution(base, name, spec) for name, spec in space.items()}


def _distribution(base: dict[str, Any], name: str, spec: Any):
    from optuna import distributions as d

    def ok(value, what):
        try:
            check({**base, name: value})
        except ValueError as e:
            raise ValueError(f"space[{name!r}]: {what}={value!r} rejected: {e}") from None

    if isinstance(spec, (list, tuple)):
        if not spec:
            raise ValueError(f"space[{name!r}]=[] rejected: a non-empty list of choices")
        for v in spec:
            if not (v is None or isinstance(v, (bool, int, float, str))):
                raise ValueError(f"space[{name!r}]: choice {v!r} rejected: choices are names, numbers or flags "
                                 f"(Optuna stores them); for a model's options search 'model.<option>'")
            ok(v, "choice")
        return d.CategoricalDistribution(list(spec))
    p = declared(base, name)
    if p is None:
        raise ValueError(f"space[{name!r}]: {name!r} has no declared range here (settings: "
                         f"{', '.join(_searchable(base))}); give a list of values")
    if spec == "auto" and isinstance(p, (param.Selector, param.Boolean)):
        return d.CategoricalDistribution(list(p.objects) if isinstance(p, param.Selector) else [False, True])
    if not isinstance(p, param.Number):
        raise ValueError(f"space[{name!r}]: give a list of values")
    integer, log = isinstance(p, param.Integer), isinstance(p, (LogNumber, LogInteger))
    step = None
    if spec == "auto":
        lo, hi = p.softbounds if p.softbounds and None not in p.softbounds else p.bounds or (None, None)
        if lo is None or hi is None:
            raise ValueError(f"space[{name!r}]: {name} declares no finite range; give one: "
                             f"{{'low': ..., 'high': ...}}")
    elif isinstance(spec, dict):
        unknown = [k for k in spec if k not in ("low", "high", "log", "step")]
        if unknown or "low" not in spec or "high" not in spec:
            raise ValueError(f"space[{name!r}]={spec!r} rejected: {{'low': .., 'high': ..}} with optional 'log' "
                             f"and 'step'")
        lo, hi, log, step = spec["low"], spec["high"], bool(spec.get("log", log)), spec.get("step")
    else:
        raise ValueError(f"space[{name!r}]={spec!r} rejected: 'auto' (the declared range), "
                         f"{{'low': .., 'high': ..}} or a list of values")
    ok(lo, "low")
    ok(hi, "high")
    if not lo < hi:
        raise ValueError(f"space[{name!r}]: low={lo!r} must be below high={hi!r}")
    if log and lo <= 0:
        raise ValueError(f"space[{name!r}]: a log range needs low > 0, got {lo!r} (pass 'log': False)")
    if integer:
        return d.IntDistribution(int(lo), int(hi), log=log, step=step or 1)
    return d.FloatDistribution(float(lo), float(hi), log=log, step=step)


def _searchable(base: dict[str, Any]) -> list[str]:
    from .config import known_settings

    return [n for n in known_settings(base) if declared(base, n) is not None]


class Study:
    """A source of configurations asked of an Optuna study: up to `parallel` runs in flight; each trial is
    told the mean objective over its seeds (or FAIL, when a run of it did not finish)."""

    def __init__(self, study, base: dict, dists: dict, seeds: list, samples: int, objective: str, parallel: int):
        self.study, self.base, self.dists, self.seeds = study, base, dists, seeds
        self.samples, self.objective = samples, objective
        self.slots = max(1, math.ceil(parallel / len(seeds)))  # trials in flight
        self.total, self.exhausted = samples * len(seeds), False
        self._asked, self._next = 0, 0
        self._trial_of: dict[int, Any] = {}
        self._rows: dict[int, list[dict]] = {}

    def take(self, running: int) -> list[tuple[dict, dict]]:
        out = []
        while not self.exhausted and len(self._rows) < self.slots:
            trial = self.study.ask(self.dists)
            self._asked += 1
            self.exhausted = self._asked >= self.samples
            self._rows[trial.number] = []
            params = dict(trial.params)
            for seed in self.seeds:
                config = {**self.base, **params, **({} if seed is None else {"seed": seed})}
                shown = {**params, "trial": trial.number}
                try:
                    config = check(config)
                except ValueError as e:
                    shown["error"] = f"trial {trial.number} ({describe(config, list(params))}): {e}"
                self._trial_of[self._next] = trial
                self._next += 1
                out.append((config, shown))
        return out

    def finish(self, index: int, row: dict) -> None:
        import optuna

        trial = self._trial_of.pop(index)
        rows = self._rows[trial.number]
        rows.append(row)
        if len(rows) < len(self.seeds):
            return
        del self._rows[trial.number]
        values = [r.get(self.objective) for r in rows if r["status"] == "finished"]
        if len(values) == len(rows) and all(v is not None and math.isfinite(v) for v in values):
            self.study.tell(trial, sum(values) / len(values))
        else:
            self.study.tell(trial, state=optuna.trial.TrialState.FAIL)

    def stop(self) -> None:
        self.exhausted, self.total = True, self._next  # no more trials: the total is what was asked
