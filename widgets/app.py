"""The served lab: every browser session builds its own Run and dashboard, and cleans them up.

Requests whose Host header is not one of the server's own names are refused (403): a page on another
site cannot reach the lab through DNS rebinding. localhost and the served address are allowed; a
teaching server names its public host with --allow-websocket-origin (which also lets its pages open
their websocket), or "*" for any.
"""
from __future__ import annotations

import os
import re
import signal
import sys
import threading
import time
from dataclasses import dataclass
from functools import partial

import panel as pn
import tornado.web
from bokeh.settings import settings

from trainlab import Run
from trainlab.memory import fewer_heaps, release_memory
from trainlab.share import Share, install
from trainlab.threads import available_cpus

from .dashboard import TrainingDashboard
from .labs import LABS
from .quiet import quiet_closed_connections
from .pages import Pages, served_by
from .ready import Ready

LOCAL = ("localhost", "127.0.0.1", "[::1]")


@dataclass(frozen=True)
class Limits:
    """What one served lab allows, with defaults fit for a public teaching server on a small machine
    (`trainlab serve --help` sets each). A session past a limit is told so on its page."""

    sessions: int = 30                  # browser sessions at once; the next page says the lab is full
    # runs stepping at once; others wait a turn. One: a small model's step is Python work under the GIL the event
    # loop shares, so a second run stepping beside it trained no faster (20 sessions: 538 steps each in 10 s
    # against 535) and left the loop a smaller share (slider-to-plot p95 133 ms against 392 ms; classroom.py)
    training: int = 1
    params: int = 2_000_000             # parameters of a model a session may build
    steps_per_second: float = 2_000     # per session
    jobs: int | None = None             # analyses (landscapes, Hessians...) at once (default: CPUs); others wait
    idle_minutes: float = 20            # a run nobody has touched for this long is paused (0: never)
    ready: int = 20                     # pages made ahead while the server is idle (about 5 MiB each)

    def share(self) -> Share:
        cpus = available_cpus()
        return Share(concurrent=self.training, max_rate=self.steps_per_second, jobs=self.jobs or cpus,
                     max_params=self.params)


_LIVE: dict[int, TrainingDashboard] = {}  # the served sessions' dashboards, by id, for the session limit
_LIVE_LOCK = threading.Lock()


def _in_use() -> int:
    """Sessions that count toward the limit (call under _LIVE_LOCK): a closed page frees its place as soon as its
    feed sees it go, not when Bokeh's cleanup ends its session 15-30 s later."""
    return sum(not d.feed.page_gone for d in _LIVE.values())


def full_page(limits: Limits):
    return pn.pane.Alert(f"### This lab is full\n{limits.sessions} people are using it now, the most this server "
                         f"takes. Try again in a few minutes (a closed tab frees its place).", alert_type="warning")


def build(limits: Limits | None = None, live: bool = True, **run_options) -> TrainingDashboard:
    """A fresh Run (an MLP on digits by default) and its dashboard, under the served lab's idle limit."""
    return TrainingDashboard(Run(**run_options), idle_timeout=60 * limits.idle_minutes if limits else 0, live=live)


def create_app(limits: Limits | None = None, ready: Ready | None = None, pages: Pages | None = None, **run_options):
    """One session's app: a dashboard taken from `ready`, or one built by its `build` when none is left (the pool
    carries the Run's options: give them to its build, not here), or, without a pool, built from `run_options`;
    past the session limit, a page saying so (nothing built). In a session `pages` is making ahead, the
    dashboard waits: `claim` starts it when a page takes the session."""
    if ready is not None and run_options:
        raise TypeError(f"create_app: run options {sorted(run_options)} given with a pool of dashboards built ahead; "
                        f"give them to the pool's build instead, e.g. Ready(partial(build, limits, live=False, "
                        f"**options), size)")
    quiet_closed_connections()  # here, so `panel serve binder/dashboard.py` is as quiet as `trainlab serve`
    # the Sweeps tab's table is a Tabulator, built after the page loaded: its script must come with the page
    pn.extension("tabulator")
    doc = pn.state.curdoc
    ahead = pages is not None and pages.making(doc)
    if not ahead and limits is not None:
        with _LIVE_LOCK:
            if _in_use() >= limits.sessions:
                return full_page(limits)
    if ready is None:
        dashboard = build(limits, **run_options)
    else:
        dashboard = ready.take(arrival=not ahead) or ready.build()
    if ahead:
        pages.made(doc, dashboard)
    elif ready is not None:
        dashboard.go_live()
    key = id(dashboard)
    if not ahead:
        with _LIVE_LOCK:
            _LIVE[key] = dashboard

    def ended(context) -> None:
        with _LIVE_LOCK:
            _LIVE.pop(key, None)
        dashboard.close()
        threading.Timer(1.0, release_memory).start()  # once the session's objects are gone

    # the session's periodic callback and training thread end with the session (a closed tab)
    pn.state.on_session_destroyed(ended)
    if doc is not None:  # any change a person makes in the page counts as activity (server-side ones have no setter)
        doc.on_change(lambda event: dashboard.touch() if getattr(event, "setter", None) is not None else None)
    return dashboard


