"""A save is always a consistent checkpoint, and a damaged or foreign file is refused naming the file."""
from __future__ import annotations

import os
import pickle
import random
import signal
import threading
import time
import zipfile

import numpy as np
import pandas as pd
import pytest
import safetensors.torch
import torch
from conftest import edit_json, edit_saved, small_run, wait_until

from trainlab import Run, checkpoint


def same_weights(a: Run, b: Run) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.model.state_dict().values(), b.model.state_dict().values()))


def no_time(df: pd.DataFrame) -> pd.DataFrame:
    return df.drop(columns=["time"])


# ---- what a save holds ---------------------------------------------------------------------------
def test_a_pending_optimizer_switch_is_saved_as_applied(tmp_path):
    run = small_run(momentum=0.9)
    run.step(20)
    run.set(optimizer="adam")  # not applied yet: save used to pair adam's settings with SGD's state
    run.save(tmp_path / "r.pt")
    loaded = Run.load(tmp_path / "r.pt", device="cpu")
    assert loaded.optimizer == "adam" and loaded.step(5) == 5
    run.step(5)
    assert same_weights(run, loaded)


def test_a_pending_lr_is_the_lr_the_loaded_run_steps_with(tmp_path):
    run = small_run(lr=0.05)
    run.step(5)
    run.set(lr=0.2)
    run.save(tmp_path / "r.pt")
    loaded = Run.load(tmp_path / "r.pt", device="cpu")
    loaded.step(1)
    assert loaded.lr == 0.2 and loaded.torch_optimizer.param_groups[0]["lr"] == 0.2
    assert loaded.history.frame()["lr"].iloc[-1] == 0.2
    assert "event" not in loaded.history.frame() or loaded.history.frame()["event"].isna().all()


def test_saves_while_four_threads_change_settings_all_load(tmp_path):
    run = small_run(optimizer="adam", probes=[])
    run.start()
    stop = threading.Event()

    def fiddle(k):
        rnd = random.Random(k)
        while not stop.is_set():
            choice = rnd.choice([dict(lr=10 ** rnd.uniform(-4, -2)), dict(beta1=rnd.uniform(0.5, 0.95)),
                                 dict(amsgrad=rnd.random() < 0.5), dict(optimizer=rnd.choice(["adam", "adamw"]))])
            try:
                run.set(**choice)
            except ValueError:
                pass
            time.sleep(0.001)

    threads = [threading.Thread(target=fiddle, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    try:
        for i in range(7):
            wait_until(lambda: run.steps > 20 * (i + 1), 60, "training between saves")
            run.save(tmp_path / f"r{i}.pt")
    finally:
        stop.set()
        for t in threads:
            t.join()
        run.stop()
    for i in range(7):
        loaded = Run.load(tmp_path / f"r{i}.pt", device="cpu")
        assert loaded.step(3) == 3, (i, loaded.message)


# ---- files that are not whole runs -----------------------------------------------------------------
@pytest.fixture
def saved(tmp_path):
    run = small_run()
    run.step(5)
    path = tmp_path / "run.pt"
    run.save(path)
    return run, path


def test_a_truncated_file_is_refused_naming_it(saved, tmp_path):
    _, path = saved
    cut = tmp_path / "cut.pt"
    cut.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 10])
    with pytest.raises(ValueError, match=r"cut\.pt is damaged or not a trainlab run"):
        Run.load(cut, device="cpu")


@pytest.mark.parametrize("member", ["weights.safetensors", "history.parquet", "optimizer.safetensors",
                                    "settings.json", "events.json"])
def test_a_file_missing_a_part_is_refused_naming_it(saved, tmp_path, member):
    _, path = saved
    edit_saved(path, tmp_path / "part.pt", drop=[member])
    with pytest.raises(ValueError, match=rf"part\.pt is not a whole trainlab run: it lacks {member}"):
        Run.load(tmp_path / "part.pt", device="cpu")


@pytest.mark.parametrize("key", ["step", "settings", "generator"])
def test_settings_missing_a_part_are_refused_naming_it(saved, tmp_path, key):
    _, path = saved
    edit_saved(path, tmp_path / "part.pt", edit={"settings.json": edit_json(lambda s: s.pop(key))})
    with pytest.raises(ValueError, match=rf"part\.pt is not a whole trainlab run: it lacks {key}"):
        Run.load(tmp_path / "part.pt", device="cpu")


