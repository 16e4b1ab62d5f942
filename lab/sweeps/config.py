"""A sweep's configurations: flat dicts of setting names, checked before anything trains.

A configuration names every setting of one run, one key each:

    {"model": "mlp", "model.width": 64, "data": "moons", "data.noise": 0.2, "optimizer": "sgd",
     "lr": 0.05, "momentum": 0.9, "schedule": "cosine", "schedule.total": 500, "seed": 0, "steps": 500}

- the Run's own keywords by their names (lr, batch_size, optimizer, seed, eval_every, grad_noise, ...,
  threads, device) and the optimizer's hyperparameters by their declared names (momentum, beta1 or betas);
- a spec setting (model, data, schedule, pruning) by its name, each of its options as "<setting>.<option>"
  (a (name, {options}) pair is taken too and flattened so);
- `steps`: how many steps the run trains.

A user's own model is an importable "module:Class" (or the class itself, if its module can be imported by
name: not __main__), built on the worker as Class(**options); own data likewise a "module:function"
returning what Run's `data=` takes. Runs ship to the workers as these dicts of names and numbers.
"""
from __future__ import annotations

import functools
import importlib
import inspect
import itertools
from typing import Any

from ..data import datasets
from ..models import models
from ..optimizers import check_hparams, optimizers
from ..optimizers import entry as optimizer_entry
from ..prune.criteria import criteria
from ..registry import number, option_values, parse_spec, validate
from ..run import Run, _seed, _settings_of
from ..schedules import as_schedule, schedules
from ..threads import choose as choose_threads

SPECS = {"model": models, "data": datasets, "schedule": schedules, "pruning": criteria}
RUN_KEYS = (*Run.SETTABLE, "seed", "threads", "device")
SWEEP_KEYS = ("steps",)
DEFAULTS = {"model": "mlp", "data": "digits"}  # Run's own defaults, written out so every configuration names them


# ---- user objects as importable references ------------------------------------------------------
def is_ref(value: Any) -> bool:
    return isinstance(value, str) and ":" in value


def ref_of(obj: Any, what: str) -> str:
    """'module:qualname' of a class or function the workers can import by name, or a ValueError saying why not."""
    module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", "")
    if module is None or not qualname:
        raise ValueError(f"{what}={obj!r} rejected: a sweep ships names to its workers, not objects; pass a "
                         f"registered name or an importable 'module:Class'")
    if module == "__main__" or "<locals>" in qualname:
        where = "__main__ (your script or notebook)" if module == "__main__" else f"a function of {module}"
        raise ValueError(f"{what}={qualname} rejected: it is defined in {where}, which the sweep's workers cannot "
                         f"import. Move it into a module of its own (e.g. mymodels.py beside your script) and pass "
                         f"'mymodels:{qualname.split('.')[-1]}' or the class imported from there")
    ref = f"{module}:{qualname}"
    if resolve(ref, what) is not obj:
        raise ValueError(f"{what}={qualname} rejected: importing {ref!r} gives another object; pass 'module:name'")
    return ref


def resolve(ref: str, what: str) -> Any:
    """The object a 'module:qualname' names; a ValueError saying it cannot be imported here."""
    module, _, qualname = ref.partition(":")
    try:
        obj = importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"{what}={ref!r} cannot be imported ({type(e).__name__}: {e}); the module must be "
                         f"importable by name (installed, or its folder on PYTHONPATH), here and on every worker") from None
    return obj


# ---- flat configurations ------------------------------------------------------------------------
def flatten(settings: dict[str, Any], what: str = "base") -> dict[str, Any]:
    """Spec pairs as name + dotted options; classes and functions as 'module:name' references."""
    if not isinstance(settings, dict):
        raise ValueError(f"{what} must be a dict of settings (model, data, optimizer, lr, ..., steps); got "
                         f"{type(settings).__name__}")
    out: dict[str, Any] = {}
    for key, value in settings.items():
        if not isinstance(key, str):
            raise ValueError(f"{what}: setting names are strings, got {key!r}")
        if key in SPECS:
            out.update(flatten_spec(key, value))
        else:
            out[key] = value
    return out