def claim(limits: Limits, dashboard: TrainingDashboard) -> bool:
    """A page takes a session made ahead (its document is the current one): within the session limit, it counts
    and its dashboard starts; past it, False (the page's own session says the lab is full)."""
    with _LIVE_LOCK:
        if _in_use() >= limits.sessions:
            return False
        _LIVE[id(dashboard)] = dashboard
    dashboard.go_live()
    return True


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
    """Import every lab's module, compile the playground's Numba kernels and build one dashboard into a document
    nobody sees, so the first person to open the lab or a tab does not wait seconds for it (the server's event
    loop would stall meanwhile, for everyone; measured: the first session's page took 1.6 s of server time to
    build, the next ones 0.4 s)."""
    from bokeh.document import Document
    from panel.io.state import set_curdoc

    from trainlab import playground

    for lab in LABS:
        lab.panel_class()
    playground.trajectories("quadratic", ["sgd"], steps=2)
    playground.fair_race("quadratic", ["sgd"], steps=2)
    playground.contour_grid("quadratic")
    doc = Document()
    with set_curdoc(doc):
        dashboard = TrainingDashboard(Run())
        doc.add_root(pn.panel(dashboard).get_root(doc))
        dashboard.close()


def _warm_up_and_say(ready: Ready) -> None:
    started = time.perf_counter()
    warm_up()
    print(f"trainlab: warmed up in {time.perf_counter() - started:.1f} s", flush=True)
    ready.start()


def _end_with_parent() -> None:
    """A forked server process ends when the one that forked it does: tornado's parent only restarts its
    children, and a SIGTERM to it alone (a service manager's stop) left them serving the port (seen here)."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        if os.getppid() == 1:  # the parent was already gone
            os.kill(os.getpid(), signal.SIGTERM)


@dataclass
class Served:
    """A lab's server, built and not started (`lab_server`), with its pages and dashboards made ahead."""

    server: object
    pages: Pages
    ready: Ready


def lab_server(port: int = 5006, address: str = "localhost", show: bool = False, origins: list[str] | None = None,
               limits: Limits | None = None, **kwargs) -> Served:
    """The lab's Panel server on this thread's event loop, its Share installed, not started (see `serve`)."""
    limits = limits or Limits()
    fewer_heaps()  # before any thread starts
    if "BOKEH_VALIDATE_DOC" not in os.environ:  # its checks are for developing a document: 10 % of a page's build
        settings.perform_document_validation.set_value(False)
    share = limits.share()
    install(share)

    def busy() -> bool:
        return share.contending() > 0

    # `limits.ready` pages in all: sessions made ahead, and the dashboards built ahead that they are made from
    pages = Pages(limits.ready, claim=partial(claim, limits), busy=busy, can_make=lambda: len(ready) > 0,
                  on_full=lambda n: print(f"trainlab: {n} pages ready", flush=True))
    ready = Ready(partial(build, limits, live=False), limits.ready, busy=busy, room=lambda: limits.ready - len(pages))
    origins = [f"{address}:{port}", f"localhost:{port}", f"127.0.0.1:{port}", *(origins or [])]
    def app():  # a plain function: Panel serves a partial as text
        return create_app(limits, ready, pages)

    with served_by(pages):
        server = pn.serve(app, port=port, address=address, show=show, title="trainlab",
                          start=False, websocket_origin=["*"] if "*" in origins else origins, **kwargs)
    refuse_other_hosts(server, allowed_hosts(address, origins))
    # after pn.serve: with num_procs > 1 it has forked, and each process needs its own threads (a fork keeps
    # only the thread that forked)
    if kwargs.get("num_procs", 1) != 1:
        _end_with_parent()
    threading.Thread(target=_warm_up_and_say, args=(ready,), name="trainlab-warm-up", daemon=True).start()
    (path,) = server._tornado.applications  # the one app (BokehTornado's public mapping; the server keeps it private)
    server.io_loop.add_callback(pages.start, server._tornado, path, f"{address}:{port}")
    return Served(server, pages, ready)


def serve(port: int = 5006, address: str = "localhost", show: bool = False, origins: list[str] | None = None,
          limits: Limits | None = None, **kwargs):
    """Serve the lab with Panel's server; blocks until interrupted. `kwargs` go to `panel.serve` (basic_auth,
    oauth_provider, cookie_secret, num_procs, ...)."""
    served = lab_server(port, address, show, origins, limits, **kwargs)
    served.server.start()
    served.server.io_loop.start()
