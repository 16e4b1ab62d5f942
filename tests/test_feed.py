"""The Feed, fed by a History filled directly: what reaches the plots, how much per tick, and when it rebases."""
from __future__ import annotations

import numpy as np
import pytest
from bokeh.document import Document

from trainlab import History
from trainlab.widgets import Feed


def fill(history: History, start: int, stop: int, **extra) -> None:
    """Rows for steps start..stop-1, as a run logs them: a loss every step, `val` every 10th."""
    for s in range(start, stop):
        row = {"step": s, "train_loss": 1.0 / s}
        if s % 10 == 0:
            row["val_loss"] = 2.0 / s
        history.append({**row, **extra})


def steps(source) -> list[float]:
    return list(source.data["step"])


def test_a_tick_streams_the_new_rows_of_each_source_and_sparse_ones_skip_gaps():
    h = History()
    feed = Feed(h)
    train, val = feed.source(["train_loss"]), feed.source({"val_loss": "v"}, sparse=True)
    fill(h, 1, 31)
    feed.tick()
    assert steps(train) == list(range(1, 31))
    np.testing.assert_allclose(train.data["train_loss"], 1.0 / np.arange(1, 31))
    assert steps(val) == [10, 20, 30] and list(val.data["v"]) == pytest.approx([0.2, 0.1, 2 / 30])
    feed.tick()  # nothing new: nothing changes
    assert steps(train) == list(range(1, 31))


def test_feed_thins_a_burst_to_a_steady_rate():
    h = History()
    feed = Feed(h, max_rows_per_tick=50, length=1000)
    src = feed.source(["train_loss"])
    fill(h, 1, 301)
    feed.tick()  # catching up on the past: up to half a source's length
    assert steps(src) == list(range(1, 301))
    fill(h, 301, 901)
    feed.tick()  # a burst while watching: at most max_rows_per_tick, always ending at the newest row
    got = steps(src)
    assert len(got) - 300 <= 50 and got[-1] == 900 and got == sorted(got)


def test_a_full_source_halves_itself_and_keeps_the_whole_run_evenly():
    h = History()
    feed = Feed(h, length=100)
    src = feed.source(["train_loss"])
    for k in range(25):
        fill(h, 40 * k + 1, 40 * k + 41)  # 1,000 steps, 40 a tick
        feed.tick()
    got = np.array(steps(src))
    stride = np.diff(got)
    assert 50 <= len(got) <= 100 and got[0] == 1 and got[-1] > 1000 - 16  # the whole run at bounded size
    assert (stride == stride[0]).all()  # evenly spaced: no gap joined by a line, no dense tail
    np.testing.assert_allclose(src.data["train_loss"], 1.0 / got)  # each point is its own step's value


def test_a_long_history_thinned_by_itself_draws_every_column_over_the_whole_run():
    """The History thins its old rows; the sparse columns (validation every 10th step here) stay from the
    start of the run to its end (they used to vanish from the old part, and plots joined the gap)."""
    h = History(max_rows=2_000, keep_recent=500)
    fill(h, 1, 20_001)
    feed = Feed(h, length=400)
    val = feed.source({"val_loss": "v"}, sparse=True)
    train = feed.source(["train_loss"])
    feed.tick()
    v, t = steps(val), steps(train)
    assert v[0] <= 100 and v[-1] == 20_000 and len(v) <= 400
    assert t[0] <= 10 and t[-1] >= 19_990 and len(t) <= 400
    assert max(np.diff(v)) <= 8 * (20_000 / len(v))  # no stretch of the run left without points


@pytest.fixture
def watched():
    """A History with 30 rows and a Feed that has sent them to a source."""
    h = History()
    feed = Feed(h)
    src = feed.source(["train_loss"])
    fill(h, 1, 31)
    feed.tick()
    return h, feed, src


def test_a_source_added_while_watching_starts_with_the_past(watched):
    h, feed, early = watched
    late = feed.source(["train_loss"])  # a lab tab opened at step 30
    assert steps(late) == list(range(1, 31))
    fill(h, 31, 36)
    feed.tick()
    assert steps(late) == steps(early) == list(range(1, 36))


def test_a_cleared_history_starts_the_plots_over(watched):
    h, feed, src = watched
    h.clear()
    fill(h, 1, 6)
    feed.tick()
    assert steps(src) == [1, 2, 3, 4, 5]


