"""Analyses of a live run, computed now on a copy of it while it goes on training.

Every function here has one signature, `fn(run, *, progress, **options)`, and returns the results
as `{snapshot name: value}` (a generator yields such dicts as they are ready: the landscape's coarse
grid before its fine one). `compute(fn, run, ...)` runs one and publishes every result as a history
snapshot at the step the copy was taken, which is how a dashboard's job and a notebook get them
alike; panels draw what the history holds. Values are data only (arrays, numbers, names): what a
plot makes of them (colours, labels) is the widget's.
"""
from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .jobs import Progress, as_progress
from .prune.masks import load_state

if TYPE_CHECKING:
    from .run import Run

HESSIAN = {"top": "hessian_top", "trace": "hessian_trace", "density": "hessian_density"}
SPECTRUM = "esd_analysis"
LANDSCAPE, LINE = "landscape", "landscape/line"
INTRINSIC = "intrinsic"
RANGE_TEST = "lr_range_test"
COMPACT = "compact_preview"
REPAIR = "prune_repair"


def compute(fn: Callable[..., Any], run: Run, *, progress: bool | Progress = True, **options) -> dict[str, Any]:
    """Run `fn(run, progress=..., **options)` and publish each result in the run's history; returns them all.
    A result that is a dict carries the job's settings under "settings" (`settings(fn, options)`)."""
    step = run.steps
    used = settings(fn, options)
    out = fn(run, progress=progress, **options)
    parts = out if inspect.isgenerator(out) else iter([out])
    published: dict[str, Any] = {}
    for results in parts:
        for name, value in results.items():
            if isinstance(value, dict):
                value = {**value, "settings": used}
            run.history.put_snapshot(name, step, value)
            published[name] = value
    return published


def settings(fn: Callable[..., Any], options: dict[str, Any]) -> dict[str, Any]:
    """What a job ran with: `fn`'s keyword defaults updated by `options`, the plain values only (numbers, text,
    None, tuples of those), without `progress` and `workers` (how it ran, not what it computed)."""
    plain = (type(None), bool, int, float, str)
    given = {name: p.default for name, p in inspect.signature(fn).parameters.items()
             if p.kind is p.KEYWORD_ONLY and p.default is not p.empty}
    out = {}
    for name, value in {**given, **options}.items():
        if name in ("progress", "workers"):
            continue
        if isinstance(value, np.generic):
            value = value.item()
        if isinstance(value, (tuple, list)):
            value = tuple(v.item() if isinstance(v, np.generic) else v for v in value)
            if not all(isinstance(v, plain) for v in value):
                continue
        elif not isinstance(value, plain):
            continue  # an object (the landscape's trajectory probe) is no setting to write down
        out[name] = value
    return out


# ---- curvature and spectra -------------------------------------------------------------------
def hessian(run: Run, *, progress: bool | Progress = True, what: str = "top", k: int = 5, samples: int = 64,
            vectors: int = 4, iters: int = 64, max_examples: int = 2048) -> dict[str, Any]:
    """The top-k eigenvalues, the trace or the density of the loss's Hessian at the run's current weights,
    on the fixed batch the Sharpness probe uses (up to `max_examples` training examples)."""
    from .analysis import hessian as H

    if what not in HESSIAN:
        raise ValueError(f"what must be one of {', '.join(map(repr, HESSIAN))}, got {what!r}")
    model = run.model_copy()
    data = run.data.fixed_sample(max_examples, device=run.device)
    if what == "top":
        values = H.top_eigenvalues(model, run.loss_fn, data, k=k, progress=as_progress(progress, 1, "top eigenvalues"))
        return {HESSIAN[what]: {"rank": np.arange(1, len(values) + 1), "eigenvalue": values}}
    if what == "trace":
        est, err = H.trace(model, run.loss_fn, data, samples=samples, progress=progress)
        return {HESSIAN[what]: {"trace": np.array([est]), "stderr": np.array([err])}}
    grid, dens = H.density(model, run.loss_fn, data, vectors=vectors, iters=iters, progress=progress)
    return {HESSIAN[what]: {"grid": grid, "density": dens}}


