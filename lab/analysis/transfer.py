"""μ-Transfer: the same model trained at several widths (or depths) over an lr grid, each configuration its own Run.

A configuration is a plain dict (model spec, data, optimizer, lr, steps, seed, ...) and `run_config` turns
one into one result row (a plain dict): both are plain data and `run_config` is a module-level function,
so a sweep engine can ship them to other processes (Dask) unchanged. `lr_sweep` runs them with any
`map` (the built-in one: sequentially) and returns a tidy frame; `best_lr` reads off the best lr per width.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import pandas as pd

# what a row repeats of its configuration's model options, when the model declares them
_TAGS = ("width", "depth", "parametrization", "base_width", "branch", "init")


def run_config(config: dict[str, Any]) -> dict[str, Any]:
    """Train one configuration (`trainlab.experiment`: Run arguments + steps; on the CPU with one thread unless it
    says otherwise) and return its row: the model options it was swept over, `loss` (the training loss over the
    whole training set after the steps), `mean_train_loss` (the batches' loss averaged over the run: how fast it
    learned), both inf when the run diverged, `steps` taken and `diverged`."""
    from ..experiment import train

    name, options = config["model"]
    out = train({"device": "cpu", "threads": 1, **config}, keep_history=False, whole_train_loss=True)
    row = {k: options[k] for k in _TAGS if k in options}
    diverged = out["status"] != "finished" or not math.isfinite(out["full_train_loss"])
    row.update(model=name, optimizer=config["optimizer"], lr=float(config["lr"]), seed=int(config["seed"]),
               loss=out["full_train_loss"], mean_train_loss=out.get("mean_train_loss", math.inf), steps=out["steps"],
               diverged=diverged)
    return row


def configurations(model: str = "mlp", widths: Iterable[int] = (64, 128, 256, 512), lrs: Iterable[float] = (),
                   parametrizations: Iterable[str] = ("sp", "mup"), base_width: int = 64, seeds: Iterable[int] = (0,),
                   data: Any = "digits", optimizer: str = "adam", steps: int = 200, batch_size: int = 64,
                   model_options: dict | None = None, hparams: dict | None = None) -> list[dict[str, Any]]:
    """Every (parametrization, width, lr, seed) configuration of a width sweep, as `trainlab.experiment`
    configurations (plain dicts) for `run_config`."""
    lrs = [float(lr) for lr in lrs]
    if not lrs:
        raise ValueError("lrs must hold at least one learning rate (e.g. 2.0 ** np.arange(-12, -2))")
    out = []
    for p in parametrizations:
        for w in widths:
            options = {**(model_options or {}), "width": int(w), "parametrization": p, "base_width": int(base_width)}
            for lr in lrs:
                for seed in seeds:
                    out.append(dict(model=(model, options), data=data, optimizer=optimizer, lr=lr, steps=int(steps),
                                    seed=int(seed), batch_size=int(batch_size), **(hparams or {})))
    return out


def lr_sweep(model: str = "mlp", widths: Iterable[int] = (64, 128, 256, 512), lrs: Iterable[float] = (),
             parametrizations: Iterable[str] = ("sp", "mup"), base_width: int = 64, seeds: Iterable[int] = (0,),
             data: Any = "digits", optimizer: str = "adam", steps: int = 200, batch_size: int = 64,
             model_options: dict | None = None, hparams: dict | None = None,
             map: Callable = map) -> pd.DataFrame:
    """Loss after `steps` steps for each parametrization, width, lr and seed: one row per Run (see
    `configurations` and `run_config`); `map(run_config, configs)` runs them (sequential by default)."""
    configs = configurations(model, widths, lrs, parametrizations, base_width, seeds, data, optimizer, steps,
                             batch_size, model_options, hparams)
    return pd.DataFrame(list(map(run_config, configs)))


def best_lr(frame: pd.DataFrame, by: str = "width", metric: str = "loss", group: str = "parametrization") -> pd.DataFrame:
    """Per `group` (the parametrization, or a depth study's branch multiplier) and `by` (width or depth): the lr
    of the lowest `metric` averaged over seeds (a diverged seed counts as inf), and its index on the sorted lr grid."""
    grid = np.sort(frame["lr"].unique())
    values = frame.assign(loss=frame[metric].replace(np.nan, np.inf))
    mean = values.groupby([group, by, "lr"])["loss"].mean()
    rows = []
    for (p, w), losses in mean.groupby(level=[0, 1]):
        lr = losses.droplevel([0, 1]).idxmin()
        rows.append({group: p, by: w, "best_lr": lr, "index": int(np.searchsorted(grid, lr)),
                     "loss": float(losses.min())})
    return pd.DataFrame(rows)


def depth_configurations(depths: Iterable[int] = (2, 4, 8, 16), lrs: Iterable[float] = (),
                         branches: Iterable[str] = ("1", "1/sqrt(L)", "1/L"), width: int = 64,
                         seeds: Iterable[int] = (0,), data: Any = "digits", optimizer: str = "sgd", steps: int = 80,
                         batch_size: int = 64, model_options: dict | None = None, ends_lr: float | None = None,
                         hparams: dict | None = None) -> list[dict[str, Any]]:
    """Every (branch, depth, lr, seed) configuration of a depth sweep of the residual MLP, in that order (the seed
    varies fastest), as `trainlab.experiment` configurations for `run_config`; see `depth_sweep`."""
    from ..experiment import grid
    from ..models import models

    valid = models["resmlp"].params["branch"].objects
    depths, lrs, branches = _plain(depths), _plain(lrs), list(branches)
    _check_positive("depths", depths, "numbers of residual blocks, e.g. (2, 4, 8, 16)", whole=True)
    _check_positive("lrs", lrs, "learning rates, e.g. 2.0 ** np.arange(-8, 7)")
    _check_positive("width", width, "units per residual block", whole=True)
    _check_positive("steps", steps, "steps per run", whole=True)
    if not branches or any(b not in valid for b in branches):
        raise ValueError(f"branches={branches!r} rejected: residual branch multipliers, some of "
                         f"{', '.join(map(repr, valid))}")
    if ends_lr is not None and not (isinstance(ends_lr, (int, float)) and not isinstance(ends_lr, bool)
                                    and math.isfinite(ends_lr) and ends_lr > 0):
        raise ValueError(f"ends_lr must be a positive lr (the embedding's and read-out's) or None; got {ends_lr!r}")
    base = dict(model=("resmlp", {"width": int(width), **(model_options or {})}), data=data, optimizer=optimizer,
                steps=int(steps), batch_size=int(batch_size), **(hparams or {}))
    configs = grid(base, {"model.branch": branches, "model.depth": [int(d) for d in depths],
                          "lr": [float(lr) for lr in lrs], "seed": [int(s) for s in seeds]})
    if ends_lr is None:
        return configs
    return [{**c, "model": (c["model"][0], {**c["model"][1], "ends_lr_mult": ends_lr / c["lr"]})} for c in configs]


def _plain(values: Iterable) -> list:
    """A list of plain Python values (NumPy scalars converted), as an error message should show them."""
    return [v.item() if isinstance(v, np.generic) else v for v in values]


def _check_positive(name: str, value: Any, what: str, whole: bool = False) -> None:
    """A ValueError naming the setting unless `value` is a positive (whole) number or a non-empty list of them."""
    many = isinstance(value, (list, tuple))

    def fine(v):
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
            return False
        return math.isfinite(v) and v > 0 and (not whole or float(v).is_integer())

    if not (all(map(fine, value)) and len(value) if many else fine(value)):
        kind = ("a whole number" if whole else "a number") + " > 0"
        raise ValueError(f"{name}={value!r} rejected: {what}, " + (f"a non-empty list, each {kind}" if many else kind))


def depth_sweep(depths: Iterable[int] = (2, 4, 8, 16), lrs: Iterable[float] = (), branches=("1", "1/sqrt(L)", "1/L"),
                width: int = 64, seeds: Iterable[int] = (0,), data: Any = "digits", optimizer: str = "sgd",
                steps: int = 80, batch_size: int = 64, model_options: dict | None = None, ends_lr: float | None = None,
                map: Callable = map) -> pd.DataFrame:
    """Depth transfer: the residual MLP at each depth, branch multiplier and lr (one `run_config` row each, in the
    order of `depth_configurations`).

    With `ends_lr` the swept lr is the blocks' and the embedding and read-out train at `ends_lr` throughout
    (resmlp's `ends_lr_mult` = ends_lr / lr), which is what the theory speaks of: an SGD step moves the
    output of L blocks scaled by s by about L·s²·η, so the blocks' best lr goes as 1/(L·s²): ∝ 1/L for s = 1,
    flat for 1/sqrt(L) (Bordelon et al. 2023, depth-μP), ∝ L for 1/L. With one lr for every layer
    (`ends_lr=None`) the embedding and read-out, which no branch multiplier scales, can set the best lr
    by themselves, and 1/L's then stays put while its loss is worse."""
    configs = depth_configurations(depths, lrs, branches, width, seeds, data, optimizer, steps, batch_size,
                                   model_options, ends_lr)
    return pd.DataFrame(list(map(run_config, configs)))


def sharpness_run(config: dict[str, Any]) -> pd.DataFrame:
    """Train one configuration that measures `Sharpness` and return its curve: one row per measurement with the
    model options it was swept over, `step`, `sharpness` (the lr-scaled λ_max(M^1/2 H M^1/2) when its groups carry
    per-layer lr multipliers M, μP's: the curvature the step sees; else λ_max(H)) and `threshold` (2/lr for SGD)."""
    from ..experiment import train

    name, options = config["model"]
    out = train({"device": "cpu", "threads": 1, **config})
    h = out["history"].dropna(subset=["sharpness"])
    value = h["scaled_sharpness"] if "scaled_sharpness" in h else h["sharpness"]
    tags = {k: options[k] for k in _TAGS if k in options}
    return pd.DataFrame({**tags, "lr": float(config["lr"]), "seed": int(config["seed"]), "step": h["step"].to_numpy(),
                         "sharpness": value.to_numpy(float), "threshold": h["sharpness_threshold"].to_numpy(float),
                         "status": out["status"]})


def sharpness_curves(model: str = "mlp", widths: Iterable[int] = (64, 256, 1024), lr: float = 1.0,
                     parametrizations: Iterable[str] = ("mup", "sp"), base_width: int = 64, seeds: Iterable[int] = (0,),
                     data: Any = ("spirals", {"n": 512}), optimizer: str = "sgd", steps: int = 200,
                     batch_size: int = 4096, every: int = 10, max_examples: int = 4096,
                     model_options: dict | None = None, map: Callable = map) -> pd.DataFrame:
    """Super consistency (Noci et al. 2024): the sharpness along training at each width, under each parametrization,
    all at one lr: one row per (parametrization, width, seed, measurement). Under μP the curves coincide across
    widths (at a large enough lr all sit at the edge of stability 2/lr); under SP they do not. Full-batch by default
    (a batch larger than the data set), so that the sharpness measured is that of the objective being trained;
    the default model is a one-hidden-layer MLP (`model_options={"depth": 1}`), whose cost grows only linearly
    with its width."""
    options = {"depth": 1} if model_options is None else model_options
    configs = configurations(model, widths, [lr], parametrizations, base_width, seeds, data, optimizer, steps,
                             batch_size, options,
                             {"measure": {"Sharpness": {"every": int(every), "max_examples": int(max_examples)}}})
    return pd.concat(list(map(sharpness_run, configs)), ignore_index=True)


def sharpness_spread(curves: pd.DataFrame, late: float = 0.5) -> pd.Series:
    """Per parametrization, how far the widths' curves lie apart late in training: each width's sharpness averaged
    over the last `late` fraction of its measurements (and over seeds), then (max - min) / min across widths."""
    if not 0 < late <= 1:
        raise ValueError(f"late={late!r} rejected: the fraction of the measurements to average, in (0, 1]")
    last = curves["step"].max()
    tail = curves[curves["step"] > last * (1 - late)]
    means = tail.groupby(["parametrization", "width"])["sharpness"].mean()
    return means.groupby(level=0).agg(lambda m: (m.max() - m.min()) / m.min())
