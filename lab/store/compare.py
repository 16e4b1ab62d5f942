"""Runs side by side: which settings differ, what changed mid-run and when, each run's best step, and which
were forked from which (lineage).

All read a Store (its listing, its events and its histories); nothing is loaded as a Run.
"""
from __future__ import annotations

import math
from typing import Any

import pandas as pd

# columns of a listing that describe the record, not how the run was set up or how it ended
_RECORD = {"name", "status", "step", "saved"}


def _cell(value: Any) -> str:
    """One value as a table cell: dicts and lists compactly, floats to four significant digits."""
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.4g}"
    if isinstance(value, dict):
        return ", ".join(f"{k}={_cell(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return "(" + ", ".join(_cell(v) for v in value) + ")"
    return "" if value is None else str(value)


def settings_diff(store, names: list[str], metrics: bool = False) -> pd.DataFrame:
    """The settings (and, with `metrics`, the final metrics) that differ between `names`: a setting per row,
    a run per column, as saved (the values they ended with; `changes` says what they started from)."""
    listing = store.list()
    listing = listing[listing["name"].isin(names)].set_index("name").reindex(names)
    from ..run import Run

    # a listing's metric columns are the history's last values; lr and batch size are settings that rows repeat
    history_columns = set(store.history(names).columns) - {"run", "step", *Run.SETTABLE} if not metrics else set()
    rows = {}
    for column in listing.columns:
        if column in _RECORD or (not metrics and column in history_columns):
            continue
        cells = [_cell(v) for v in listing[column]]
        if len(set(cells)) > 1:
            rows[column] = cells
    return pd.DataFrame.from_dict(rows, orient="index", columns=names)


def changes(store, names: list[str]) -> pd.DataFrame:
    """Every mid-run change of each run, in order: run, step, change ("lr=0.01", "optimizer sgd -> adam (...)")."""
    out = []
    for name in names:
        for e in store.events(name):
            text = e["event"] if "event" in e else ", ".join(f"{k}={_cell(v)}" for k, v in e["set"].items())
            out.append({"run": name, "step": int(e["step"]), "change": text})
    return pd.DataFrame(out, columns=["run", "step", "change"])


def best_steps(history: pd.DataFrame, metric: str = "val_loss") -> pd.DataFrame:
    """Per run of a tidy history (`store.history(names)`): the step of the best `metric` (lowest, or highest for
    an accuracy) and its value."""
    higher = "acc" in metric
    rows = []
    for name, h in history.groupby("run", observed=True, sort=False):
        h = h.dropna(subset=[metric]) if metric in h else h.iloc[:0]
        if h.empty:
            continue
        i = h[metric].idxmax() if higher else h[metric].idxmin()
        rows.append({"run": name, "step": int(h.loc[i, "step"]), metric: float(h.loc[i, metric])})
    return pd.DataFrame(rows, columns=["run", "step", metric])


def lineage(store, names: list[str]) -> pd.DataFrame:
    """Which of `names` were forked, from which run and at which step (`run.parent`, saved with the run)."""
    listing = store.list()
    listing = listing[listing["name"].isin(names)]
    rows = []
    for name, parent in zip(listing["name"], listing.get("parent", [None] * len(listing))):
        if isinstance(parent, str) and "@" in parent:
            of, _, step = parent.rpartition("@")
            rows.append({"run": name, "parent": of, "step": int(step)})
    return pd.DataFrame(rows, columns=["run", "parent", "step"])
