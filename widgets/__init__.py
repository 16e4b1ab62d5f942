"""Panel components over trainlab's core objects: they draw and control, and own no math."""
from .curvature import CurvaturePanel
from .dashboard import TrainingDashboard
from .feed import Feed
from .landscape import LandscapePanel
from .optimizer_panel import OptimizerPanel
from .playground import Playground2D
from .spectrum import SpectrumPanel

__all__ = ["CurvaturePanel", "Feed", "LandscapePanel", "OptimizerPanel", "Playground2D", "SpectrumPanel", "TrainingDashboard"]