def test_feed_redraws_each_new_snapshot_even_at_the_same_step():
    h = History()
    feed = Feed(h)
    src = feed.snapshot("analysis", lambda v: {"v": [v]}, initial=0)
    twin = feed.snapshot("analysis", lambda v: {"w": [2 * v]}, initial=0)  # two sources may follow one snapshot
    feed.tick()
    assert src.data["v"] == [0] and feed.follows("analysis") and not feed.follows("other")
    h.put_snapshot("analysis", 5, 1)
    feed.tick()
    assert src.data["v"] == [1] and twin.data["w"] == [2]
    h.put_snapshot("analysis", 5, 2)  # a second analysis of the same step
    feed.tick()
    assert src.data["v"] == [2] and feed.snapshot_source("analysis") is src


def test_listeners_run_on_every_tick():
    h = History()
    feed = Feed(h)
    calls = []
    feed.on_tick(lambda: calls.append(h.last_step))
    fill(h, 1, 4)
    feed.tick()
    feed.tick()
    assert calls == [3, 3]


def test_plots_go_out_every_tick_for_a_while_after_a_change():
    h = History()
    feed = Feed(h, plot_every=5)
    src = feed.source(["train_loss"])
    fill(h, 1, 3)
    feed._periodic()  # tick 1 of 5: plots wait for the slower beat
    assert steps(src) == []
    feed.soon(ticks=2)
    feed._periodic()
    assert steps(src) == [1, 2]
    fill(h, 3, 4)
    feed._periodic()
    assert steps(src) == [1, 2, 3]
    fill(h, 4, 5)
    feed._periodic()  # tick 4: the burst is over
    assert steps(src) == [1, 2, 3]
    feed._periodic()  # tick 5: the beat
    assert steps(src) == [1, 2, 3, 4]


class _ServedDoc(Document):
    """A served page's document as far as the feed's chase uses it: a session, and timeouts run by hand."""

    session_context = object()

    def __init__(self):
        super().__init__()
        self.timeouts = []

    def add_timeout_callback(self, fn, ms):
        self.timeouts.append((fn, ms))

    def run_timeouts(self) -> int:
        due, self.timeouts = self.timeouts, []
        for fn, _ in due:
            fn()
        return len(due)


def test_a_change_in_a_served_page_is_drawn_as_soon_as_the_run_logs_its_next_step(monkeypatch):
    import panel as pn
    from trainlab.widgets import feed as feed_module

    doc = _ServedDoc()
    monkeypatch.setattr(type(pn.state), "curdoc", property(lambda self: doc))
    h = History()
    feed = Feed(h, plot_every=5)
    src = feed.source(["train_loss"])
    feed._callback = type("Running", (), {"stop": lambda self: None})()  # as if started in a page
    fill(h, 1, 3)
    feed.tick()
    feed.soon()
    assert doc.run_timeouts() == 1 and steps(src) == [1, 2]  # no new step yet: it looks again
    assert doc.timeouts and doc.timeouts[0][1] == feed_module.CHASE_MS
    fill(h, 3, 4)  # the step that applies the change
    assert doc.run_timeouts() == 1 and steps(src) == [1, 2, 3]  # drawn at once, not at the plots' next beat
    assert doc.timeouts == []  # and it stops looking
    feed.soon()
    for _ in range(feed_module.CHASE_TRIES + 5):  # a paused run logs nothing: the chase gives up
        doc.run_timeouts()
    assert doc.timeouts == [] and steps(src) == [1, 2, 3]


def test_many_connected_pages_slow_down_unless_just_changed(monkeypatch):
    """Past FULL_RATE_PAGES connected pages an untouched page updates every pace() ticks; a page whose
    settings just changed keeps every tick; a closed page stops counting."""
    from trainlab.widgets import feed as feed_module

    open_pages = {}
    monkeypatch.setattr(feed_module, "connections", lambda: open_pages.get(current[0], 1))
    current = [None]
    h = History()
    fill(h, 1, 3)
    feeds, calls = [], []
    n = 3 * feed_module.FULL_RATE_PAGES
    for i in range(n):
        f = Feed(h)
        f.on_tick(lambda i=i: calls.append(i))
        feeds.append(f)

    def tick_all():
        for i, f in enumerate(feeds):
            current[0] = i
            f._periodic()

    tick_all()  # each registers as connected on its first tick
    assert feed_module.pace() == 3
    calls.clear()
    feeds[0].soon(ticks=6)
    for _ in range(6):
        tick_all()
    assert calls.count(0) == 6  # just changed: every tick
    assert all(calls.count(i) == 2 for i in range(1, n))  # the others: every third
    for i in range(1, n):  # their pages close: back to the full rate
        open_pages[i] = 0
    tick_all()
    assert feed_module.pace() == 1
    calls.clear()
    tick_all()
    tick_all()
    assert calls == [0, 0]