def spectrum(run: Run, *, progress: bool | Progress = True, farms: bool = False, **options) -> dict[str, Any]:
    """Every weight matrix's ESD, power-law fit and MP bulk (FARMS too), ready to draw; nothing if cancelled."""
    from .analysis import spectrum as S

    frame = S.esd(run.model_copy(), farms=farms, progress=progress, **options)
    if frame.attrs["cancelled"]:
        return {}  # a half-analysed model would read as the whole: keep the last complete one
    eigenvalues = {r["name"]: r["eigenvalues"] for r in frame.to_dict("records")}
    return {SPECTRUM: {"layers": S.views(frame), "eigenvalues": eigenvalues}}


# ---- landscapes --------------------------------------------------------------------------------
def landscape(run: Run, *, progress: bool | Progress = True, directions: str = "pca", mode: str = "eval",
              coarse: int = 11, resolution: int = 51, span: float = 1.0, samples: int | None = None,
              preview: int | None = 512, trajectory=None) -> Iterator[dict[str, Any]]:
    """A quick coarse grid (on a `preview` subset), then the fine grid, then the line from the initial to
    the current weights.

    `directions="pca"` takes the plane of the run's recorded path (`trajectory`: a TrajectoryProbe; the
    plane is centred on its last point) once it has 3 points, a random filter-normalized plane until then.
    A grid cut short by Cancel is not published, so the last complete picture stays.
    """
    from .analysis import landscape as L

    model, copied = run.model_copy(), run.steps
    dirs, extra, centre = ("filter" if directions == "pca" else directions), {"span": span}, copied
    if directions == "pca" and trajectory is not None:
        steps, points = trajectory.points()
        if len(steps) >= 3:
            dirs, extra, centre = L.pca_trajectory(model, steps, points), {}, int(steps[-1])
    n = run.data.n_examples
    for size, subset in ((coarse, preview), (resolution, samples)):
        subset = None if subset is None or subset >= n else subset  # a subset as large as the data is the data
        res = L.plane(model, run.loss_fn, run.data, steps=size, directions=dirs, mode=mode, samples=subset,
                      progress=progress, **extra)
        if not res.complete:
            return
        yield {LANDSCAPE: {**res.to_dict(), "step": centre}}
    # from a little before the initial weights (alpha 0) to a little past the current ones (alpha 1)
    res = L.line(model, run.loss_fn, run.data, start=run.initial_state, steps=2 * coarse + 1, span=(-0.25, 1.25),
                 mode=mode, samples=samples, progress=progress)
    if res.complete:
        yield {LINE: {"alpha": res.alpha, "loss": res.loss, "step": copied}}


def intrinsic(run: Run, *, progress: bool | Progress = True, steps: int = 100, max_dim: int = 512) -> dict[str, Any]:
    """Intrinsic dimension from the run's initial weights, over d = 1, 2, 4, ... up to `max_dim`."""
    from .analysis.intrinsic import intrinsic_dimension

    model = run.model_copy()
    load_state(model, run.initial_state)  # the subspace is anchored at the initialization (masks as they were then)
    n = sum(p.numel() for p in run.params)
    dims = [d for d in (2**k for k in range(20)) if d <= min(max_dim, n)]
    val = (run.data.X_val, run.data.y_val) if run.data.X_val is not None else None
    res = intrinsic_dimension(model, run.loss_fn, run.data, dims=dims, steps=steps, val_data=val, progress=progress)
    return {INTRINSIC: {**res.to_dict(), "step": run.steps}}


# ---- optimizer ----------------------------------------------------------------------------------
def range_test(run: Run, *, progress: bool | Progress = True, start: float = 1e-7, end: float = 10.0,
               steps: int = 200) -> dict[str, Any]:
    """The LR range test on a copy of the run: the sweep, its trend, the suggestion and where it sits on the curve."""
    from .lr_finder import lr_range_test

    r = lr_range_test(run, start=start, end=end, steps=steps, progress=progress)
    marks = [m for m in (("minimum", r.minimum), ("suggestion", r.suggestion)) if m[1] is not None]
    return {RANGE_TEST: {**r.as_dict(), "suggestion": r.suggestion, "minimum": r.minimum, "stopped": r.stopped,
                         "note": r.note, "optimizer": run.optimizer,
                         "marks": {"kind": [k for k, _ in marks], "lr": [v for _, v in marks],
                                   "loss": [float(np.interp(np.log(v), np.log(r.lrs), r.trend)) for _, v in marks]}}}


