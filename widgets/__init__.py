"""Panel components over trainlab's core objects: they draw and control, and own no math."""
from .base import LabPanel
from .curvature import CurvaturePanel
from .dashboard import TrainingDashboard
from .feed import Feed
from .init_panel import InitPanel
from .labs import LABS, Lab
from .landscape import LandscapePanel
from .normalization import NormalizationPanel
from .optimizer_panel import OptimizerPanel
from .playground import Playground2D
from .pruning import PruningPanel
from .runs import RunsPanel
from .spectrum import SpectrumPanel
from .sweep import SweepPanel
from .sweep_lab import SweepLab

__all__ = ["LABS", "CurvaturePanel", "Feed", "InitPanel", "Lab", "LabPanel", "LandscapePanel", "NormalizationPanel", "OptimizerPanel", "Playground2D",
           "PruningPanel", "RunsPanel", "SpectrumPanel", "SweepLab", "SweepPanel", "TrainingDashboard"]