def flatten_spec(key: str, value: Any) -> dict[str, Any]:
    """{key: name, key.option: value, ...} from a spec setting's value."""
    if key == "pruning":
        if value is None or value == "off":
            return {"pruning": None}
        if isinstance(value, dict):  # Sparsifier arguments
            value = (value.get("method", "magnitude"), {k: v for k, v in value.items() if k != "method"})
    def own(obj) -> bool:
        return key in ("model", "data") and (inspect.isclass(obj) or inspect.isfunction(obj))

    if own(value):
        value = ref_of(value, key)
    elif isinstance(value, (tuple, list)) and len(value) == 2 and own(value[0]):  # (Class, {options})
        value = (ref_of(value[0], key), value[1])
    if key == "model" and hasattr(value, "parameters") and not inspect.isclass(value):
        raise ValueError("model=<an nn.Module instance> rejected: a sweep builds each run's model on a worker, "
                         "so it takes the model's class (importable, e.g. 'mymodels:Net') and its options: "
                         "model=('mymodels:Net', {'hidden': 64})")
    spec = parse_spec(value)
    if spec is None:
        kinds = ", ".join(SPECS[key].names())
        user = " or an importable 'module:Class'" if key == "model" else " or an importable 'module:function'" \
            if key == "data" else ""
        raise ValueError(f"{key}={_short(value)} rejected: a name ({kinds}){user}, or a (name, {{options}}) pair; "
                         f"a sweep ships names and options to its workers, not objects")
    name, options = spec
    return {key: name, **{f"{key}.{k}": v for k, v in options.items()}}


def options_of(config: dict[str, Any], key: str) -> dict[str, Any]:
    prefix = key + "."
    return {k[len(prefix):]: v for k, v in config.items() if k.startswith(prefix)}