# ---- pruning ------------------------------------------------------------------------------------
def compact_preview(run: Run, *, progress: bool | Progress = True, ratio: float = 0.5, batch: int = 64,
                    repeats: int = 20) -> dict[str, Any]:
    """The run's model compacted at channel `ratio` (`Compactor(run.model_copy()).preview(ratio)`): parameters,
    MACs per example and measured CPU latency on a batch of `batch` training examples, beside the dense model's."""
    from . import prune

    p = as_progress(progress, 3, f"compacting at ratio {ratio:g}")
    model = run.model_copy()
    x = run.data.fixed_sample(batch, run.seed, run.device)[0]
    small = prune.Compactor(model, x).preview(ratio)
    p.update()
    r = prune.report(model, small.model, x, repeats=repeats)  # forwards of both interleaved
    p.update(2)
    u = prune.unstructured_report(model)  # the zeros pruning left: counted, not skipped
    return {COMPACT: {"ratio": float(ratio), "batch": int(x.shape[0]), "params": small.params,
                      "params_dense": small.params_dense, "macs": small.macs, "macs_dense": small.macs_dense,
                      "latency": r.latency, "latency_dense": r.latency_dense, "latency_ratio": r.latency_ratio,
                      "unstructured": {"params": u.params, "zeros": u.zeros, "sparsity": u.sparsity,
                                       "speedup": u.speedup}}}


REPAIR_APPLY = ("better", "always", "never")


def repair(run: Run, *, progress: bool | Progress = True, cycles: int = 50, apply: str = "better") -> dict[str, Any]:
    """DSnoT-style repair (`trainlab.prune.repair`) of the run's pruned Linear layers, against their weights right
    before the newest pruning, on a copy: the expected reconstruction error per layer, the calibration loss and the
    outputs' error against those weights, before and after. Then the repaired masks go to the live run between
    two steps: `apply="better"` only if the calibration loss fell (DSnoT shrinks its expected error, which is not
    the loss), "always", or "never" (a preview). Refused, the run as it was, if its masks changed meanwhile; a
    cancelled repair changes nothing."""
    import copy

    import torch

    from .functional import eval_mode
    from .jobs import Cancelled
    from .prune.masks import masks, remove_masks
    from .prune.repair import repair as dsnot
    from .prune.runtime import CALIBRATION

    if apply not in REPAIR_APPLY:
        raise ValueError(f"apply={apply!r} rejected: one of {', '.join(map(repr, REPAIR_APPLY))}")
    p = as_progress(progress, 3, "repairing the masks (DSnoT)")
    with run.between_steps():  # the model, its masks and the weights before the pruning, all of one moment
        pruning = run.pruning_state
        if pruning is None or not masks(run.model):
            raise ValueError("repair needs a pruned run: turn pruning on first")
        if pruning.dense is None:
            raise ValueError("repair needs the weights from right before the pruning, which the run keeps from its "
                             "newest pruning in this session (a loaded run has none): prune again, then repair")
        if pruning.sparsifier.beta:
            raise ValueError("repair waits for the mask decay to end (β > 0: the pruned weights still count)")
        model, dense = copy.deepcopy(run.model), {k: v.clone() for k, v in pruning.dense.items()}
        seen = {k: v.clone() for k, v in masks(run.model).items()}
        copied = run.steps
    x, y = run.data.fixed_sample(CALIBRATION, run.seed, run.device)
    reference = copy.deepcopy(model)  # the weights before the pruning, unmasked
    remove_masks(reference)
    reference.load_state_dict({**reference.state_dict(), **dense})

    def measure(m):
        with torch.no_grad(), eval_mode(m), eval_mode(reference):
            out = m(x)
            return float(run.loss_fn(out, y)), float((out - reference(x)).pow(2).mean())

    loss_before, mse_before = measure(model)
    p.update()
    ratio = dsnot(model, dense, x, cycles=cycles)
    p.update()
    if not ratio:
        raise ValueError("repair works on pruned nn.Linear layers (DSnoT's setting); this run prunes none")
    loss_after, mse_after = measure(model)
    new = {k: v.clone() for k, v in masks(model).items() if k in ratio}
    swapped = sum(int((new[k] & ~seen[k]).sum()) for k in new)
    result = {"step": copied, "layers": list(ratio), "error_ratio": np.array(list(ratio.values())),
              "loss_before": loss_before, "loss_after": loss_after, "mse_before": mse_before, "mse_after": mse_after,
              "swapped": swapped, "applied": False, "apply": apply}
    if p.cancelled:
        raise Cancelled("repair cancelled: nothing applied")
    if apply == "always" or (apply == "better" and loss_after < loss_before):
        note = (f"repair (DSnoT): {swapped} weights regrown and as many pruned; calibration loss "
                f"{loss_before:.4g} -> {loss_after:.4g} (computed at step {copied})")
        with run.between_steps():
            pruning.apply_repair(run, seen, new, note)
        result["applied"] = True
    p.update()
    return {REPAIR: result}


