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
    """Train one configuration and return its row: the configuration's tags, `loss` (the training loss over
    the whole training set after the steps), `mean_train_loss` (the batches' loss averaged over the run: how
    fast it learned), both inf when the run diverged, `steps` taken and `diverged`.

    Keys: model ((name, {options})), data (a name or (name, {options})), optimizer, lr, steps, seed,
    and optionally batch_size (64), hparams (the optimizer's other settings), device ("cpu"), threads (1).
    """
    import torch

    from ..run import Run

    name, options = config["model"]
    run = Run(model=(name, dict(options)), data=config["data"], optimizer=config["optimizer"], lr=config["lr"],
              batch_size=config.get("batch_size", 64), seed=config["seed"], device=config.get("device", "cpu"),
              probes=[], threads=config.get("threads", 1), **config.get("hparams", {}))
    steps = int(config["steps"])
    done = run.step(steps)
    loss = math.inf
    if done == steps:
        total, n = 0.0, 0
        with torch.no_grad():
            X, y = run.data.fixed_sample(None, device=run.device)
            for i in range(0, len(X), 4096):
                total += float(run.loss_fn(run.model(X[i:i + 4096]), y[i:i + 4096])) * len(X[i:i + 4096])
                n += len(X[i:i + 4096])
        loss = total / n if math.isfinite(total) else math.inf
    losses = run.history.frame()["train_loss"].to_numpy(dtype=float)
    mean_loss = float(losses.mean()) if done == steps and np.isfinite(losses).all() else math.inf
    row = {k: options[k] for k in _TAGS if k in options}
    row.update(model=name, optimizer=config["optimizer"], lr=float(config["lr"]), seed=int(config["seed"]),
               loss=loss, mean_train_loss=mean_loss, steps=done, diverged=done < steps or not math.isfinite(loss))
    return row


def configurations(model: str = "mlp", widths: Iterable[int] = (64, 128, 256, 512), lrs: Iterable[float] = (),
                   parametrizations: Iterable[str] = ("sp", "mup"), base_width: int = 64, seeds: Iterable[int] = (0,),
                   data: Any = "digits", optimizer: str = "adam", steps: int = 200, batch_size: int = 64,
                   model_options: dict | None = None, hparams: dict | None = None) -> list[dict[str, Any]]:
    """Every (parametrization, width, lr, seed) configuration of a width sweep, as plain dicts for `run_config`."""
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
                                    seed=int(seed), batch_size=int(batch_size), hparams=dict(hparams or {})))
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


def best_lr(frame: pd.DataFrame, by: str = "width", metric: str = "loss") -> pd.DataFrame:
    """Per parametrization and `by` (width or depth): the lr of the lowest `metric` averaged over seeds (a
    diverged seed counts as inf), and its index on the sorted lr grid."""
    grid = np.sort(frame["lr"].unique())
    values = frame.assign(loss=frame[metric].replace(np.nan, np.inf))
    mean = values.groupby(["parametrization", by, "lr"])["loss"].mean()
    rows = []
    for (p, w), losses in mean.groupby(level=[0, 1]):
        lr = losses.droplevel([0, 1]).idxmin()
        rows.append({"parametrization": p, by: w, "best_lr": lr, "index": int(np.searchsorted(grid, lr)),
                     "loss": float(losses.min())})
    return pd.DataFrame(rows)
