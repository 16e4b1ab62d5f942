"""A served lab's log says what went wrong, not that someone closed a tab.

A tab that closes while its session streams leaves writes in flight to a socket that is gone. Bokeh
logs each as "Failed sending message as connection was closed"; Panel's dispatch writes a message's
parts as separate futures, and when the socket closes between them asyncio reports every orphaned
one as "Task exception was never retrieved" with a WebSocketClosedError traceback; a message that
arrives as the connection detaches trips Bokeh's `assert self._session is not None`. All are the
expected end of a connection (the landed main printed 270 tracebacks and 2,466 warnings for a few
closed tabs). `SessionGone` drops exactly those records; anything else is logged as before.

Once the connection has gone, the session stops producing messages at all: `connections()` tells a
periodic callback that nobody is listening any more (Bokeh destroys the session only 15-30 s later).
"""
from __future__ import annotations

import logging
import traceback

import panel as pn

LOGGERS = ("asyncio", "tornado.application", "tornado.general", "bokeh.server.views.ws",
           "bokeh.server.protocol_handler", "bokeh.server.connection", "bokeh.server.session",
           "panel.io.document")  # Panel's dispatch warns "Failed sending message as connection was closed" too


def _closed_errors() -> tuple[type[BaseException], ...]:
    from tornado.iostream import StreamClosedError
    from tornado.websocket import WebSocketClosedError

    return WebSocketClosedError, StreamClosedError


def _lost_session(exc: BaseException) -> bool:
    """Bokeh's ServerConnection.session asserts a session that a closing connection has already let go."""
    if not isinstance(exc, AssertionError):
        return False
    frames = traceback.extract_tb(exc.__traceback__)
    return bool(frames) and frames[-1].filename.replace("\\", "/").endswith("bokeh/server/connection.py")


class SessionGone(logging.Filter):
    """Drops the log records a closed browser tab causes; passes every other record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if "connection was closed" in record.getMessage():
            return False
        exc = record.exc_info[1] if record.exc_info else None
        if exc is None and isinstance(getattr(record, "exception", None), BaseException):
            exc = record.exception  # asyncio's "exception was never retrieved" passes it here too
        if exc is None:
            return True
        return not (isinstance(exc, _closed_errors()) or _lost_session(exc))


def quiet_closed_connections() -> SessionGone:
    """Install the filter on the loggers that report closed connections (once; returns it)."""
    for name in LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, SessionGone) for f in logger.filters):
            logger.addFilter(SessionGone())
    return next(f for f in logging.getLogger(LOGGERS[0]).filters if isinstance(f, SessionGone))


def connections() -> int | None:
    """How many browser connections the current served session has (0 before its page connects and
    after it closes); None in a notebook, a script, or wherever this cannot be told."""
    doc = pn.state.curdoc
    context = getattr(doc, "session_context", None) if doc is not None else None
    session = getattr(context, "_session", None)  # Bokeh keeps its ServerSession here; no public accessor
    count = getattr(session, "connection_count", None)
    return count if isinstance(count, int) else None
