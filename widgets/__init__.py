"""Panel/HoloViews components over trainlab's core objects: they draw and control, and own no math."""
from .dashboard import TrainingDashboard
from .feed import Feed

__all__ = ["Feed", "TrainingDashboard"]
