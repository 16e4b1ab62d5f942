"""The run store: runs saved whole and reopened exactly, listed and compared, recorded live; bad names,
paths outside the root and foreign files refused."""
from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import small_run, wait_until

from trainlab import History, Run
from trainlab.store import Store


def same_weights(a: Run, b: Run) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.model.state_dict().values(), b.model.state_dict().values()))


@pytest.fixture
def store(tmp_path):
    return Store(tmp_path / "runs")


# ---- saving and loading ---------------------------------------------------------------------------
def test_a_loaded_run_continues_bit_for_bit_with_its_settings_events_pruning_and_schedule(store):
    run = small_run(optimizer="adam", lr=0.01, pruning=("magnitude", {"sparsity": 0.5, "schedule": (
        "gradual", {"start": 2, "end": 30, "frequency": 5})}))
    run.step(12)
    run.set(lr=0.02, schedule=("cosine", {"total": 100}))
    run.step(6)
    run.set(optimizer="adamw", state="keep")  # pending when saved: saved as applied
    name = store.save(run, "a")
    back = store.load(name, device="cpu")
    assert back.settings() == run.settings() and back.schedule == run.schedule and back.pruning == run.pruning
    assert back.changes == run.changes and back.initial_settings == run.initial_settings
    for r in (run, back):
        r.step(15)
    assert same_weights(run, back)
    pd.testing.assert_frame_equal(run.history.frame().drop(columns="time"), back.history.frame().drop(columns="time"),
                                  check_like=True, check_dtype=False)


def test_probes_measure_on_after_a_load_as_they_would_have(store):
    from trainlab.probes.curvature import Sharpness
    from trainlab.probes.noise import GradientNoise
    from trainlab.probes.trajectory import TrajectoryProbe

    def probes():
        return [GradientNoise(every=3, examples=32), Sharpness(every=4, max_examples=64), TrajectoryProbe(every=2)]

    run = small_run(probes=probes())
    run.step(9)
    back = store.load(store.save(run, "p"), device="cpu", probes=probes())
    for r in (run, back):
        r.step(8)
    pd.testing.assert_frame_equal(run.history.frame().drop(columns="time"),
                                  back.history.frame().drop(columns="time"), check_like=True)
    steps, points = back.probes[2].points()
    assert list(steps) == list(range(2, 18, 2)) and torch.equal(points, run.probes[2].points()[1])


def test_the_events_say_what_changed_and_from_which_step(store):
    run = small_run(lr=0.05)
    run.step(10)
    run.set(lr=0.01, momentum=0.9)
    run.step(5)
    run.set(optimizer="adam", state="reset")
    run.step(5)
    store.save(run, "ev")
    events = store.events("ev")
    assert {"step": 11, "set": {"lr": 0.01, "momentum": 0.9}} in events
    switch = next(e for e in events if "set" in e and "optimizer" in e["set"])
    assert switch["step"] == 16 and switch["set"]["optimizer"] == "adam" and switch["set"]["state"] == "reset"
    logged = run.history.frame().dropna(subset=["event"])
    assert [{"step": int(s), "event": e} for s, e in zip(logged.step, logged.event)] == \
        [e for e in events if "event" in e]
    df = run.history.frame()
    assert df.lr[df.step == 10].item() == 0.05 and df.lr[df.step == 11].item() == 0.01  # the step it took effect


def test_list_shows_settings_final_metrics_and_status_and_history_is_one_tidy_frame(store):
    names = []
    for lr in (0.01, 0.1, 0.3):
        run = small_run(lr=lr, eval_every=10)
        run.step(20)
        names.append(store.save(run, f"lr{lr}"))
    listing = store.list()
    assert list(listing.name) == sorted(names) and set(listing.status) == {"complete"}
    assert {"lr", "optimizer", "model", "model.width", "train_loss", "val_loss", "step"} <= set(listing.columns)
    assert sorted(listing.lr) == [0.01, 0.1, 0.3] and (listing.step == 20).all()
    frame = store.history(names)
    assert list(frame.columns[:2]) == ["run", "step"] and len(frame) == 60
    by_run = {n: g for n, g in frame.groupby("run", observed=True)}
    assert by_run["lr0.3"].train_loss.iloc[-1] == listing.set_index("name").train_loss["lr0.3"]
    assert by_run["lr0.1"].val_loss.notna().sum() == 2
    assert store.history().shape == frame.shape
    store.delete("lr0.1")
    assert list(store.list().name) == ["lr0.01", "lr0.3"]
    with pytest.raises(ValueError, match=r"name='lr0\.1': no such run"):
        store.load("lr0.1")


