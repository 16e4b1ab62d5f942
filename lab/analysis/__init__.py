"""Analyses over (model, loss_fn, data), usable with or without a Run: landscapes, Hessian, spectra.

`model` is any nn.Module, `loss_fn` a callable (outputs, targets) -> scalar, and `data` an (X, y)
pair or a DataLoader. Submodules load on first use, so `import trainlab` stays quick and a
training script pays for SciPy or Numba only when it asks for an analysis.
"""
from __future__ import annotations

import importlib

_MODULES = ("landscape", "hessian", "spectrum", "gradients", "signal", "transfer")


def __getattr__(name: str):
    if name in _MODULES:
        return importlib.import_module(f".{name}", __name__)
    if name == "intrinsic_dimension":
        return importlib.import_module(".intrinsic", __name__).intrinsic_dimension
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return [*_MODULES, "intrinsic_dimension"]
