"""Pages made ahead: whole sessions (a dashboard and its Bokeh document) made while the server is idle, each
handed to the next page's request.

A page's request made its session on the event loop: Panel turned the dashboard into Bokeh models (0.15 s on
this 2-core test machine, with the dashboard itself built ahead by `Ready`), and every other request waited
behind it. Twenty pages opened at once were all interactive only after 6.4 s (benchmarks/classroom.py), most
of it that model building (52 % of the loop's time, measured with py-spy). A page made ahead costs its request
only its HTML, and its websocket the document's serialization.

`Pages` makes sessions through Bokeh's own `ApplicationContext.create_session_if_needed`, so a page made ahead
is the session a request would have made (the app runs in it, its document and callbacks are its own); its
expiration is blocked while it waits, and until its page connects. A request takes the oldest one (`take`,
from the server's page handler), which `claim` starts (the session limit, the dashboard's updates); a page
past the limit, or with none made, has its session made for it as before. The session's token is made fresh
for each request, so a page made an hour ago is as good as a new one.

It makes them, one per `pace` × the time the last one took, only while no page has been requested for
`quiet` seconds and no run is training (`busy()`): making one holds the event loop, which the open pages need.
A class's pages are made before it starts and between lessons.
"""
from __future__ import annotations

import asyncio
import logging
import time
from contextlib import contextmanager
from typing import Callable, Iterator

from bokeh.util.token import generate_session_id
from tornado.httputil import HTTPHeaders, HTTPServerRequest

log = logging.getLogger(__name__)

CONNECT_WAIT = 60.0  # seconds a taken page's session waits for its websocket before Bokeh's cleanup may end it


class Pages:
    """Up to `size` sessions made ahead for the app at `path` of a Bokeh server (see the module's doc)."""

    def __init__(self, size: int, claim: Callable[[object], bool], quiet: float = 10.0, pace: float = 1.0,
                 busy: Callable[[], bool] = lambda: False, can_make: Callable[[], bool] = lambda: True,
                 on_full: Callable[[int], None] | None = None):
        if size < 0:
            raise ValueError(f"size (pages made ahead) must be >= 0, got {size}")
        self.size, self.claim, self.quiet, self.pace = size, claim, quiet, pace
        self.busy, self.can_make, self.on_full = busy, can_make, on_full
        self._waiting: list[tuple[object, object]] = []  # (ServerSession, what the app made in it), oldest first
        self._making: set[str] = set()  # ids of the sessions being made now
        self._made: dict[str, object] = {}
        self._asked_at = float("-inf")
        self._task: asyncio.Task | None = None
        self._context = self._tornado = None
        self.host = "localhost"

    def __len__(self) -> int:
        return len(self._waiting)

    # ---- the app's side --------------------------------------------------------------------
    def making(self, doc) -> bool:
        """Whether `doc` is the document of a session being made ahead (the app then starts nothing)."""
        context = getattr(doc, "session_context", None)
        return context is not None and context.id in self._making

    def made(self, doc, item) -> None:
        """The app says what it made in a session being made ahead (handed to `claim` when a page takes it)."""
        self._made[doc.session_context.id] = item

    # ---- the server's side -----------------------------------------------------------------
    def start(self, tornado_app, path: str = "/", host: str | None = None) -> None:
        """Make pages for the app at `path` of a BokehTornado application (called on its event loop)."""
        self._tornado, self._context = tornado_app, tornado_app.applications[path]
        self.host = host or self.host
        if self.size and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._fill())

    def take(self):
        """The oldest page made ahead, claimed (None when none is waiting or `claim` refused it)."""
        self._asked_at = time.monotonic()
        if not self._waiting:
            return None
        session, item = self._waiting[0]
        from panel.io.state import set_curdoc

        with set_curdoc(session.document):
            if not self.claim(item):
                return None
        self._waiting.pop(0)
        asyncio.get_running_loop().create_task(self._until_connected(session))
        return session

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _until_connected(self, session) -> None:
        """Keep a taken session from Bokeh's cleanup until its page connects (it counts unused time from when the
        session was made, not taken), then leave it to the cleanup as any session."""
        deadline = time.monotonic() + CONNECT_WAIT
        while session.connection_count == 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.25)
        session.unblock_expiration()

    def _request(self) -> HTTPServerRequest:
        # the session's request, as the app sees it (Panel reads its host, path and cookies): a plain GET of the page
        return HTTPServerRequest(method="GET", uri="/", version="HTTP/1.1", headers=HTTPHeaders({"Host": self.host}),
                                 host=self.host)

    async def _fill(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            idle = time.monotonic() - self._asked_at >= self.quiet
            if len(self._waiting) >= self.size or not idle or self.busy() or not self.can_make():
                continue
            began = time.perf_counter()
            try:
                session, item = await self._make()
            except Exception:  # a page's own request will make its session and show what failed; keep serving
                log.exception("making a page ahead failed")
                return
            session.block_expiration()
            serialize_ahead(session.document)
            self._waiting.append((session, item))
            if len(self._waiting) == self.size and self.on_full is not None:
                self.on_full(self.size)
            await asyncio.sleep(self.pace * (time.perf_counter() - began))

    async def _make(self):
        sid = generate_session_id(secret_key=self._tornado.secret_key, signed=self._tornado.sign_sessions)
        self._making.add(sid)
        try:
            # no token: the session's token is then made anew (with its expiry) each time a page's HTML asks for it
            session = await self._context.create_session_if_needed(sid, self._request(), None)
        finally:
            self._making.discard(sid)
        item = self._made.pop(sid, None)
        if item is None:
            session.request_expiration()
            raise RuntimeError("the app made nothing to claim in a page made ahead")
        return session, item


def serialize_ahead(doc) -> None:
    """Serialize a page's document now, while the server is idle, for its websocket's pull later: Bokeh's
    serialization (every property of every model compared with its default) was 60 % of the server's time when
    pages made ahead were opened at once (0.25 s per page of 275 models, py-spy). A change to what the document
    holds (any event a page would be sent as a patch) drops it, so the pull then serializes the document as it
    is; a periodic callback added or removed (the claim starts the dashboard's) is not part of it."""
    from bokeh.document import Document
    from bokeh.document.events import DocumentPatchedEvent

    serialized = doc.to_json()

    def forget() -> None:
        doc.__dict__.pop("to_json", None)  # the method again
        doc.remove_on_change(changed)

    def changed(event) -> None:  # (Bokeh checks that the signature is exactly this)
        if isinstance(event, DocumentPatchedEvent):
            forget()

    def to_json(*, deferred: bool = True):
        forget()
        return serialized if deferred else Document.to_json(doc, deferred=False)

    doc.on_change(changed)
    doc.to_json = to_json


def page_handler(pages: Pages):
    """Panel's page handler, taking a page made ahead when one is waiting."""
    from panel.io.server import DocHandler

    class PageHandler(DocHandler):
        async def get_session(self):
            session = pages.take()
            return session if session is not None else await super().get_session()

    return PageHandler


@contextmanager
def served_by(pages: Pages) -> Iterator[None]:
    """While a Bokeh server is built in this block, its page route uses `page_handler(pages)` (Bokeh reads its
    per-app routes when it builds the server; they are put back after)."""
    from bokeh.server import urls
    from panel.io.server import DocHandler

    old = list(urls.per_app_patterns)
    urls.per_app_patterns[:] = [(p, page_handler(pages) if h is DocHandler else h) for p, h in old]
    try:
        yield
    finally:
        urls.per_app_patterns[:] = old