def test_flipped_bytes_inside_a_weight_tensor_are_caught_by_the_checksum(saved, tmp_path):
    run, path = saved
    raw = bytearray(path.read_bytes())
    weight = run.model.state_dict()["fc1.weight"].contiguous().numpy().tobytes()
    at = raw.find(weight)
    assert at > 0, "the weight's bytes are stored as they are"
    for i in range(64):
        raw[at + 8 + i] ^= 0xFF
    bad = tmp_path / "flipped.pt"
    bad.write_bytes(bytes(raw))
    with zipfile.ZipFile(path) as z:  # the same bytes flipped in the member alone: safetensors loads it quietly
        member = bytearray(z.read("weights.safetensors"))
    start = member.find(weight)
    for i in range(64):
        member[start + 8 + i] ^= 0xFF
    assert safetensors.torch.load(bytes(member))["model/fc1.weight"].shape == (16, 2)
    with pytest.raises(ValueError, match=r"flipped\.pt is damaged: its contents do not match the checksum written "
                                         r"with them \(weights\.safetensors changed"):
        Run.load(bad, device="cpu")


def test_a_step_count_the_history_does_not_bear_out_is_refused(saved, tmp_path):
    _, path = saved
    # a consistent checksum: only the contents are wrong
    edit_saved(path, tmp_path / "lie.pt", edit={"settings.json": edit_json(lambda s: s.update(step=10_000))})
    with pytest.raises(ValueError, match=r"lie\.pt is not a consistent run: it says step 10000 but its history has 5"):
        Run.load(tmp_path / "lie.pt", device="cpu")


def test_a_file_of_another_model_is_refused_naming_it(saved, tmp_path):
    _, path = saved
    with pytest.raises(ValueError, match=r"run\.pt does not fit this model"):
        Run.load(path, model=("mlp", {"width": 8, "depth": 1}), device="cpu")


