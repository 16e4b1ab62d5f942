"""Optimizers by name, each with its hyperparameters declared once (bounds, soft bounds, log scale).

An entry builds a torch optimizer and maps its declared hyperparameters onto torch's param-group
keys, so construction and live changes go through the same mapping.
"""
from __future__ import annotations

from typing import Callable

import param
import torch

from .registry import LogNumber, Registry

optimizers = Registry("optimizer")


def _momentum(default=0.0):
    return param.Number(default, bounds=(0, 1), inclusive_bounds=(True, False), softbounds=(0, 0.99),
                        step=0.01, doc="momentum coefficient")


def _weight_decay(default=0.0):
    return param.Number(default, bounds=(0, None), softbounds=(0, 0.1), step=1e-4, doc="L2 penalty (decoupled for AdamW)")


def _beta(default, what):
    return param.Number(default, bounds=(0, 1), inclusive_bounds=(True, False), softbounds=(0, 0.9999),
                        step=0.001, doc=f"decay rate of the {what}")


def _eps(default=1e-8):
    return LogNumber(default, bounds=(0, None), inclusive_bounds=(False, True), softbounds=(1e-12, 1e-1),
                     doc="added to the denominator for numerical stability")


def _identity(hp: dict) -> dict:
    return hp


def _betas(hp: dict) -> dict:
    hp = dict(hp)
    hp["betas"] = (hp.pop("beta1"), hp.pop("beta2"))
    return hp


def _register(name: str, cls: type[torch.optim.Optimizer], lr: float, to_group: Callable[[dict], dict] = _identity,
              **params):
    """Register a torch.optim class with its usual lr; torch's own constructor does the cross-field checks."""

    def build(parameters, lr: float, **hp) -> torch.optim.Optimizer:
        return cls(parameters, lr=lr, **to_group(hp))

    build.__doc__ = (cls.__doc__ or name).strip().splitlines()[0]
    optimizers.register(name, extra={"cls": cls, "to_group": to_group, "lr": lr}, **params)(build)


_register("sgd", torch.optim.SGD, 0.05, momentum=_momentum(0.9), weight_decay=_weight_decay(),
          nesterov=param.Boolean(False, doc="Nesterov momentum (needs momentum > 0)"))
_register("adam", torch.optim.Adam, 1e-3, _betas, beta1=_beta(0.9, "first moment"), beta2=_beta(0.999, "second moment"),
          eps=_eps(), weight_decay=_weight_decay())
_register("adamw", torch.optim.AdamW, 1e-3, _betas, beta1=_beta(0.9, "first moment"), beta2=_beta(0.999, "second moment"),
          eps=_eps(), weight_decay=_weight_decay(0.01))
_register("rmsprop", torch.optim.RMSprop, 1e-3, alpha=_beta(0.99, "squared-gradient average"), eps=_eps(),
          momentum=_momentum(0.0), weight_decay=_weight_decay())
_register("adagrad", torch.optim.Adagrad, 1e-2, eps=_eps(1e-10), weight_decay=_weight_decay())


def check_hparams(name: str, lr: float, hp: dict) -> None:
    """Cross-field rules (Nesterov needs momentum, ...) checked by torch's own constructor on a dummy."""
    try:
        optimizers[name].build([torch.zeros(1, requires_grad=True)], lr=lr, **hp)
    except ValueError as e:
        raise ValueError(f"{name} rejects these settings: {e}") from None


def write_groups(opt: torch.optim.Optimizer, name: str, lr: float, hp: dict) -> None:
    """Apply hyperparameters to every param group; torch reads group[...] afresh at each step."""
    values = {"lr": lr, **optimizers[name].extra["to_group"](hp)}
    for group in opt.param_groups:
        group.update(values)
