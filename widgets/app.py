"""The served lab: every browser session builds its own Run and dashboard, and cleans them up."""
from __future__ import annotations

import panel as pn

from trainlab import Run

from .dashboard import TrainingDashboard


def create_app(**run_options) -> TrainingDashboard:
    """One session's app: a fresh Run (an MLP on digits by default) and its dashboard."""
    dashboard = TrainingDashboard(Run(**run_options))
    # the session's periodic callback and training thread end with the session (a closed tab)
    pn.state.on_session_destroyed(lambda context: dashboard.close())
    return dashboard


def serve(port: int = 5006, address: str = "localhost", show: bool = False, **kwargs):
    """Serve the lab with Panel's server; blocks until interrupted."""
    origins = [f"{address}:{port}", f"localhost:{port}", f"127.0.0.1:{port}"]
    return pn.serve(create_app, port=port, address=address, show=show, title="trainlab",
                    websocket_origin=kwargs.pop("websocket_origin", origins), **kwargs)
