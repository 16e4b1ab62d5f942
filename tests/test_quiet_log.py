"""Closing tabs leaves a clean server log: the closed connection's expected errors are dropped, every other
record is kept, and a closed page's session stops streaming before Bokeh destroys it."""
from __future__ import annotations

import logging
import time

import pytest
from conftest import answers, free_port, wait_until
from test_browser import _open

from trainlab.widgets.quiet import LOGGERS, SessionGone, quiet_closed_connections


def _record(exc: BaseException | None, msg: str = "boom", name: str = "asyncio") -> logging.LogRecord:
    info = (type(exc), exc, exc.__traceback__) if exc is not None else None
    return logging.LogRecord(name, logging.ERROR, __file__, 1, msg, None, info)


def _raised(fn) -> BaseException:
    try:
        fn()
    except BaseException as e:  # noqa: BLE001 - the exception itself is the test's subject
        return e
    raise AssertionError("expected an exception")


def test_the_filter_drops_closed_connections_and_keeps_everything_else():
    from bokeh.server.connection import ServerConnection
    from tornado.iostream import StreamClosedError
    from tornado.websocket import WebSocketClosedError

    gone = SessionGone()
    detached = object.__new__(ServerConnection)
    detached._session = None  # what a closing connection holds: Bokeh's own assert fires
    lost = _raised(lambda: detached.session)
    assert isinstance(lost, AssertionError)

    def closed():
        try:
            raise StreamClosedError()
        except StreamClosedError:
            raise WebSocketClosedError() from None

    for exc in (_raised(closed), _raised(lambda: (_ for _ in ()).throw(StreamClosedError())), lost):
        assert not gone.filter(_record(exc, "Task exception was never retrieved")), type(exc)
    assert not gone.filter(_record(None, "Failed sending message as connection was closed", "bokeh.server.views.ws"))
    # a real error is kept, an assertion anywhere else too, and plain messages
    assert gone.filter(_record(_raised(lambda: 1 / 0)))
    assert gone.filter(_record(_raised(lambda: (_ for _ in ()).throw(AssertionError("mine")))))
    assert gone.filter(_record(None, "Session 1234 created"))


def test_installing_twice_adds_one_filter():
    first, second = quiet_closed_connections(), quiet_closed_connections()
    assert first is second
    for name in LOGGERS:
        assert sum(isinstance(f, SessionGone) for f in logging.getLogger(name).filters) == 1


@pytest.mark.browser
def test_closing_tabs_while_they_stream_logs_nothing(browser, caplog):
    """Three pages on three tabs train, then close; the in-process server's log stays empty of their ends."""
    import panel as pn

    from trainlab.widgets import app

    made = []

    def create():
        made.append(app.create_app())
        return made[-1]

    caplog.set_level(logging.WARNING)
    port = free_port()
    server = pn.serve(create, port=port, address="127.0.0.1", show=False, threaded=True,
                      websocket_origin=[f"127.0.0.1:{port}"], check_unused_sessions_milliseconds=500,
                      unused_session_lifetime_milliseconds=3000)
    try:
        wait_until(lambda: answers(port), 30, "the in-process server to answer")
        pages = []
        for tab in ("Training", "Landscape", "Spectrum"):
            page = browser.new_page()
            _open(page, f"http://127.0.0.1:{port}/")
            page.get_by_role("button", name="Start", exact=True).click(timeout=60_000)
            page.locator(".bk-tab", has_text=tab).click(timeout=60_000)
            pages.append(page)
        wait_until(lambda: len(made) == 3 and all(d.run.steps > 200 for d in made), 120, "three sessions training")
        for page in pages:
            page.close()
        # before Bokeh's cleanup ends them, the closed pages' feeds stop ticking
        def still() -> list[int] | None:
            before = [d.feed.ticks for d in made]
            time.sleep(0.5)  # ten ticks' time
            return before if before == [d.feed.ticks for d in made] else None

        ticks = wait_until(still, 20, "the closed pages' feeds to stop ticking")
        assert all(t > 0 for t in ticks) and all(d.run.status == "running" for d in made)
        wait_until(lambda: all(d.run.status == "stopped" for d in made), 60, "the sessions to be destroyed")
    finally:
        server.stop()
    noisy = [r for r in caplog.records if r.exc_info or "connection" in r.getMessage().lower()]
    assert not noisy, "\n".join(f"{r.name}: {r.getMessage()}" for r in noisy)
