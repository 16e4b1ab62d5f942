"""The sparsity study: the same model trained at several sparsities, one pruning criterion after another, with
every criterion given the same per-layer sparsities (ERK by default), so the curves differ only in *which*
weights each criterion keeps (Liu et al. 2022, "The Unreasonable Effectiveness of Random Pruning": at
matched layer ratios, random pruning closes the gap to magnitude and SNIP as the network widens).

`configs` makes the configurations (`trainlab.experiment`, pruning once at step 0, before training); a sweep
or `experiment.train` trains them; `curves` reads accuracy against sparsity from the results.
"""
from __future__ import annotations

from typing import Any

import pandas as pd

from .allocations import allocations
from .criteria import criteria


def configs(base: dict[str, Any], sparsities=(0.5, 0.8, 0.9, 0.95), methods=("random", "magnitude", "snip"),
            allocation: str = "erk") -> list[dict[str, Any]]:
    """One configuration per (method, sparsity): `base` with `pruning` at init, layer ratios by `allocation`."""
    bad = [m for m in methods if m not in criteria.names()]
    if bad:
        raise ValueError(f"methods={bad!r}: not pruning criteria; valid: {', '.join(criteria.names())}")
    if allocation not in allocations.names():
        raise ValueError(f"allocation={allocation!r}: valid: {', '.join(allocations.names())}")
    if allocation in ("global", "lamp", "adaptive"):
        raise ValueError(f"allocation={allocation!r} lets each criterion choose its own layer ratios; the study "
                         f"matches them: use 'erk', 'er' or 'uniform'")
    for s in sparsities:
        if not 0 <= s < 1:
            raise ValueError(f"sparsities: {s!r} is outside [0, 1)")
    return [{**base, "pruning": {"method": m, "sparsity": float(s), "scope": "layer", "allocation": allocation,
                                 "schedule": "oneshot"}} for m in methods for s in sparsities]


def curves(results: pd.DataFrame, metric: str = "val_acc") -> pd.DataFrame:
    """Accuracy (or `metric`) against sparsity per criterion, from a results frame with `pruning.method` and
    `pruning.sparsity` columns (as `trainlab.experiment.results` gives; a sweep names the method `pruning`): mean
    and spread over seeds."""
    done = results[results["status"] == "finished"] if "status" in results else results
    method = "pruning.method" if "pruning.method" in done else "pruning"
    g = done.groupby([method, "pruning.sparsity"])[metric]
    out = g.agg(["mean", "std", "count"]).reset_index()
    return out.rename(columns={method: "method", "pruning.sparsity": "sparsity"})