def test_saving_again_goes_to_the_same_name_and_a_taken_name_is_not_overwritten_by_accident(store):
    run = small_run()
    run.step(3)
    name = store.save(run)
    run.step(3)
    assert store.save(run) == name and store.list().step.tolist() == [6]
    other = small_run(seed=1)
    with pytest.raises(ValueError, match=rf"name={name!r}: a run of that name is already in .*overwrite=True"):
        store.save(other, name)
    assert store.load(name, device="cpu").steps == 6
    store.save(other, name, overwrite=True)
    assert store.load(name, device="cpu").steps == 0
    third = small_run(seed=2)
    with store.track(third, name, overwrite=True):  # recorded afresh: the replaced run's checkpoint is not its own
        with pytest.raises(ValueError, match="never saved"):
            store.load(name)
        third.step(2)
    assert store.load(name, device="cpu").seed == 2
    assert [p.name for p in store.path(name).iterdir() if p.name.startswith("ckpt")] == ["ckpt-4"]  # old ones gone


def test_snapshots_survive_a_save(store):
    run = small_run()
    run.step(3)
    run.history.put_snapshot("esd", 3, np.linspace(0, 1, 7))
    run.history.put_snapshot("note", 3, object())  # not data: measured again rather than pickled
    back = store.load(store.save(run, "s"), device="cpu")
    step, value = back.history.snapshot("esd")
    assert step == 3 and np.array_equal(value, np.linspace(0, 1, 7))
    assert back.history.snapshot("note") is None


def test_run_load_reads_a_run_folder_of_a_store_and_run_save_writes_the_same_files(store, tmp_path):
    import zipfile

    run = small_run()
    run.step(4)
    store.save(run, "f")
    assert Run.load(store.path("f"), device="cpu").steps == 4
    run.save(tmp_path / "one.trainlab")
    ckpt = next(p for p in store.path("f").iterdir() if p.name.startswith("ckpt"))
    assert set(zipfile.ZipFile(tmp_path / "one.trainlab").namelist()) == {p.name for p in ckpt.iterdir()} | {
        "manifest.json"}


# ---- recording live -------------------------------------------------------------------------------
def test_a_live_run_is_readable_while_it_trains_and_complete_once_closed(store, tmp_path):
    run = small_run(history=History(max_rows=300, keep_recent=100))  # memory thins; the record on disk does not
    reader = Store(tmp_path / "runs")  # another view of the same folder, as another process would have
    with store.track(run, "live") as t:
        run.start()
        wait_until(lambda: len(reader.history("live")) > 50, 60, "rows on disk while it trains")
        assert reader.list().status.tolist() == ["running"]
        run.set(lr=0.2)
        store.save(run)  # a checkpoint meanwhile: still recording
        assert reader.status("live") == "running"
        wait_until(lambda: run.steps > 600, 60, "600 steps")
        run.stop()
        assert (store.path("live") / "live").is_dir()
    assert t.name == "live" and not (store.path("live") / "live").exists()
    assert reader.status("live") == "complete"
    frame = reader.history("live")
    assert frame.step.tolist() == list(range(1, run.steps + 1)) and len(run.history) < run.steps
    assert any("set" in e and e["set"] == {"lr": 0.2} for e in reader.events("live"))
    back = reader.load("live", device="cpu")
    assert back.steps == run.steps and same_weights(back, run)


def test_a_loaded_run_recorded_again_continues_its_history_and_a_reset_starts_it_over(store):
    run = small_run()
    run.step(10)
    store.save(run, "c")
    back = store.load("c", device="cpu")
    with store.track(back):
        back.step(5)
    assert store.history("c").step.tolist() == list(range(1, 16))
    with store.track(back):
        back.step(3)
        back.reset()
        back.step(4)
    assert store.history("c").step.tolist() == [1, 2, 3, 4] and store.load("c", device="cpu").steps == 4


def test_recording_refuses_what_would_mix_two_runs(store):
    a, b = small_run(), small_run(seed=1)
    with store.track(a, "x"):
        with pytest.raises(ValueError, match="already recorded live"):
            store.track(a, "y")
        with pytest.raises(ValueError, match=r"name='x': another run is being recorded under that name"):
            store.save(b, "x")
        with pytest.raises(ValueError, match=r"name='x': recorded live in this process"):
            store.delete("x")
    with pytest.raises(ValueError, match="not recorded live"):
        store.untrack(a)