# ---- normalization ------------------------------------------------------------------------------
NORM_COMPARISON = "norm_comparison"


def norm_comparison(run: Run, *, progress: bool | Progress = True, norms: tuple[str, ...] = ("batchnorm", "groupnorm",
                    "layernorm", "none"), steps: int = 300) -> Iterator[dict[str, Any]]:
    """The run's model trained afresh with each normalization at the run's batch size and settings, one
    `trainlab.experiment` configuration each: their training-loss curves, published as each one finishes
    (BatchNorm's loss falls behind the batch-independent norms as the batch shrinks: the micro-batch effect)."""
    from .experiment import train
    from .norms import norms as registry

    if run.model_spec is None or "norm" not in run.model_spec[1]:
        raise ValueError("norm_comparison rebuilds the model with each normalization: it needs a registered "
                         "model with a norm option (Run(model=('mlp', {...}))), not the user's own nn.Module")
    unknown = [n for n in norms if n not in registry.names()]
    if unknown:
        raise ValueError(f"norms={unknown!r}: not registered normalizations; valid: {', '.join(registry.names())}")
    if run.data.spec is None:
        raise ValueError("norm_comparison trains fresh runs on the same data: it needs registered data (a name)")
    p = as_progress(progress, len(norms), "training one model per normalization")
    name, options = run.model_spec
    base = {"model": (name, options), "data": run.data.spec, "seed": run.seed, "steps": int(steps),
            **run.settings()}  # the run's own settings and its optimizer's
    curves: dict[str, Any] = {}
    for norm in norms:
        row = train({**base, "model": (name, {**options, "norm": norm})}, stop=lambda: p.cancelled)
        if row["status"] == "cancelled":
            return  # the curves finished so far stay published
        h = row["history"]
        curves[norm] = {"step": h["step"].to_numpy(float), "train_loss": h["train_loss"].to_numpy(float),
                        "status": row["status"], "val_loss": row.get("val_loss", float("nan"))}
        p.update()
        yield {NORM_COMPARISON: {"batch_size": int(run.batch_size), "curves": dict(curves)}}


FLUCTUATIONS = "fluctuations"


def fluctuations(run: Run, *, progress: bool | Progress = True, depths: tuple[int, ...] = (1, 2, 4, 8),
                 inits: tuple[str, ...] = ("kaiming", "orthogonal"), seeds: int = 8, m: int = 16) -> dict[str, Any]:
    """Across-seed fluctuations at initialization of the run's model family (its width and activation) against
    depth, for each initializer: the empirical NTK's and the last hidden pre-activations' relative variance."""
    from .analysis.fluctuations import depth_study

    if run.model_spec is None or "depth" not in run.model_spec[1]:
        raise ValueError("fluctuations rebuilds the model at several depths: it needs a registered model with a "
                         "depth option (Run(model=('mlp', {...})))")
    name, options = run.model_spec
    frame = depth_study(name, run.data, list(depths), list(inits), seeds=seeds, m=m, progress=progress,
                        **{k: v for k, v in options.items() if k not in ("depth", "init")})
    return {FLUCTUATIONS: {c: frame[c].to_numpy() for c in frame.columns}}


# ---- initialization and parametrization ---------------------------------------------------------
SIGNAL, SIGNAL_INIT, COORD_CHECK, MU_TRANSFER = "signal", "signal_init", "coord_check", "mu_transfer"


def _signal_frame(frame) -> dict[str, Any]:
    return {c: (frame[c].to_numpy(dtype=object) if c == "layer" else frame[c].to_numpy(dtype=np.float64))
            for c in ("layer", "depth", "mean", "std", "grad_norm", "theory_std")}


def signal_at_init(run: Run, *, progress: bool | Progress = True, n: int = 256) -> dict[str, Any]:
    """Signal propagation through the run's model at its initial weights (beside the live probe's, now)."""
    from .analysis.signal import propagation

    model = run.model_copy()
    load_state(model, run.initial_state)  # the model at init: without the masks pruning added since
    x = run.data.fixed_sample(n, seed=0, device=run.device)
    return {SIGNAL_INIT: _signal_frame(propagation(model, x, loss_fn=run.loss_fn, n=n))}


