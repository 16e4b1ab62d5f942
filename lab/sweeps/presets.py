"""Built-in studies as sweep presets: a base configuration and a grid, for `trainlab.sweep(**preset(...))`.

    sw = trainlab.sweep(**presets.build("width_lr", steps=200))
    sw = trainlab.sweep(**presets.build("lr_optimizer", {"data": "moons"}, steps=300))  # another base

Each takes the settings it does not vary from `base` (default: an MLP on digits) and returns
{"base": ..., "grid": ..., "steps": ...}. `presets` is a Registry: `presets.names()` lists them, and each
entry declares its options (steps, and what it varies).
"""
from __future__ import annotations

from typing import Any

import numpy as np

import param

from ..registry import Registry

presets = Registry("sweep preset")
BASE = {"model": ("mlp", {"width": 64}), "data": "digits", "optimizer": "sgd"}
_LRS = [float(x) for x in np.round(10.0 ** np.arange(-4, 0.01, 0.5), 6)]  # 1e-4 ... 1, two per decade


def _merge(base: dict | None, steps: int, grid: dict, **fixed) -> dict[str, Any]:
    return {"base": {**BASE, **(base or {}), **fixed}, "grid": grid, "steps": int(steps)}


def _steps(default: int) -> param.Integer:
    return param.Integer(default, bounds=(1, None), doc="training steps per run")


@presets.register("lr_optimizer", steps=_steps(300),
                  optimizers=param.List(["sgd", "adam", "adamw", "lion"], item_type=str, doc="the optimizers compared"))
def lr_optimizer(base=None, steps=300, optimizers=("sgd", "adam", "adamw", "lion")):
    """lr sensitivity per optimizer: the final loss against lr (1e-4 ... 1), one curve per optimizer."""
    return _merge(base, steps, {"optimizer": list(optimizers), "lr": _LRS})


@presets.register("batch_lr", steps=_steps(300))
def batch_lr(base=None, steps=300):
    """Batch size × lr: where the best lr goes as the batch grows (linear scaling, then not)."""
    return _merge(base, steps, {"batch_size": [16, 32, 64, 128, 256], "lr": _LRS})


@presets.register("width_lr", steps=_steps(200), widths=param.List([32, 64, 128, 256], item_type=int),
                  base_width=param.Integer(32, bounds=(1, None), doc="where μP equals SP"))
def width_lr(base=None, steps=200, widths=(32, 64, 128, 256), base_width=32):
    """μ-Transfer as a sweep: width × lr under SP and μP (Adam); under μP the best lr stays as width grows."""
    b = dict(base or {})
    name, options = b.pop("model", BASE["model"])
    model = (name, {**options, "base_width": int(base_width)})
    return _merge(b, steps, {"model.parametrization": ["sp", "mup"], "model.width": [int(w) for w in widths],
                             "lr": [float(2.0 ** k) for k in range(-12, -3)]}, model=model, optimizer="adam")


@presets.register("sparsity_criterion", steps=_steps(300),
                  sparsities=param.List([0.5, 0.8, 0.9, 0.95, 0.98], item_type=float, doc="final sparsities"),
                  methods=param.List(["random", "magnitude", "snip"], item_type=str, doc="pruning criteria"))
def sparsity_criterion(base=None, steps=300, sparsities=(0.5, 0.8, 0.9, 0.95, 0.98),
                       methods=("random", "magnitude", "snip")):
    """The pruning lab's study: accuracy against sparsity for each criterion, pruned at init at matched
    (ERK) layer ratios, so only *which* weights each criterion keeps differs."""
    pruning = (methods[0], {"scope": "layer", "allocation": "erk", "schedule": "oneshot"})  # the method is its name
    return _merge(base, steps, {"pruning": list(methods), "pruning.sparsity": [float(s) for s in sparsities]},
                  pruning=pruning, lr=0.1, momentum=0.9)
