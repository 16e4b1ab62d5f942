"""The served lab: every browser session builds its own Run and dashboard, and cleans them up.

Requests whose Host header is not one of the server's own names are refused (403): a page on another
site cannot reach the lab through DNS rebinding. localhost and the served address are allowed; a
teaching server names its public host with --allow-websocket-origin (which also lets its pages open
their websocket), or "*" for any.
"""
from __future__ import annotations

import re
import threading

import panel as pn
import tornado.web

from trainlab import Run

from .dashboard import TrainingDashboard
from .labs import LABS
from .quiet import quiet_closed_connections

LOCAL = ("localhost", "127.0.0.1", "[::1]")


def create_app(**run_options) -> TrainingDashboard:
    """One session's app: a fresh Run (an MLP on digits by default) and its dashboard."""
    quiet_closed_connections()  # here, so `panel serve binder/app.py` is as quiet as `trainlab serve`
    dashboard = TrainingDashboard(Run(**run_options))
    # the session's periodic callback and training thread end with the session (a closed tab)
    pn.state.on_session_destroyed(lambda context: dashboard.close())
    return dashboard


class _Refused(tornado.web.RequestHandler):
    def prepare(self) -> None:
        self.set_status(403)
        self.finish(f"403: this trainlab server does not answer to the host {self.request.host_name!r}; "
                    f"start it with --allow-websocket-origin {self.request.host} to allow it\n")


def allowed_hosts(address: str, origins: list[str]) -> list[str] | None:
    """The host names the server answers to (None: any), from its address and its allowed origins."""
    if "*" in origins:
        return None
    names = {*LOCAL, address.lower()}
    for origin in origins:
        host = re.sub(r"^[a-z]+://", "", origin.lower()).split("/")[0]
        names.add(host.rsplit(":", 1)[0] if not host.endswith("]") else host)
    return sorted(names)


def refuse_other_hosts(server, hosts: list[str] | None) -> None:
    """Route every request whose Host is not in `hosts` to a 403, ahead of the app's own handlers."""
    if hosts is None:
        return
    pattern = r"^(?!(?:%s)$).*$" % "|".join(re.escape(h) for h in hosts)
    server._tornado.add_handlers(pattern, [(r".*", _Refused)])  # the Bokeh server's tornado Application


def warm_up() -> None:
    """Import every lab's module and compile the playground's Numba kernels, so the first person to open a
    tab does not wait seconds for it (the server's event loop would stall meanwhile, for everyone)."""
    from trainlab import playground

    for lab in LABS:
        lab.panel_class()
    playground.trajectories("quadratic", ["sgd"], steps=2)
    playground.fair_race("quadratic", ["sgd"], steps=2)
    playground.contour_grid("quadratic")


def serve(port: int = 5006, address: str = "localhost", show: bool = False, origins: list[str] | None = None,
          **kwargs):
    """Serve the lab with Panel's server; blocks until interrupted."""
    threading.Thread(target=warm_up, name="trainlab-warm-up", daemon=True).start()
    origins = [f"{address}:{port}", f"localhost:{port}", f"127.0.0.1:{port}", *(origins or [])]
    server = pn.serve(create_app, port=port, address=address, show=show, title="trainlab", start=False,
                      websocket_origin=["*"] if "*" in origins else origins, **kwargs)
    refuse_other_hosts(server, allowed_hosts(address, origins))
    server.start()
    server.io_loop.start()
