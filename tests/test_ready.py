"""Dashboards built ahead (`trainlab serve --ready`): the pool fills in the background while the server is quiet,
a page takes a built one (whose updates start only then), an empty pool means a page builds its own, and a
served page of a pooled dashboard trains, plots and follows its lr slider (driven by the load test's protocol
client, which this also checks)."""
from __future__ import annotations

import asyncio
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import free_port, serving, wait_until
from test_browser import _trainlab_command

from trainlab.widgets.app import Limits, build, create_app
from trainlab.widgets.ready import Ready

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks" / "parts"))


class Builds:
    """A build function that counts its calls, and when each was."""

    def __init__(self, seconds: float = 0.0):
        self.seconds, self.at, self.lock = seconds, [], threading.Lock()

    def __call__(self):
        time.sleep(self.seconds)
        with self.lock:
            self.at.append(time.monotonic())
            return len(self.at)


def test_the_pool_fills_to_its_size_and_hands_out_each_dashboard_once():
    builds, full = Builds(), []
    ready = Ready(builds, size=3, quiet=0.0, pace=0.0, on_full=full.append).start()
    try:
        wait_until(lambda: len(ready) == 3, what="three built ahead")
        assert full == [3]
        taken = [ready.take() for _ in range(3)]
        assert sorted(taken) == [1, 2, 3] and ready.take() is None  # empty: the page builds its own
        wait_until(lambda: len(ready) == 3, what="refilled")
        assert len(builds.at) == 6, "never more than its size"
    finally:
        ready.close()
    assert not ready._thread.is_alive()


def test_nothing_is_built_while_pages_are_arriving_and_builds_rest_between():
    builds = Builds(seconds=0.05)
    ready = Ready(builds, size=3, quiet=0.6, pace=4.0)
    try:
        t0 = time.monotonic()
        ready.take()  # a page arrived: quiet for 0.6 s from now
        ready.start()
        wait_until(lambda: len(ready) == 3, what="built after the quiet time", timeout=30)
        assert builds.at[0] - t0 >= 0.6
        gaps = [b - a for a, b in zip(builds.at, builds.at[1:])]
        assert min(gaps) >= 0.05 * (1 + 4.0) * 0.9, f"rests pace x a build's time between builds: {gaps}"
    finally:
        ready.close()


def test_a_size_of_zero_builds_nothing_and_a_negative_one_is_refused():
    builds = Builds()
    ready = Ready(builds, size=0).start()
    assert ready.take() is None and builds.at == [] and ready._thread is None
    with pytest.raises(ValueError, match=r"size \(dashboards built ahead\) must be >= 0, got -1"):
        Ready(builds, size=-1)


def test_a_failing_build_is_logged_and_stops_the_pool(caplog):
    def broken():
        raise RuntimeError("no data")

    ready = Ready(broken, size=2, quiet=0.0).start()
    ready._thread.join(30)
    assert not ready._thread.is_alive() and ready.take() is None
    assert "building a dashboard ahead failed" in caplog.text


class Asked:
    """A busy() or room() answer that counts how often it was asked."""

    def __init__(self, value):
        self.value, self.asked = value, 0

    def __call__(self):
        self.asked += 1
        return self.value


def test_building_waits_while_runs_train_keeps_to_its_room_and_a_take_for_a_page_ahead_is_no_arrival():
    builds, busy, room = Builds(), Asked(True), Asked(2)
    ready = Ready(builds, size=3, quiet=60.0, pace=0.0, busy=busy, room=room)
    ready._taken_at = float("-inf")  # quiet from the start
    ready.start()
    try:
        wait_until(lambda: busy.asked >= 3, what="the pool asked, while runs trained, three times")
        assert len(ready) == 0 and not builds.at  # nothing built while runs train
        busy.value = False
        wait_until(lambda: len(ready) == 2, what="built up to its room (2 of size 3)")
        asked = room.asked
        wait_until(lambda: room.asked >= asked + 2, what="the pool looked at its room again")
        assert len(ready) == 2 and len(builds.at) == 2
        assert ready.take(arrival=False) is not None  # taken to make a page ahead: the 60 s quiet does not start
        wait_until(lambda: len(ready) == 2, timeout=30, what="refilled at once")
        assert len(builds.at) == 3
    finally:
        ready.close()


def test_a_page_takes_a_built_dashboard_whose_updates_start_only_then():
    limits = Limits(idle_minutes=5)
    made = []

    def make():
        made.append(build(limits, live=False, data="moons", device="cpu"))
        return made[-1]

    ready = Ready(make, size=1, quiet=0.0, pace=0.0)
    built = make()  # one built ahead, by hand: the pool's thread is not started
    ready._items.append(built)
    other = None
    assert not built.feed.running and built.idle_timeout == 300
    try:
        page = create_app(limits, ready)
        assert page is built and page.feed.running
        other = create_app(limits, ready)  # none ready: built for this page by the pool's build, with its options
        assert other is made[-1] and other is not built and other.feed.running and other.run is not built.run
        assert other.run.data.name == "moons"  # the pool's options, not the default digits
        with pytest.raises(TypeError, match=r"run options \['data'\] given with a pool"):
            create_app(limits, ready, data="moons")
    finally:
        ready.close()
        for d in made:
            d.close()


@pytest.mark.slow
def test_a_served_page_of_a_dashboard_built_ahead_trains_plots_and_follows_its_slider(tmp_path):
    from bokeh_client import Page

    port = free_port()
    cmd = [*_trainlab_command(), "serve", "--port", str(port), "--address", "127.0.0.1", "--ready", "2"]
    with serving(cmd, port, tmp_path):
        log = tmp_path / "server.log"
        wait_until(lambda: "2 pages ready" in log.read_text(), timeout=180, what="the pool filled")

        async def session():
            page = await Page.open(f"http://127.0.0.1:{port}/")
            listening = asyncio.create_task(page.listen())
            await page.click("Start")
            deadline = time.monotonic() + 120
            while len(page.plotted("lr")) < 5 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            before = page.plotted("lr")[-1]
            await page.move("lr", -1)
            while page.plotted("lr")[-1] == before and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            after, steps, status = page.plotted("lr")[-1], max(page.plotted("step")), page.status_step
            page.close()
            listening.cancel()
            return before, after, steps, status

        out = {}  # on a thread of its own: an earlier test's event loop may still be running on this one
        client = threading.Thread(target=lambda: out.update(result=asyncio.run(session())))
        client.start()
        client.join(300)
        before, after, steps, status = out["result"]
    assert before == pytest.approx(0.05) and after < before, "one stop left on the lr slider lowers the plotted lr"
    assert steps >= 5 and status is not None and status >= steps - 50
    assert "Traceback" not in log.read_text()