def _width_key(options: dict) -> str:
    from .models import WIDTH_OPTIONS

    key = next((k for k in WIDTH_OPTIONS if k in options), None)
    if key is None:
        raise ValueError(f"this model has no width option ({', '.join(WIDTH_OPTIONS)}) to vary")
    return key


def coord_check(run: Run, *, progress: bool | Progress = True, widths: tuple[int, ...] = (64, 128, 256, 512, 1024, 2048),
                steps: int = 3, parametrizations: tuple[str, ...] = ("sp", "mup")) -> dict[str, Any]:
    """μP's coordinate check on the run's model family (its options, width varied) under each parametrization,
    with the run's optimizer and lr: each layer's mean |output| after `steps` steps against width."""
    from .analysis.signal import coord_check as check

    if run.model_spec is None:
        raise ValueError("the coordinate check rebuilds the model at several widths: it needs a registered model")
    name, options = run.model_spec
    key = _width_key(options)
    base = options.get("base_width") or min(widths)
    p = as_progress(progress, len(parametrizations), "coordinate check")
    out: dict[str, Any] = {}
    for par in parametrizations:
        if p.cancelled:
            return {}
        frame = check(lambda w: (name, {**options, key: int(w), "parametrization": par, "base_width": base}), widths,
                      data=run.data.spec or run.data, steps=steps, optimizer=run.optimizer, lr=run.lr,
                      batch_size=min(run.batch_size, 64), seed=run.seed, progress=False)
        last = frame[frame.t == frame.t.max()]
        out[par] = {"width": last["width"].to_numpy(float), "module": last["module"].to_numpy(object),
                    "l1": last["l1"].to_numpy(float)}
        p.update()
    return {COORD_CHECK: {"parametrizations": out, "steps": steps, "base_width": base}}


def _as_they_finish(fn: Callable, configs: list, every: int, p: Progress, workers: int | None) -> Iterator[list]:
    """`fn` over `configs` on worker processes (`trainlab.pool.imap`): the results so far, in the configurations'
    order, every `every` results and once all are in (a cancelled job stops at the last batch published)."""
    from .pool import imap

    results: dict[int, Any] = {}
    for i, out in imap(fn, configs, workers=workers, progress=p):
        results[i] = out
        p.update()
        if len(results) % every == 0 or len(results) == len(configs):
            yield [results[k] for k in sorted(results)]


def _lr_curves(rows: list[dict], group: str, by: str, total: int) -> dict[str, Any]:
    """An lr sweep's snapshot: its rows (`group`, `by`, lr, losses), the best lr per (`group`, `by`) by the mean
    training loss, and how many runs of `total` are in."""
    from .analysis.transfer import best_lr

    frame = pd.DataFrame(rows)
    return {"rows": {c: frame[c].to_numpy() for c in (group, by, "lr", "mean_train_loss", "loss")},
            "best": best_lr(frame, by=by, metric="mean_train_loss", group=group).to_dict("list"),
            "done": len(rows), "total": total}


def mu_transfer(run: Run, *, progress: bool | Progress = True, widths: tuple[int, ...] = (32, 64, 128, 256),
                lrs: tuple[float, ...] = tuple(2.0 ** np.arange(-12, -3)), steps: int = 60,
                parametrizations: tuple[str, ...] = ("sp", "mup"), workers: int | None = None) -> Iterator[dict[str, Any]]:
    """μ-Transfer on the run's model family and optimizer: one short run per (parametrization, width, lr) on
    `workers` processes (default: the CPUs this process may use; `trainlab.pool`), the loss against lr per width
    published as the runs finish, every `len(lrs)` of them (under μP the best lr stays put as width grows)."""
    from .analysis.transfer import configurations, run_config

    if run.model_spec is None or run.data.spec is None:
        raise ValueError("μ-Transfer trains the model afresh at several widths: it needs a registered model and data")
    name, options = run.model_spec
    _width_key(options)
    configs = configurations(name, widths, lrs, parametrizations, base_width=min(widths), seeds=(run.seed,),
                             data=run.data.spec, optimizer=run.optimizer, steps=steps, batch_size=run.batch_size,
                             model_options={k: v for k, v in options.items()
                                            if k not in ("width", "parametrization", "base_width")},
                             hparams=run.optimizer_settings())
    p = as_progress(progress, len(configs), "μ-Transfer: one run per width and lr")
    for rows in _as_they_finish(run_config, configs, len(lrs), p, workers):
        yield {MU_TRANSFER: _lr_curves(rows, "parametrization", "width", len(configs))}