def test_a_run_recorded_but_never_saved_lists_its_history_and_refuses_to_load(store):
    run = small_run()
    t = store.track(run, "n")
    run.step(5)
    t.recorder.close()  # what a dead process leaves: a live record and a manifest that says "running"
    from trainlab.store import store as impl
    impl._tracked.pop((store.root, "n"))
    assert store.status("n") == "crashed" and store.history("n").step.tolist() == [1, 2, 3, 4, 5]
    with pytest.raises(ValueError, match=r"'n' was recorded live but never saved \(crashed\)"):
        store.load("n")


# ---- bad input ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["", ".hidden", "a/b", "..", "a..b", "../x", "/abs", "a\\b", "x" * 129, 3,
                                  "sp ace", "new\nline"])
def test_bad_names_are_refused_naming_the_setting_and_nothing_is_written(store, name):
    run = small_run()
    with pytest.raises(ValueError, match=r"name=.* rejected: 1-128 letters, digits"):
        store.save(run, name)
    with pytest.raises(ValueError, match=r"name=.* rejected"):
        store.load(name)
    assert os.listdir(store.root) == []


def test_a_root_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(ValueError, match=r"root='.*f' rejected: it is a file; a store is a folder"):
        Store(tmp_path / "f")


def test_nothing_outside_the_root_is_read(store, tmp_path):
    run = small_run()
    run.step(2)
    store.save(run, "in")
    outside = tmp_path / "elsewhere"
    os.rename(store.path("in"), outside)
    os.symlink(outside, store.root / "link")  # a run folder that leads out of the root
    assert store.names() == [] and store.list().empty
    with pytest.raises(ValueError, match="leads outside the store's root"):
        store.load("link")
    os.rename(outside, store.root / "in")
    m = json.loads((store.path("in") / "manifest.json").read_text())
    for ck in ("../../elsewhere", "/etc"):  # a manifest pointing elsewhere is not followed
        (store.path("in") / "manifest.json").write_text(json.dumps({**m, "checkpoint": ck}))
        with pytest.raises(ValueError, match="never saved"):
            store.load("in")
    os.symlink(outside, store.path("in") / "ckpt-9")
    (store.path("in") / "manifest.json").write_text(json.dumps({**m, "checkpoint": "ckpt-9"}))
    with pytest.raises(ValueError, match="leads outside the store's root"):
        store.load("in")


class _Booby:
    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return (self.fn, self.args)


def _rehash(folder, member):
    import hashlib

    m = json.loads((folder / "manifest.json").read_text())
    data = (folder / m["checkpoint"] / member).read_bytes()
    m["files"][member] = {"bytes": len(data), "blake2b": hashlib.blake2b(data, digest_size=16).hexdigest()}
    (folder / "manifest.json").write_text(json.dumps(m))
    return folder / m["checkpoint"] / member


@pytest.mark.parametrize("member", ["weights.safetensors", "optimizer.json", "history.parquet", "settings.json"])
def test_a_pickle_in_place_of_a_file_is_refused_with_no_side_effect(store, tmp_path, member):
    run = small_run()
    run.step(2)
    store.save(run, "p")
    marker = tmp_path / "ran"
    path = next(p for p in store.path("p").iterdir() if p.name.startswith("ckpt")) / member
    path.write_bytes(pickle.dumps(_Booby(open, str(marker), "w")))
    with pytest.raises(ValueError, match=rf"p is damaged: .*\({member} changed after it was saved\)"):
        store.load("p")
    _rehash(store.path("p"), member)  # the hash made to match: still only JSON, safetensors and Parquet are read
    with pytest.raises(ValueError, match=r"p is damaged or not a trainlab run"):
        store.load("p")
    assert not marker.exists()


def test_a_folder_with_files_but_no_manifest_is_incomplete_never_complete(store):
    run = small_run()
    run.step(2)
    store.save(run, "half")
    (store.path("half") / "manifest.json").unlink()  # killed before the commit of its first save
    assert store.list().status.tolist() == ["incomplete"]
    with pytest.raises(ValueError, match="no readable manifest"):
        store.load("half")
    assert pd.api.types.is_object_dtype(store.list().name) or store.list().name.tolist() == ["half"]
