"""trainlab: an interactive lab for deep-learning training dynamics (the UI-free core)."""
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("trainlab")
except PackageNotFoundError:  # run from a source tree without installing
    __version__ = "0.0.0"

from .data import Data, as_data, datasets  # noqa: E402
from .history import History  # noqa: E402
from .inits import inits  # noqa: E402
from .models import models  # noqa: E402
from .norms import norms  # noqa: E402
from .optimizers import optimizers  # noqa: E402
from .parametrizations import parametrizations  # noqa: E402
from .lr_finder import lr_range_test  # noqa: E402
from .probes import (DecisionBoundary, EffectiveStep, GradNorm, Probe, ScaleInvariantNorm,  # noqa: E402
                     SecondMoment, UpdateRatio)
from .threads import available_cpus  # noqa: E402
from .registry import LogInteger, LogNumber, Registry  # noqa: E402
from .run import Run, resolve_device  # noqa: E402
from .schedules import schedules  # noqa: E402

__all__ = [
    "Data", "DecisionBoundary", "EffectiveStep", "GradNorm", "History", "LogInteger", "LogNumber", "Probe", "Registry",
    "Run", "ScaleInvariantNorm", "SecondMoment", "UpdateRatio", "as_data", "available_cpus", "datasets", "inits",
    "lr_range_test",
    "models", "norms", "optimizers", "parametrizations", "resolve_device", "schedules", "Sweep", "sweep",
]


def __getattr__(name: str):
    # the playground loads Numba kernels: only when asked for (`trainlab.playground`)
    import importlib

    if name == "playground":
        return importlib.import_module(".playground", __name__)
    if name in ("sweep", "Sweep"):  # Dask and its cluster only when a sweep is asked for
        return getattr(importlib.import_module(".sweeps", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