DEPTH_TRANSFER = "depth_transfer"


def depth_transfer(run: Run, *, progress: bool | Progress = True, depths: tuple[int, ...] = (2, 4, 8, 16),
                   lrs: tuple[float, ...] | None = None, branches: tuple[str, ...] = ("1", "1/sqrt(L)", "1/L"),
                   steps: int = 80, width: int = 64, ends_lr: float | None | str = "auto",
                   workers: int | None = None) -> Iterator[dict[str, Any]]:
    """Depth transfer (`transfer.depth_sweep`) on the run's data, optimizer and seed, whatever the run's model: the
    residual MLP, one short run per (branch multiplier, depth, lr) on `workers` processes, the blocks' lr swept
    while the embedding and read-out train at `ends_lr` (None: at the swept lr too); the loss against lr per depth
    and the best lr per (branch, depth), published every `len(lrs)` runs. The defaults are the measured SGD case
    (tests/test_transfer.py: blocks' lr 2^-8 … 2^6, ends 0.25; only branches × 1/sqrt(L) keep their best lr across
    depth), moved by the power of two nearest the run's optimizer's usual lr over SGD's (Adam's grid is 2^-14 …
    2^0), so the sweep brackets its minimum whatever the optimizer."""
    from .analysis.transfer import depth_configurations, run_config
    from .optimizers import optimizers

    if run.data.spec is None:
        raise ValueError("Depth transfer trains a residual MLP afresh at several depths on the run's data: it needs "
                         "registered data (Run(data='digits')), not the user's own tensors")
    shift = 2.0 ** round(math.log2(optimizers[run.optimizer].meta.usual_lr / optimizers["sgd"].meta.usual_lr))
    lrs = tuple(float(lr) for lr in 2.0 ** np.arange(-8, 7) * shift) if lrs is None else lrs
    ends_lr = 0.25 * shift if isinstance(ends_lr, str) and ends_lr == "auto" else ends_lr
    configs = depth_configurations(depths, lrs, branches, width, seeds=(run.seed,), data=run.data.spec,
                                   optimizer=run.optimizer, steps=steps, batch_size=run.batch_size, ends_lr=ends_lr,
                                   hparams=run.optimizer_settings())
    p = as_progress(progress, len(configs), "Depth transfer: one run per branch, depth and lr")
    for rows in _as_they_finish(run_config, configs, len(lrs), p, workers):
        yield {DEPTH_TRANSFER: _lr_curves(rows, "branch", "depth", len(configs))}


SHARPNESS_CURVES = "sharpness_curves"


