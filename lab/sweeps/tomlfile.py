"""A sweep described in a TOML file, as `trainlab sweep CONFIG.toml` reads it.

    name = "lr-width"            # optional: names the runs in the store (<name>-0000, ...)
    steps = 300                  # steps each run trains
    seeds = [0, 1]               # optional: every configuration once per seed (default [0])
    store = "runs"               # optional: a trainlab.store folder for the finished runs
    workers = 2                  # optional: the local cluster's size (default: this machine's CPUs)
    retries = 1                  # optional: runs whose worker died are tried again this many times
    scheduler = "tcp://host:8786"  # optional: an existing Dask cluster (--scheduler wins)

    [base]                       # one run's settings: Run's keyword arguments
    model = ["mlp", {width = 64}]  # a (name, {options}) pair is a TOML array
    data = "moons"
    "data.noise" = 0.2           # or an option by its dotted name (quoted: TOML would nest it)
    optimizer = "sgd"
    momentum = 0.9

    [grid]                       # every combination runs
    lr = [0.01, 0.03, 0.1]
    "model.width" = [32, 64, 128]

Or, instead of [grid], Optuna: `samples = 20`, optional `sampler = "tpe"` (or ["tpe", {seed = 1}]),
`objective = "val_loss"`, `storage = "study.log"` (a journal file), and a [space] table whose values are
"auto" (the declared range), a list of choices, or {low = .., high = .., log = true}.
"""
from __future__ import annotations

import os
import tomllib
from typing import Any

KEYS = ("name", "steps", "seeds", "store", "workers", "retries", "scheduler", "samples", "sampler", "storage",
        "objective", "report_every", "base", "grid", "space")


def read(path: str | os.PathLike) -> dict[str, Any]:
    """`trainlab.sweep`'s keyword arguments from a TOML file; a ValueError naming the file and what is wrong."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ValueError(f"{os.fspath(path)}: no such file") from None
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{os.fspath(path)} is not valid TOML: {e}") from None
    unknown = [k for k in data if k not in KEYS]
    if unknown:
        raise ValueError(f"{os.fspath(path)}: unknown key {unknown[0]!r}; a sweep file takes {', '.join(KEYS)}")
    for table in ("base", "grid", "space"):
        if table in data and not isinstance(data[table], dict):
            raise ValueError(f"{os.fspath(path)}: {table} must be a table ([{table}])")
    kwargs = dict(data)
    kwargs["base"] = data.get("base", {})
    return kwargs
