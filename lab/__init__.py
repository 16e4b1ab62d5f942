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
from .probes import DecisionBoundary, GradNorm, Probe, UpdateRatio  # noqa: E402
from .registry import LogInteger, LogNumber, Registry  # noqa: E402
from .run import Run, resolve_device  # noqa: E402

__all__ = [
    "Data", "DecisionBoundary", "GradNorm", "History", "LogInteger", "LogNumber", "Probe", "Registry", "Run", "UpdateRatio",
    "as_data", "datasets", "inits", "models", "norms", "optimizers", "resolve_device",
]
