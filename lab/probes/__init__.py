"""Probes: the live instruments. Each measures the run every k steps and declares what it writes.

One module per family: `steps` (gradient norm, update ratio, effective step), `internals` (the
optimizer's scale-invariant norms and second moments), `boundary`, `curvature` (sharpness, group
losses), `noise` (gradient noise), `normalization` (BatchNorm's batch noise, effective lr), `spectrum` (weight spectra), `pruning` (sparsity), `signal` (signal propagation) and `trajectory` (the path for the
landscape's PCA plane). Probes call the analyses in `trainlab.analysis`; a new lab adds its own module.
"""
from .base import Columns, Probe, default_probes
from .boundary import DecisionBoundary
from .internals import ScaleInvariantNorm, SecondMoment, scale_invariant_layers, second_moments
from .normalization import BatchStatNoise, EffectiveLR
from .steps import DeadUnits, EffectiveStep, GradNorm, UpdateRatio


def __getattr__(name: str):
    # these load SciPy or Numba with their analyses: only when asked for
    lazy = {"Sharpness": "curvature", "GroupLoss": "curvature", "GradientNoise": "noise",
            "SpectrumProbe": "spectrum", "SignalPropagation": "signal", "TrajectoryProbe": "trajectory", "SparsityProbe": "pruning"}
    if name in lazy:
        import importlib

        return getattr(importlib.import_module(f".{lazy[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["BatchStatNoise", "Columns", "DeadUnits", "DecisionBoundary", "EffectiveLR", "EffectiveStep", "GradNorm", "GradientNoise", "GroupLoss", "Probe",
           "ScaleInvariantNorm", "SecondMoment", "Sharpness", "SignalPropagation", "SparsityProbe", "SpectrumProbe", "TrajectoryProbe", "UpdateRatio",
           "default_probes", "scale_invariant_layers", "second_moments"]
