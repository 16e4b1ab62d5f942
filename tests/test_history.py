"""History: bounded rows thinned in the old part, read from any thread by cursor, and snapshots."""
from __future__ import annotations

import threading

import numpy as np
import pandas as pd
import pytest
from conftest import small_run

from trainlab import History


def test_history_stays_bounded_and_keeps_recent_rows_whole():
    h = History(max_rows=200, keep_recent=50)
    for s in range(1, 1001):
        h.append({"step": s, "v": float(s)})
        assert len(h) <= 200
    steps = h.frame()["step"].tolist()
    assert len(steps) <= 200
    assert steps[-50:] == list(range(951, 1001))
    assert all(a < b for a, b in zip(steps, steps[1:]))
    older = [s for s in steps if s <= 950]
    assert len(older) > 0 and max(b - a for a, b in zip(older, older[1:])) > 1  # thinned, not dropped
    assert older[0] < 100  # the start of the run is still represented
    assert h.last_step == 1000


def test_history_rejects_inconsistent_bounds():
    with pytest.raises(ValueError):
        History(max_rows=50, keep_recent=50)
    with pytest.raises(ValueError):
        History(max_rows=50, keep_recent=0)


def test_run_with_bounded_history_stays_bounded():
    h = History(max_rows=200, keep_recent=50)
    run = small_run(history=h, batch_size=16)
    assert run.history is h
    run.step(300)
    steps = run.history.frame()["step"].tolist()
    assert len(steps) <= 200
    assert steps[-50:] == list(range(251, 301))
    assert all(a < b for a, b in zip(steps, steps[1:]))


def test_history_since_returns_only_new_rows():
    h = History()
    assert h.since(-1).empty and h.last_step == -1
    for s in range(1, 11):
        h.append({"step": s})
    assert h.since(5)["step"].tolist() == [6, 7, 8, 9, 10]
    assert h.since(-1)["step"].tolist() == list(range(1, 11))
    assert h.since(10).empty
    h.append({"step": 11})
    assert h.since(10)["step"].tolist() == [11]
    gen = h.generation
    h.clear()
    assert len(h) == 0 and h.generation != gen


def test_history_since_follows_a_run():
    run = small_run()
    run.step(4)
    cursor = run.history.last_step
    assert cursor == 4
    run.step(3)
    new = run.history.since(cursor)
    assert new["step"].tolist() == [5, 6, 7]
    pd.testing.assert_frame_equal(new.reset_index(drop=True), run.history.frame().iloc[4:].reset_index(drop=True))


def test_snapshots_keep_the_newest_pair_and_clear_with_the_rows():
    h = History()
    assert h.snapshot("esd") is None
    h.put_snapshot("esd", 3, {"a": 1})
    first = h.snapshot("esd")
    h.put_snapshot("esd", 3, {"a": 2})  # a second value at the same step is a new pair
    assert h.snapshot("esd") == (3, {"a": 2}) and h.snapshot("esd") is not first
    h.clear()
    assert h.snapshot("esd") is None


def test_appending_from_a_thread_while_reading_loses_no_row():
    h = History(max_rows=10_000_000, keep_recent=5)

    def write():
        for s in range(1, 20_001):
            h.append({"step": s})

    t = threading.Thread(target=write)
    t.start()
    seen, cursor = [], -1
    while t.is_alive() or h.last_step > cursor:
        rows = h.since(cursor)
        if len(rows):
            seen.extend(rows["step"].tolist())
            cursor = seen[-1]
    t.join()
    assert seen == list(range(1, 20_001))


def test_the_thinned_part_stays_evenly_spaced_for_every_kind_of_row():
    h = History(max_rows=1_000, keep_recent=200)
    for s in range(1, 100_001):
        row = {"step": s, "loss": 1.0}
        if s % 10 == 0:
            row["grad_norm"] = 1.0
        if s % 50 == 0:
            row["val_loss"] = 1.0
        if s == 31_337:
            row["event"] = "lr 0.1 -> 0.01"
        h.append(row)
    df = h.frame()
    assert len(df) <= 1_000 and df["step"].iloc[-1] == 100_000
    assert df["step"].tail(200).tolist() == list(range(99_801, 100_001))  # the recent rows whole
    assert 31_337 in df.dropna(subset=["event"])["step"].tolist()  # events are never thinned away
    old = df[df["step"] <= 99_800]
    for col in ("loss", "grad_norm", "val_loss"):
        steps = old.dropna(subset=[col])["step"].to_numpy()
        gaps = np.diff(steps)
        assert steps[0] <= 1_000 and gaps.max() <= 2.5 * np.median(gaps), col  # one density, start to end