class _Booby:
    """Unpickling this runs code: proof that something was unpickled."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return (self.fn, self.args)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("how", ["open", "system", "exec", "nested"])
def test_malicious_pickles_are_refused_with_no_side_effect(tmp_path, how):
    marker = tmp_path / "ran"
    payload = {"open": _Booby(open, str(marker), "w"),
               "system": _Booby(os.system, f"touch {marker}"),
               "exec": _Booby(exec, f"open({str(marker)!r}, 'w')"),
               "nested": {"model_state": {"w": [_Booby(open, str(marker), "w")]}}}[how]
    path = tmp_path / "evil.pt"
    torch.save({"format": checkpoint.FORMAT, "x": payload}, path)
    with pytest.raises(ValueError, match=r"evil\.pt is not a trainlab run"):
        Run.load(path, device="cpu")
    with open(tmp_path / "evil.pkl", "wb") as f:
        pickle.dump({"format": checkpoint.FORMAT, "x": payload}, f)
    with pytest.raises(ValueError, match=r"evil\.pkl is .*not a trainlab run"):
        Run.load(tmp_path / "evil.pkl", device="cpu")
    assert not marker.exists(), "load executed code from the file"


# ---- killed in the middle of a save -------------------------------------------------------------
def _save_forever(path: str) -> None:
    run = Run(model=("mlp", {"width": 256, "depth": 3}), data="digits", device="cpu", threads=1)
    while True:
        run.step(1)
        run.save(path)


@pytest.mark.slow
def test_sigkill_during_saves_never_leaves_a_broken_file_and_the_next_save_cleans_up(tmp_path):
    import multiprocessing as mp

    path = tmp_path / "run.pt"
    rnd = random.Random(0)
    fork = mp.get_context("fork")  # the children share this process's imports: a trial costs no start-up
    for trial in range(20):
        proc = fork.Process(target=_save_forever, args=(str(path),), daemon=True)
        proc.start()
        wait_until(lambda: path.exists(), 60, "a first save")
        time.sleep(rnd.uniform(0.0, 0.3))
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(10)
        loaded = Run.load(path, device="cpu")  # whole: the last save that finished, never half of one
        assert loaded.steps >= 1 and len(loaded.history) == loaded.steps
    left = [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]
    small_run().save(path)  # the next save to the same place removes what killed savers left behind
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")], left


# ---- random live changes, saves and loads ------------------------------------------------------------
def _random_change(rnd: random.Random, run: Run) -> dict:
    name = run.optimizer
    options = [dict(lr=10 ** rnd.uniform(-3, -1)), dict(batch_size=rnd.choice([8, 16, 32])),
               dict(schedule=rnd.choice(["constant", ("cosine", {"total": 200}), ("step", {"step_size": 7})])),
               dict(optimizer=rnd.choice(["sgd", "adam", "rmsprop"]), state=rnd.choice(["keep", "reset"])),
               dict(grad_noise=rnd.choice([0.0, 1e-3]))]
    if name == "sgd":
        options += [dict(momentum=rnd.choice([0.0, 0.5, 0.9])), dict(nesterov=rnd.random() < 0.5)]
    if name == "adam":
        options += [dict(amsgrad=rnd.random() < 0.5), dict(betas=(rnd.uniform(0.5, 0.95), 0.999))]
    if name == "rmsprop":
        options += [dict(centered=rnd.random() < 0.5), dict(momentum=rnd.choice([0.0, 0.5]))]
    change = rnd.choice(options)
    if "optimizer" in change and change["optimizer"] == name:
        change.pop("state")
    return change


BAD = [dict(lr=-1.0), dict(momentum=1.5), dict(batch_size=0), dict(nonsense=1), dict(optimizer="nope"),
       dict(lr=torch.tensor(0.1)), dict(betas=(0.9,)), dict(eval_every=True)]


@pytest.mark.parametrize("seed", range(4))
def test_random_changes_saves_and_loads_continue_bit_for_bit(tmp_path, seed):
    rnd = random.Random(seed)
    run = small_run(optimizer=rnd.choice(["sgd", "adam"]), seed=seed)
    deadline = time.monotonic() + 60
    for round_ in range(4):
        for _ in range(rnd.randint(1, 4)):  # some changes, some of them refused
            if rnd.random() < 0.3:
                before = run.settings()
                with pytest.raises((ValueError, TypeError)):
                    run.set(**rnd.choice(BAD))
                assert run.settings() == before
            else:
                try:
                    run.set(**_random_change(rnd, run))
                except ValueError:
                    pass  # a combination the optimizer refuses (Nesterov with momentum 0): nothing changed
            run.step(rnd.randint(0, 6))
        path = tmp_path / f"r{round_}.pt"
        run.save(path)  # possibly with changes still pending
        twin = Run.load(path, device="cpu")
        later = [_random_change(rnd, run) for _ in range(3)]
        for change in later:  # the same future for both
            for r in (run, twin):
                try:
                    r.set(**change)
                except ValueError:
                    pass
                r.step(4)
        assert same_weights(run, twin), (seed, round_)
        pd.testing.assert_frame_equal(no_time(run.history.frame()), no_time(twin.history.frame()), check_dtype=False)
        assert time.monotonic() < deadline
    assert np.isfinite(run.history.frame()["train_loss"]).all()


def test_a_save_removes_temporary_files_of_dead_savers_only(tmp_path):
    import multiprocessing as mp

    path = tmp_path / "run.pt"
    dead = mp.get_context("fork").Process(target=lambda: None)
    dead.start()
    dead.join()
    alive = mp.get_context("fork").Process(target=time.sleep, args=(30,), daemon=True)
    alive.start()
    try:
        stale = tmp_path / f".trainlab-run.pt.{dead.pid}.abc.tmp"
        busy = tmp_path / f".trainlab-run.pt.{alive.pid}.def.tmp"  # another process saving right now
        other = tmp_path / f".trainlab-other.pt.{dead.pid}.ghi.tmp"  # a save to another file
        for f in (stale, busy, other):
            f.write_bytes(b"half a checkpoint")
        small_run().save(path)
        assert not stale.exists() and busy.exists() and other.exists()
    finally:
        alive.kill()
