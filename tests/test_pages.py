"""Pages made ahead (widgets/pages.py): a served lab's page request takes a whole session made while the server
was idle, within the session limit; its token is made for the request; it waits for its websocket."""
from __future__ import annotations

import asyncio
import re
import sys
import threading
import urllib.request
from pathlib import Path

import pytest
from bokeh.util.token import get_session_id

from conftest import free_port, wait_until

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks" / "parts"))

from trainlab import share  # noqa: E402
from trainlab.widgets import app  # noqa: E402


@pytest.fixture
def lab():
    """The lab's server (trainlab serve's, with 2 pages made ahead and room for one session) on a thread."""
    port, box = free_port(), {}
    before = dict(app._LIVE)  # sessions other tests' create_app counted (no server ended them): not this lab's
    app._LIVE.clear()

    def run():
        asyncio.set_event_loop(asyncio.new_event_loop())
        served = app.lab_server(port=port, address="127.0.0.1", limits=app.Limits(sessions=1, ready=2))
        served.pages.quiet = 0.5  # the test's requests come a few seconds apart; refilling between them is tested
        box["served"] = served
        served.server.start()
        served.server.io_loop.start()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    wait_until(lambda: "served" in box, timeout=60, what="the server built")
    served = box["served"]
    try:
        yield served, f"http://127.0.0.1:{port}/"
    finally:
        def stop():
            served.pages.stop()
            served.server.stop()
            served.server.io_loop.stop()

        served.server.io_loop.add_callback(stop)
        thread.join(30)
        served.ready.close()
        for _, dashboard in served.pages._waiting:
            dashboard.close()
        share.install(None)
        app._LIVE.clear()
        app._LIVE.update(before)


def on_own_loop(coroutine_function, timeout: float = 300) -> None:
    """Run a client coroutine on a thread and event loop of its own (an earlier test may have left this thread's
    loop running, where asyncio.run refuses), raising what it raised."""
    out = {}

    def target():
        try:
            asyncio.run(coroutine_function())
        except BaseException as e:  # noqa: BLE001 (re-raised on the test's thread)
            out["error"] = e

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), "the client did not finish"
    if "error" in out:
        raise out["error"]


def _token(html: str) -> str:
    return re.search(r'"token":"([^"]+)"', html).group(1)


def test_a_request_takes_the_oldest_page_made_ahead_within_the_session_limit(lab):
    served, url = lab
    wait_until(lambda: len(served.pages) == 2, timeout=180, what="two pages made ahead")
    made = {session.id: dashboard for session, dashboard in served.pages._waiting}
    assert all(not d.feed.running for d in made.values())  # made, not started: no page shows them yet

    html = urllib.request.urlopen(url, timeout=60).read().decode()
    sid = get_session_id(_token(html))
    assert sid == next(iter(made)), "the oldest page made ahead"
    assert made[sid].feed.running and len(app._LIVE) == 1  # claimed: counted and started
    session = next(s for s in served.server.get_sessions("/") if s.id == sid)
    assert session.expiration_blocked  # its page has not connected yet: Bokeh's cleanup must wait

    # the next request: the lab is full (one session), so the other page made ahead stays waiting and the
    # request's own session says so
    full = urllib.request.urlopen(url, timeout=60).read().decode()
    assert get_session_id(_token(full)) not in made
    assert list(made)[1] in {s.id for s, _ in served.pages._waiting}
    assert len(app._LIVE) == 1


def test_the_taken_page_connects_and_is_the_session_made_ahead(lab):
    from bokeh_client import Page

    served, url = lab
    wait_until(lambda: len(served.pages) == 2, timeout=180, what="two pages made ahead")
    made = [session.id for session, _ in served.pages._waiting]

    async def connect_and_look():
        page = await Page.open(url)
        try:
            page.find("Button", label="Start")  # the dashboard's document arrived over the websocket
            connected = [s for s in served.server.get_sessions("/") if s.connection_count > 0]
            assert [s.id for s in connected] == made[:1]
            wait_until(lambda: not connected[0].expiration_blocked, timeout=30,
                       what="expiry left to Bokeh once connected")
        finally:
            page.close()

    on_own_loop(connect_and_look)


def test_a_closed_page_frees_its_place_before_bokeh_ends_its_session(lab):
    from bokeh_client import Page

    served, url = lab  # room for one session
    wait_until(lambda: len(served.pages) == 2, timeout=180, what="two pages made ahead")
    (first, first_board), (second, _) = served.pages._waiting

    async def open_and_close():
        page = await Page.open(url)
        listening = asyncio.create_task(page.listen())
        wait_until(lambda: first_board.feed.ticks > 0 and not first_board.feed.page_gone, timeout=60,
                   what="the page's feed running")
        page.close()
        listening.cancel()

    on_own_loop(open_and_close)
    wait_until(lambda: first_board.feed.page_gone, timeout=60, what="the feed saw its page go")
    if first.destroyed:
        pytest.skip("Bokeh's cleanup ended the closed session before the next page came (a very busy machine)")
    assert first.id in {s.id for s in served.server.get_sessions("/")}  # it lingers, as Bokeh keeps it
    html = urllib.request.urlopen(url, timeout=60).read().decode()
    assert get_session_id(_token(html)) == second.id  # the place is free: the next page made ahead is taken



def _pulled(doc) -> dict:
    from bokeh.protocol import Protocol

    return Protocol().create("PULL-DOC-REPLY", "1", doc).content["doc"]


def test_a_page_made_ahead_is_pulled_as_serialized_ahead_until_its_document_changes():
    """serialize_ahead: the pull sends the serialization made while idle, equal to a fresh one; a change the page
    would be sent as a patch drops it, a session callback added (as the claim adds the feed's) does not."""
    from bokeh.document import Document
    from bokeh.models import Slider

    from trainlab.widgets.pages import serialize_ahead

    def doc_with_slider():
        doc, slider = Document(), Slider(start=0, end=1, value=0.25, title="lr")
        doc.add_root(slider)
        return doc, slider

    doc, slider = doc_with_slider()
    serialize_ahead(doc)
    ahead = doc.__dict__["to_json"]
    used = []
    doc.to_json = lambda **kw: used.append(kw) or ahead(**kw)  # the same function, seen being called
    doc.add_periodic_callback(lambda: None, 1000)
    pulled = _pulled(doc)
    assert used == [{}], "the pull used the serialization made ahead"
    assert "to_json" not in doc.__dict__  # once: a later pull serializes anew
    assert pulled == Document.to_json(doc).content  # what a fresh serialization gives

    doc, slider = doc_with_slider()
    serialize_ahead(doc)
    slider.value = 0.75  # a change the page would be sent as a patch
    assert "to_json" not in doc.__dict__
    assert _pulled(doc)["roots"][0]["attributes"]["value"] == 0.75
    doc, slider = doc_with_slider()
    serialize_ahead(doc)
    assert doc.to_json(deferred=False)["roots"][0]["attributes"]["value"] == 0.25  # plain JSON: made anew
