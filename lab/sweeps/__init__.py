"""Sweeps on Dask: `trainlab.sweep(base, grid={...} | samples=N, ...)` returns a running `Sweep`.

`config` names and checks configurations, `task` is the run a worker trains, `cluster` connects (an
embedded LocalCluster or an existing scheduler), `space` asks Optuna, `monitor` holds the Sweep (the
results, gathered as runs end), `tomlfile` reads `trainlab sweep CONFIG.toml`.
"""
from .config import run_kwargs
from .launch import sweep
from .monitor import Progress, Sweep
from .presets import presets
from .space import samplers
from .task import train

__all__ = ["Progress", "Sweep", "presets", "run_kwargs", "samplers", "sweep", "train"]