def run_kwargs(config: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """Run's keyword arguments and the steps to train, from a configuration (a user's model is built here)."""
    kwargs = {k: v for k, v in config.items() if "." not in k and k not in SPECS and k not in SWEEP_KEYS}
    for key in SPECS:
        if config.get(key) is None:
            continue
        name, options = config[key], options_of(config, key)
        if key == "model" and is_ref(name):
            import torch

            cls = resolve(name, "model")
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(config.get("seed", 0))  # the same seed gives the same initial weights
                kwargs["model"] = cls(**options)
        elif key == "data" and is_ref(name):
            kwargs["data"] = resolve(name, "data")(**options)
        else:
            kwargs[key] = (name, options)
    return kwargs, config["steps"]


def refs(configs: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(setting, 'module:name') of the user's own objects the workers must import."""
    return sorted({(k, c[k]) for c in configs for k in ("model", "data") if is_ref(c.get(k))})


# ---- checks -------------------------------------------------------------------------------------
def check(config: dict[str, Any]) -> dict[str, Any]:
    """The configuration with its numbers as plain Python values, or a ValueError naming the setting.

    Everything is checked against the registries' declared parameters and the optimizer's own constructor
    (on a dummy): nothing is built, no data is loaded.
    """
    config = {**DEFAULTS, **flatten(config, "configuration")}
    prefixes = [k.split(".")[0] for k in config if "." in k]
    for p in prefixes:
        if p not in SPECS:
            raise ValueError(f"unknown setting {next(k for k in config if k.startswith(p + '.'))!r}: dotted names "
                             f"set the options of {', '.join(SPECS)} (e.g. 'model.width')")
        if config.get(p) is None:
            raise ValueError(f"{p} options given ({', '.join(k for k in config if k.startswith(p + '.'))}) "
                             f"without {p}")
    if "steps" not in config:
        raise ValueError("steps is missing: how many steps each run trains (sweep(..., steps=500) or 'steps' in base)")
    steps = number(config["steps"], "steps", integer=True, what="the sweep")
    if steps < 1:
        raise ValueError(f"steps={steps} rejected: a whole number >= 1")
    config["steps"] = steps
    for key in SPECS:
        name = config.get(key)
        if name is None:
            continue
        options = options_of(config, key)
        try:  # a grid repeats the same model and data in every configuration: each is checked once
            values = dict(_check_spec_once(key, name, tuple(sorted(options.items()))))
        except TypeError:  # an option value that cannot be hashed (a list): checked each time
            values = _check_spec(key, name, options)
        config.update({f"{key}.{k}": v for k, v in values.items()})
    own = {k: config[k] for k in Run.SETTABLE if k in config}
    if "optimizer" in own:
        optimizer_entry(own["optimizer"])  # a refused name says why, an unknown one lists the valid ones
    config.update(validate(Run, own, "Run"))
    if "seed" in config:
        config["seed"] = _seed(config["seed"])
    if "threads" in config:
        choose_threads(config["threads"], 1, 1)
    if "device" in config and not isinstance(config["device"], str):
        raise ValueError(f"device={config['device']!r} rejected: a name ('auto', 'cpu', 'cuda', ...) the workers resolve")
    name = config.get("optimizer", Run.param["optimizer"].default)
    entry = optimizers[name]
    hp = {k: v for k, v in config.items() if k not in (*RUN_KEYS, *SWEEP_KEYS, *SPECS) and "." not in k}
    hp = _settings_of(entry, hp)  # betas=(...) -> beta1, beta2; an unknown name refused, listing the valid ones
    opts = entry.options(**hp)
    lr = config.get("lr", entry.meta.usual_lr)
    check_hparams(name, lr, option_values(opts))  # cross-field rules (Nesterov needs momentum)
    return config


@functools.lru_cache(maxsize=256)
def _check_spec_once(key: str, name: Any, options: tuple) -> tuple:
    return tuple(_check_spec(key, name, dict(options)).items())


def _check_spec(key: str, name: Any, options: dict[str, Any]) -> dict[str, Any]:
    if key in ("model", "data") and is_ref(name):
        target = resolve(name, key)
        if key == "model":
            from torch import nn

            if not (inspect.isclass(target) and issubclass(target, nn.Module)):
                raise ValueError(f"model={name!r} rejected: not an nn.Module subclass")
        try:
            inspect.signature(target).bind(**options)
        except TypeError as e:
            raise ValueError(f"{key}={name!r} does not take these options ({', '.join(options) or 'none'}): {e}") from None
        return options
    if not isinstance(name, str):
        raise ValueError(f"{key}={_short(name)} rejected: a name ({', '.join(SPECS[key].names())})")
    if key == "schedule":
        return option_values(as_schedule((name, options)).options)  # bounds and cross-field rules (warmup < total)
    if key == "pruning":
        return _check_pruning(name, options)
    entry = SPECS[key][name]  # unknown: lists the valid names
    try:
        return option_values(entry.options(**options))
    except ValueError as e:
        raise ValueError(f"{key} {name!r}: {e}") from None


def _check_pruning(method: str, options: dict[str, Any]) -> dict[str, Any]:
    """The Sparsifier's arguments that can be checked without a model: the method, the option names, the sparsity."""
    from ..prune.sparsifier import Sparsifier, _sparsity

    criteria[method]
    allowed = [p for p in inspect.signature(Sparsifier).parameters if p not in ("model", "method")]
    unknown = [k for k in options if k not in allowed]
    if unknown:
        raise ValueError(f"unknown setting 'pruning.{unknown[0]}'; the Sparsifier takes: {', '.join(allowed)}")
    if "sparsity" in options:
        options = {**options, "sparsity": _sparsity(options["sparsity"])}
    return options


def known_settings(config: dict[str, Any]) -> list[str]:
    """Every setting name a configuration like this one may set (for messages)."""
    names = [*RUN_KEYS, *SWEEP_KEYS, *SPECS]
    config = {**DEFAULTS, **config}
    for key in SPECS:
        name = config.get(key)
        if isinstance(name, str) and not is_ref(name) and name in SPECS[key] and key != "pruning":
            names += [f"{key}.{k}" for k in SPECS[key][name].params]
    from ..prune.sparsifier import Sparsifier

    names += [f"pruning.{k}" for k in inspect.signature(Sparsifier).parameters if k not in ("model", "method")]
    optimizer = config.get("optimizer", "sgd")
    if optimizer in optimizers:
        names += [*optimizers[optimizer].params, *optimizers[optimizer].meta.tuples]
    return names


# ---- grids --------------------------------------------------------------------------------------
def describe(config: dict[str, Any], keys: list[str]) -> str:
    return ", ".join(f"{k}={_short(config.get(k))}" for k in keys)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def label(value: Any) -> Any:
    """A grid value as its results column shows it: a (name, {options}) pair as 'name(option=value, ...)'."""
    spec = parse_spec(value) if isinstance(value, (tuple, list)) else None
    if spec is not None:
        return f"{spec[0]}({', '.join(f'{k}={v!r}' for k, v in spec[1].items())})"
    return value


def expand(base: dict[str, Any], grid: dict[str, list], seeds: list[int] | None
           ) -> tuple[list[tuple[dict, dict]], list[str]]:
    """Every configuration of the grid (the product of its values, in order), times each seed, each checked,
    with its grid values as the results show them; and the swept setting names (the configuration columns)."""
    base = flatten(base)
    if not isinstance(grid, dict) or not grid:
        raise ValueError("grid is empty: give at least one setting and its values, e.g. grid={'lr': [0.01, 0.1]}")
    for key, values in grid.items():
        if not isinstance(values, (list, tuple)) or isinstance(values, str) or len(values) == 0:
            raise ValueError(f"grid[{key!r}]={_short(values)} rejected: a non-empty list of values")
    known = known_settings(base)
    for key in grid:
        if key not in known and not (key.split(".")[0] in ("model", "data") and is_ref(base.get(key.split(".")[0]))):
            raise ValueError(f"unknown setting {key!r} in grid; valid settings here: {', '.join(known)}")
    seeds = seed_list(seeds, base, "seed" in grid)
    keys = list(grid)
    configs, total = [], len(seeds) * _product_size(grid)
    for values in itertools.product(*grid.values()):
        overlay: dict[str, Any] = {}
        for key, value in zip(keys, values):
            if key in SPECS:
                spec = flatten_spec(key, value)
                if len(spec) > 1 or spec[key] is None:  # a pair (or pruning off) replaces the base's options
                    base_opts = [k for k in base if k.startswith(key + ".")]
                    overlay.update({k: _DROP for k in base_opts})
                overlay.update(spec)
            else:
                overlay[key] = value
        for seed in seeds:
            config = {**base, **overlay}
            config = {k: v for k, v in config.items() if v is not _DROP}
            if seed is not None:
                config["seed"] = seed
            shown = {k: label(v) for k, v in zip(keys, values)}
            try:
                configs.append((check(config), shown))
            except ValueError as e:
                raise ValueError(f"configuration {len(configs)} of {total} "
                                 f"({describe({**config, **shown}, keys + ['seed'])}): {e}") from None
    return configs, keys


def seed_list(seeds: Any, base: dict[str, Any], in_grid: bool) -> list[int | None]:
    if seeds is None:
        return [None] if in_grid or "seed" in base else [0]
    if in_grid:
        raise ValueError("seed is both in grid and in seeds=: give it once")
    if isinstance(seeds, (int, str)) or not isinstance(seeds, (list, tuple, range)) or len(seeds) == 0:
        raise ValueError(f"seeds={_short(seeds)} rejected: a non-empty list of whole numbers, e.g. seeds=[0, 1, 2]")
    return [_seed(s) for s in seeds]


def _product_size(grid: dict[str, list]) -> int:
    n = 1
    for values in grid.values():
        n *= len(values)
    return n


_DROP = object()