def super_consistency(run: Run, *, progress: bool | Progress = True, widths: tuple[int, ...] = (32, 128, 512),
                      steps: int = 100, parametrizations: tuple[str, ...] = ("mup", "sp"), every: int | None = None,
                      max_examples: int = 512, workers: int | None = None) -> Iterator[dict[str, Any]]:
    """Super consistency (Noci et al. 2024) on the run's model family, data, SGD-like optimizer and lr: one run per
    (parametrization, width) measuring the sharpness every `every` steps (default: 25 measurements), on `workers`
    processes; the curves (`transfer.sharpness_run`: lr-scaled under μP) and each parametrization's late-time spread
    across widths, published as the runs finish. Under μP the curves coincide; under SP they part."""
    from .analysis.transfer import configurations, sharpness_run, sharpness_spread
    from .parametrizations import SGD_LIKE

    if run.model_spec is None or run.data.spec is None:
        raise ValueError("Super consistency trains the model afresh at several widths: it needs a registered model "
                         "and data")
    if run.optimizer not in SGD_LIKE:
        raise ValueError(f"Super consistency compares the sharpness an SGD step sees against 2/lr; the run's optimizer "
                         f"is {run.optimizer!r}: use an SGD-like one ({', '.join(sorted(SGD_LIKE))})")
    name, options = run.model_spec
    _width_key(options)
    every = max(1, steps // 25) if every is None else int(every)
    measure = {"measure": {"Sharpness": {"every": every, "max_examples": int(max_examples)}}}
    configs = configurations(name, widths, [run.lr], parametrizations, base_width=min(widths), seeds=(run.seed,),
                             data=run.data.spec, optimizer=run.optimizer, steps=steps, batch_size=run.batch_size,
                             model_options={k: v for k, v in options.items()
                                            if k not in ("width", "parametrization", "base_width")},
                             hparams={**run.optimizer_settings(), **measure})
    p = as_progress(progress, len(configs), "Super consistency: one run per width, measuring the sharpness")
    for frames in _as_they_finish(sharpness_run, configs, 1, p, workers):
        curves = pd.concat(frames, ignore_index=True)
        yield {SHARPNESS_CURVES: {"curves": {c: curves[c].to_numpy() for c in ("parametrization", "width", "step",
                                                                                "sharpness", "threshold")},
                                  "spread": sharpness_spread(curves).to_dict(), "done": len(frames),
                                  "total": len(configs)}}


# ---- results as tables ---------------------------------------------------------------------------
# Each published result as a tidy frame (a row per point, named columns) for a download or a notebook:
# `frame(run, name)` reads the newest snapshot, `table(name, value, step)` turns one value.
def _landscape(v: dict) -> pd.DataFrame:
    from .analysis.landscape import grid_frame

    return grid_frame(v["x"], v["y"], v["loss"], v.get("stderr")).assign(
        kind=v["kind"], mode=v["mode"], samples=v["samples"], centred_at=v["step"])


def _line(v: dict) -> pd.DataFrame:
    from .analysis.landscape import line_frame

    return line_frame(v["alpha"], v["loss"], v.get("stderr")).assign(ends_at=v["step"])


def _intrinsic(v: dict) -> pd.DataFrame:
    from .analysis.intrinsic import dims_frame

    return dims_frame(v).assign(metric=v["metric"], projection=v["projection"], d_int=v["d_int"],
                                complete=v["complete"])


def _range_test(v: dict) -> pd.DataFrame:
    from .lr_finder import sweep_frame

    return sweep_frame(v).assign(optimizer=v["optimizer"], suggestion=v["suggestion"], minimum=v["minimum"],
                                 stopped=v["stopped"], note=v["note"])


def _columns(v: dict, names: tuple[str, ...], **renamed: str) -> pd.DataFrame:
    return pd.DataFrame({renamed.get(c, c): np.asarray(v[c]) for c in names})


_FIT = ("alpha", "xmin", "ks_distance", "alpha_hill", "num_spikes", "mp_bulk_edge", "mp_sigma2", "q")


def _spectrum_fits(v: dict) -> pd.DataFrame:
    """A row per weight matrix: its shape, power-law fit, MP bulk, norms, and FARMS's fit (NaN without)."""
    rows = []
    for layer, view in v["layers"].items():
        farms = view["farms"] or {}
        rows.append({"layer": layer, "shape": "x".join(map(str, view["shape"])),
                     **{k: view["plain"][k] for k in _FIT}, "spectral_norm": view["spectral_norm"],
                     "stable_rank": view["stable_rank"],
                     **{f"farms_{k}": farms.get(k, np.nan) for k in ("alpha", "xmin", "ks_distance", "alpha_hill")}})
    return pd.DataFrame(rows)


def _spectrum_eigenvalues(v: dict) -> pd.DataFrame:
    """A row per eigenvalue of each weight matrix's WᵀW/N, ascending (rank 1 the smallest)."""
    parts = [pd.DataFrame({"layer": layer, "rank": np.arange(1, len(e) + 1), "eigenvalue": np.asarray(e, float)})
             for layer, e in v.get("eigenvalues", {}).items()]  # a result saved before they were kept has none
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame({"layer": [], "rank": [], "eigenvalue": []})


def _compact(v: dict) -> pd.DataFrame:
    plain = {k: x for k, x in v.items() if k not in ("unstructured", "settings")}
    return pd.DataFrame([{**plain, **{f"unstructured_{k}": x for k, x in v["unstructured"].items()}}])


def _repair(v: dict) -> pd.DataFrame:
    scalars = ("loss_before", "loss_after", "mse_before", "mse_after", "swapped", "applied", "apply")
    return pd.DataFrame({"layer": list(v["layers"]), "error_ratio": np.asarray(v["error_ratio"], float),
                         **{k: v[k] for k in scalars}})


def _norm_comparison(v: dict) -> pd.DataFrame:
    parts = [pd.DataFrame({"norm": norm, "step": np.asarray(c["step"]).astype(np.int64), "train_loss": c["train_loss"], "status": c["status"],
                           "val_loss": c["val_loss"]}) for norm, c in v["curves"].items()]
    return pd.concat(parts, ignore_index=True).assign(batch_size=v["batch_size"])


def _fluctuations(v: dict) -> pd.DataFrame:
    return pd.DataFrame({c: np.asarray(x) for c, x in v.items() if c != "settings"})


def _coord_check(v: dict) -> pd.DataFrame:
    parts = [pd.DataFrame({"parametrization": par, "width": np.asarray(d["width"], float).astype(np.int64),
                           "module": d["module"], "l1": d["l1"]}) for par, d in v["parametrizations"].items()]
    return pd.concat(parts, ignore_index=True).assign(steps=v["steps"], base_width=v["base_width"])


def _lr_sweep(group: str, by: str) -> Callable[[dict], pd.DataFrame]:
    """An lr sweep's runs (`_lr_curves`) as rows, each with the best lr of its (`group`, `by`) line."""
    def build(v: dict) -> pd.DataFrame:
        rows = pd.DataFrame(v["rows"])
        best = pd.DataFrame(v["best"])[[group, by, "best_lr"]]
        return rows.merge(best, on=[group, by], how="left").assign(done=v["done"], total=v["total"])
    return build


def _sharpness(v: dict) -> pd.DataFrame:
    curves = pd.DataFrame(v["curves"])
    return curves.assign(spread=curves["parametrization"].map(v["spread"]), done=v["done"], total=v["total"])


_PLANE = ("directions", "mode", "coarse", "resolution", "span", "samples", "preview")


@dataclass(frozen=True)
class Table:
    """A kind of result as a table: how a value becomes rows, the job's settings that apply, the snapshot it reads."""

    build: Callable[[dict], pd.DataFrame]
    settings: tuple[str, ...] | None = None  # None: every one
    snapshot: str | None = None  # None: the table's own name


TABLES: dict[str, Table] = {
    LANDSCAPE: Table(_landscape, _PLANE),
    LINE: Table(_line, _PLANE),
    INTRINSIC: Table(_intrinsic),
    RANGE_TEST: Table(_range_test),
    HESSIAN["top"]: Table(lambda v: _columns(v, ("rank", "eigenvalue")), ("k", "max_examples")),
    HESSIAN["trace"]: Table(lambda v: _columns(v, ("trace", "stderr")), ("samples", "max_examples")),
    HESSIAN["density"]: Table(lambda v: _columns(v, ("grid", "density"), grid="eigenvalue"),
                              ("vectors", "iters", "max_examples")),
    SPECTRUM: Table(_spectrum_fits),
    f"{SPECTRUM}/eigenvalues": Table(_spectrum_eigenvalues, snapshot=SPECTRUM),
    COMPACT: Table(_compact),
    REPAIR: Table(_repair),
    NORM_COMPARISON: Table(_norm_comparison),
    FLUCTUATIONS: Table(_fluctuations),
    SIGNAL_INIT: Table(lambda v: _columns(v, ("layer", "depth", "mean", "std", "grad_norm", "theory_std")).astype(
        {"layer": str, "depth": np.int64})),
    COORD_CHECK: Table(_coord_check),
    MU_TRANSFER: Table(_lr_sweep("parametrization", "width")),
    DEPTH_TRANSFER: Table(_lr_sweep("branch", "depth")),
    SHARPNESS_CURVES: Table(_sharpness),
}


def _table(name: str) -> Table:
    if name not in TABLES:
        raise ValueError(f"no table named {name!r}; valid: {', '.join(TABLES)}")
    return TABLES[name]


def latest(run: Run, name: str) -> tuple[int, Any] | None:
    """(step, value) of the newest result the table `name` reads (a key of TABLES), or None while there is none."""
    return run.history.snapshot(_table(name).snapshot or name)


def table(name: str, value: dict, step: int | None = None) -> pd.DataFrame:
    """The result `value` as the table `name`: its rows, then `computed_at` (the run's step the job copied) first
    when given, and the job's plain settings that apply as constant columns (a tuple of them is an axis the rows
    already hold; a setting named like a column of the result is the result's)."""
    t = _table(name)
    out = t.build(value)
    if step is not None:
        out.insert(0, "computed_at", int(step))
    for k, v in value.get("settings", {}).items():
        if (t.settings is None or k in t.settings) and k not in out.columns and not isinstance(v, tuple):
            out[k] = v
    return out


def frame(run: Run, name: str) -> pd.DataFrame | None:
    """The newest result of the table `name` as a tidy frame (`table`), or None while there is none."""
    got = latest(run, name)
    return None if got is None else table(name, got[1], got[0])
