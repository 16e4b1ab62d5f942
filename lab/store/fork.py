"""A run forked at a past step: "what if I had lowered the lr at step 500?".

A stored run (`store.fork`) forks from its checkpoints on disk, a live one (`Run.fork`) from its restore
points in memory (`checkpoint.at_point`); both become a Run through `start`. A stored fork starts from the
nearest checkpoint at or before the step asked for (a periodic one, the run's last, or step 0: a fresh run
of its seed and initial settings, which is the same state), a live one from the nearest restore point. The
settings are those in force there, replayed from the run's initial settings and its mid-run changes up to
that point; the history up to that step comes from the run's record, and the new settings apply before its
next step. `run.parent` = {"run", "step", "asked"} says where it came from; it is saved with it (the
listing's `parent` column, "name@step") and the history's event at the next step says it too.
"""
from __future__ import annotations

from typing import Any

import pyarrow.compute as pc

from .. import checkpoint
from ..optimizers import optimizers
from ..registry import number
from . import format as fmt
from . import points

BUILD = ("model", "data", "loss", "device", "probes", "threads", "val_data")  # how to rebuild it, not settings
_EXTRA = ("schedule", "schedule_start", "pruning")


def settings_at(initial: dict[str, Any], changes: list[dict]) -> dict[str, Any]:
    """The settings after `changes` ({"step", "set"}, in order) on top of `initial` (`Run.initial_settings`):
    the run's own, the optimizer's, the schedule and the pruning."""
    from ..run import Run

    out = dict(initial)
    for change in changes:
        new = {k: v for k, v in change["set"].items() if k != "state"}
        if "optimizer" in new and new["optimizer"] != out.get("optimizer"):
            # a switch lists only the settings that differ: the old optimizer's others go, unless the new one
            # declares them too (then the value carried over is the one it got)
            declared = optimizers[new["optimizer"]].params
            out = {k: v for k, v in out.items() if k in Run.SETTABLE or k in _EXTRA or k in declared}
        out.update(new)
    return out


def fork(store, name: str, step: int | None, build: dict[str, Any], settings: dict[str, Any]):
    """The Run of `store.fork` (see there)."""
    from ..run import Run

    folder = store._existing(name)
    tracked = store._tracked_here(name)
    if tracked is not None:  # this process records it: what it holds in memory written first
        tracked.recorder.flush()
    m = store._manifest(folder)
    table = store._table(folder, m)
    last = table["step"][-1].as_py() if table is not None and table.num_rows else (m or {}).get("step", 0) or 0
    sources = store._sources(name)
    available = sorted(sources)
    if step is None:
        step = available[-1]
    else:
        step = number(step, "step", integer=True, what=f"fork of {name!r}")
    if not 0 <= step <= last:
        raise ValueError(f"step={step} rejected for fork of {name!r}: a step from 0 to {last} (the run has taken "
                         f"{last} steps; checkpoints at steps {_listed(available)})")
    at = max(s for s in available if s <= step)
    source = sources[at]  # this run's, or its parent's before it forked
    src = store._existing(source)
    ckpt = _checkpoint_at(store, source, src, store._manifest(src), at)
    if table is not None and "step" in table.column_names:
        table = table.filter(pc.less_equal(table["step"], at))
        ckpt["history"] = fmt.table_columns(table)
    else:
        ckpt["history"] = {}
    ckpt["parent"] = {"run": name, "step": at, "asked": step}
    return start(Run, ckpt, f"{folder} (step {at})", build, settings, name, "checkpoint", fresh=not at)


def start(cls, ckpt: dict[str, Any], where: str, build: dict[str, Any], settings: dict[str, Any], of: str,
          kind: str, fresh: bool = False):
    """The fork's Run from `ckpt`, a stored checkpoint or a live run's restore point (`checkpoint.at_point`),
    its `parent` set: the settings in force there replayed from the initial settings and the changes, the run
    built (`fresh`: a new run of the seed, the same state at step 0), its next row's event saying where it came
    from (`of`, the nearest `kind` to the step asked), then `settings` set, checked as `run.set` checks them."""
    replayed = settings_at(ckpt["initial_settings"] or {}, ckpt["changes"])
    ckpt["settings"] = {k: replayed[k] for k in cls.SETTABLE if k in replayed}
    ckpt["optimizer_hparams"] = {k: v for k, v in replayed.items() if k not in cls.SETTABLE and k not in _EXTRA}
    ckpt["schedule"], ckpt["pruning"] = replayed.get("schedule", "constant"), replayed.get("pruning")
    ckpt.setdefault("schedule_start", replayed.get("schedule_start", 0))
    run = _fresh(cls, ckpt, where, build) if fresh else checkpoint.build(cls, ckpt, where, **build)
    at, asked = ckpt["parent"]["step"], ckpt["parent"]["asked"]
    note = f"forked from {of} at step {at}"
    if at != asked:
        note += f" (asked for step {asked}: the nearest {kind} at or before it)"
    run.note(note)
    if settings:
        run.set(**settings)  # checked: a refused value raises, and the run built is dropped
    return run


def _listed(steps: list[int]) -> str:
    return ", ".join(map(str, steps)) if len(steps) <= 12 else ", ".join(map(str, steps[:5] + ["..."] + steps[-5:]))


def _checkpoint_at(store, name, folder, m, at: int) -> dict[str, Any]:
    """The checkpoint at step `at`: a periodic one, the run's last, or (at 0) any, for the run's specs."""
    found = points.steps(folder / "points")
    if at in found:
        return points.read(folder / "points", at, str(folder))
    if store._checkpoint_dir(folder, m) is not None:
        ckpt = fmt.decode(store._reader(folder, m), m, str(folder))
        if at == 0 or ckpt["step"] == at:
            return ckpt
    if at == 0 and found:
        return points.read(folder / "points", found[0], str(folder))
    raise ValueError(f"name={name!r}: no checkpoint to fork from (the run was recorded live without periodic "
                     f"checkpoints and never saved: store.track(run, every=...) keeps them)")


def _fresh(cls, ckpt: dict[str, Any], where: str, build: dict[str, Any]):
    """Step 0: a new run of the same model, data and seed with the initial settings is the parent at step 0."""
    initial = settings_at(ckpt["initial_settings"] or {}, [])
    ckpt = {**ckpt, "settings": {k: initial[k] for k in cls.SETTABLE if k in initial},
            "optimizer_hparams": {k: v for k, v in initial.items() if k not in cls.SETTABLE and k not in _EXTRA},
            "schedule": initial.get("schedule", "constant"), "pruning": initial.get("pruning")}
    kw = dict(build)
    model, data = kw.pop("model", None), kw.pop("data", None)
    if model is None and ckpt["model_spec"] is None:
        raise ValueError(f"{where}: this run trained your own model: pass model=<a fresh instance of it>")
    if data is None and ckpt["data_spec"] is None:
        raise ValueError(f"{where}: this run trained on your own data: pass data=<the same data>")
    run = cls(model=model if model is not None else tuple(ckpt["model_spec"]),
              data=data if data is not None else tuple(ckpt["data_spec"]), seed=ckpt["seed"],
              **ckpt["settings"], **ckpt["optimizer_hparams"], schedule=ckpt["schedule"], pruning=ckpt["pruning"], **kw)
    run.parent = ckpt["parent"]
    return run
