"""The Run: live settings, divergence, bounded history, persistence, seeding and the background thread."""
from __future__ import annotations

import math
import os
import pickle
import time

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from trainlab import Probe, Run, as_data, optimizers
from trainlab.models import mse

from conftest import small_run, training_threads, wait_until


def wait_for(cond, timeout=30.0, what="condition"):
    wait_until(cond, timeout, what, every=0.005)


def groups(run: Run) -> list[dict]:
    """The torch optimizer's hyperparameters, without the parameter tensors."""
    return [{k: v for k, v in g.items() if k != "params"} for g in run.torch_optimizer.param_groups]


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_state(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def no_time(df: pd.DataFrame) -> pd.DataFrame:
    return df.drop(columns=["time"])


class Recorder:
    """A loss that records what each training step scored (outputs without grad are checks/evaluation)."""

    def __init__(self, base=F.cross_entropy, delay: float = 0.0):
        self.base, self.delay = base, delay
        self.calls: list[tuple[torch.Tensor, torch.Tensor, float]] = []
        self.poison_at: set[int] = set()  # training-call numbers (1-based) whose loss is NaN

    def __call__(self, out, y):
        loss = self.base(out, y)
        if out.requires_grad:
            self.calls.append((out.detach().clone(), y.clone(), loss.item()))
            if self.delay:
                time.sleep(self.delay)
            if len(self.calls) in self.poison_at:
                loss = loss * float("nan")
        return loss


@pytest.fixture(autouse=True)
def _no_thread_left_behind():
    yield
    leaked = training_threads()
    for t in leaked:
        t.join(5)
    assert not leaked, "a test left a training thread running"


# ---- rejected settings -----------------------------------------------------------------------
BAD_SETS = [
    (dict(lr=-0.1), ["lr", "(0, inf)"]),
    (dict(lr=0.0), ["lr", "(0, inf)"]),
    (dict(lr=float("nan")), ["lr", "(0, inf)"]),
    (dict(momentum=1.0), ["momentum", "[0, 1)"]),
    (dict(momentum=1.5), ["momentum", "[0, 1)"]),
    (dict(batch_size=0), ["batch_size", "[1, inf)"]),
    (dict(eval_every=0), ["eval_every", "[1, inf)"]),
    (dict(weight_decay=-1.0), ["weight_decay", "[0, inf)"]),
    (dict(lr=0.01, momentum=2.0), ["momentum", "[0, 1)"]),  # the good lr is not applied either
    (dict(batch_size=8, lr=-1.0), ["lr", "(0, inf)"]),
    (dict(optimizer="nosuchopt"), ["optimizer", "nosuchopt", " sgd,", " adam,"]),
    (dict(optimizer="adam", beta1=1.0), ["beta1", "[0, 1)"]),
    (dict(optimizer="adam", momentum=0.5), ["momentum", "beta1", "beta2", "eps"]),
    (dict(beta1=0.5), ["beta1", "lr", "momentum", "nesterov"]),  # sgd has no beta1: lists valid ones
    (dict(learning_rate=0.1), ["learning_rate", "lr", "batch_size"]),
    (dict(nesterov=True, momentum=0.0), ["esterov", "momentum"]),
]


@pytest.mark.parametrize("bad, words", BAD_SETS, ids=[str(b) for b, _ in BAD_SETS])
def test_rejected_set_names_setting_and_changes_nothing(bad, words):
    run = small_run(lr=0.05, momentum=0.5, batch_size=32)
    run.step(2)
    before, before_groups, opt = run.settings(), groups(run), run.torch_optimizer
    with pytest.raises(ValueError) as e:
        run.set(**bad)
    for w in words:
        assert w in str(e.value), (w, str(e.value))
    assert run.settings() == before
    assert groups(run) == before_groups
    run.step(1)  # a step after the rejection still trains with the old settings
    assert run.torch_optimizer is opt
    assert groups(run) == before_groups
    assert run.history.frame()["lr"].iloc[-1] == 0.05


def test_nesterov_rule_applies_to_momentum_changes_too():
    run = small_run(momentum=0.9, nesterov=True)
    before, before_groups = run.settings(), groups(run)
    with pytest.raises(ValueError) as e:
        run.set(momentum=0.0)
    assert "esterov" in str(e.value) and "momentum" in str(e.value)
    assert run.settings() == before and groups(run) == before_groups
    with pytest.raises(ValueError):
        small_run(momentum=0.0, nesterov=True)


def test_rejected_sets_change_nothing_while_training_in_background():
    run = small_run(lr=0.05, momentum=0.5, batch_size=32)
    run.start()
    try:
        wait_for(lambda: run.steps > 5, what="some steps")
        before, before_groups = run.settings(), groups(run)
        for bad, words in BAD_SETS:
            with pytest.raises(ValueError) as e:
                run.set(**bad)
            assert all(w in str(e.value) for w in words), str(e.value)
            assert run.settings() == before, bad
            assert groups(run) == before_groups, bad
            assert run.status == "running"
        n = run.steps
        wait_for(lambda: run.steps > n + 5, what="training to go on")
        assert groups(run) == before_groups
        assert set(run.history.frame()["lr"]) == {0.05}
    finally:
        run.stop()


# ---- live changes ----------------------------------------------------------------------------
def test_set_applies_at_the_next_step():
    rec = Recorder()
    run = small_run(lr=0.05, momentum=0.0, batch_size=32, loss=rec)
    run.step(3)
    run.set(lr=0.01, batch_size=8)
    assert run.settings()["lr"] == 0.01 and run.settings()["batch_size"] == 8
    assert groups(run)[0]["lr"] == 0.05  # written into the optimizer between steps, not mid-step
    w0 = [p.detach().clone() for p in run.model.parameters()]
    run.step(1)
    assert groups(run)[0]["lr"] == 0.01
    df = run.history.frame()
    assert df["lr"].tolist() == [0.05, 0.05, 0.05, 0.01]
    assert [len(y) for _, y, _ in rec.calls] == [32, 32, 32, 8]
    # plain SGD: the step really used the new lr
    for p, before in zip(run.model.parameters(), w0):
        torch.testing.assert_close(p.detach(), before - 0.01 * p.grad, rtol=1e-5, atol=1e-7)


def test_set_optimizer_hyperparameters_live():
    run = small_run(momentum=0.5)
    run.step(1)
    run.set(momentum=0.8, weight_decay=0.001, nesterov=True)
    run.step(1)
    g = groups(run)[0]
    assert (g["momentum"], g["weight_decay"], g["nesterov"]) == (0.8, 0.001, True)
    assert run.settings()["momentum"] == 0.8


def test_live_set_while_training_in_background():
    rec = Recorder()
    run = small_run(lr=0.05, batch_size=32, loss=rec)
    run.start()
    try:
        wait_for(lambda: run.steps >= 5, what="some steps")
        run.set(lr=0.02, batch_size=16)
        wait_for(lambda: (run.history.frame()["lr"] == 0.02).sum() >= 3, what="the new lr in the history")
        assert groups(run)[0]["lr"] == 0.02
    finally:
        run.stop()
    lrs = run.history.frame()["lr"].tolist()
    k = lrs.index(0.02)
    assert k >= 5 and set(lrs[:k]) == {0.05} and set(lrs[k:]) == {0.02}  # one clean switch
    sizes = [len(y) for _, y, _ in rec.calls]
    assert set(sizes[:k]) == {32} and set(sizes[k:]) == {16}


def test_switching_optimizer_records_event_and_rebuilds():
    run = small_run(lr=0.01, momentum=0.9)
    run.step(3)
    old = run.torch_optimizer
    assert isinstance(old, torch.optim.SGD)
    run.set(optimizer="adam", beta1=0.8)
    run.step(2)
    assert run.torch_optimizer is not old
    assert isinstance(run.torch_optimizer, torch.optim.Adam)
    g = groups(run)[0]
    assert g["betas"] == (0.8, 0.999) and g["lr"] == 0.01
    s = run.settings()
    assert s["optimizer"] == "adam" and s["beta1"] == 0.8 and "momentum" not in s
    first_state = next(iter(run.torch_optimizer.state.values()))
    assert int(first_state["step"]) == 2  # fresh state: counts only the steps since the switch
    df = run.history.frame()
    assert "event" in df.columns
    assert df["event"].iloc[:3].isna().all() and df["event"].iloc[4:].isna().all()
    event = df["event"].iloc[3]
    assert "sgd" in event and "adam" in event
    # and back to sgd: its hyperparameters start from their defaults
    run.set(optimizer="sgd")
    run.step(1)
    assert isinstance(run.torch_optimizer, torch.optim.SGD)
    assert run.settings()["momentum"] == optimizers["sgd"].defaults()["momentum"]


def test_unknown_optimizer_in_constructor_lists_valid_ones():
    with pytest.raises(ValueError) as e:
        small_run(optimizer="nosuchopt")
    assert "nosuchopt" in str(e.value)
    for name in optimizers.names():
        assert name in str(e.value)


def test_wrong_hyperparameter_for_optimizer_in_constructor():
    with pytest.raises(ValueError) as e:
        small_run(optimizer="adam", momentum=0.9)
    msg = str(e.value)
    assert "momentum" in msg and "adam" in msg
    for hp in optimizers["adam"].params:
        assert hp in msg


def test_bad_settings_in_constructor():
    with pytest.raises(ValueError, match=r"lr.*\(0, inf\)"):
        small_run(lr=-1.0)
    with pytest.raises(ValueError, match=r"batch_size.*\[1, inf\)"):
        small_run(batch_size=0)
    with pytest.raises(ValueError, match=r"momentum.*\[0, 1\)"):
        small_run(momentum=1.0)


# ---- divergence ------------------------------------------------------------------------------
def test_huge_lr_pauses_and_rolls_back_to_weights_from_before_the_blow_up():
    run = Run(model="mlp", data="digits", device="cpu", lr=1e4, momentum=0.9)
    start = state(run.model)
    for _ in range(50):
        if run.step(1) == 0:
            break
    else:
        pytest.fail("SGD with lr=1e4 did not diverge in 50 steps")
    assert run.status == "paused"
    assert "diverged" in run.message and "lr" in run.message and "rolled back to step 0" in run.message
    assert_same_state(state(run.model), start)  # finite weights, not the 1e19s of the blow-up
    df = run.history.frame()
    assert len(df) == run.steps and df["step"].tolist() == list(range(1, run.steps + 1))
    assert np.isfinite(df["train_loss"]).all() and np.isfinite(df["grad_norm"]).all()
    # the same lr blows up again and comes back to the same place; no non-finite weights are ever kept
    run.step(5)
    assert run.status == "paused" and all(torch.isfinite(p).all() for p in run.model.parameters())
    run.set(lr=0.01)
    assert run.step(5) == 5


def test_divergence_pauses_and_lowering_lr_resumes_in_background():
    rec = Recorder()
    rec.poison_at = {8}  # the 8th training step's loss is NaN
    model = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 2))
    at_poison = {}

    def loss(out, y):
        if out.requires_grad and len(rec.calls) + 1 in rec.poison_at:
            at_poison.update(state(model))  # the weights the diverging step started from
        return rec(out, y)

    run = Run(model=model, data="moons", device="cpu", loss=loss, lr=0.1)
    run.start()
    try:
        wait_for(lambda: run.status == "paused", what="the divergence pause")
        assert "diverged" in run.message and "loss" in run.message
        assert run.steps == 7
        time.sleep(0.05)
        assert run.steps == 7 and run.status == "paused"  # really stopped stepping
        assert_same_state(state(model), at_poison)
        df = run.history.frame()
        assert df["step"].tolist() == list(range(1, 8)) and np.isfinite(df["train_loss"]).all()

        run.set(lr=0.01)
        run.resume()
        assert run.status == "running"
        wait_for(lambda: run.steps >= 20, what="training after resume")
    finally:
        run.stop()
    df = run.history.frame()
    assert df["step"].tolist() == list(range(1, len(df) + 1))  # no gap, no repeat
    assert np.isfinite(df["train_loss"]).all()
    assert (df["lr"].iloc[7:] == 0.01).all()


class _NanGrad(torch.autograd.Function):
    armed = False

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return g * float("nan") if _NanGrad.armed else g


class _NanGradNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(2, 8), nn.Linear(8, 2)

    def forward(self, x):
        return self.fc2(_NanGrad.apply(torch.tanh(self.fc1(x))))


class _SqrtNet(nn.Module):
    """sqrt at 0 is finite going forward, but its derivative is infinite: 0 * inf = NaN gradient."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(2, 2)
        self.s = nn.Parameter(torch.ones(()))
        self.at_zero = False

    def forward(self, x):
        z = self.s * 0.0 if self.at_zero else self.s
        return self.fc(x) + torch.sqrt(z) - torch.sqrt(z).detach()


@pytest.mark.parametrize("kind", ["autograd_function", "sqrt_at_zero"])
def test_non_finite_gradient_with_finite_loss_is_caught(kind):
    rec = Recorder()
    model = _NanGradNet() if kind == "autograd_function" else _SqrtNet()
    run = Run(model=model, data="moons", device="cpu", loss=rec, lr=0.1)
    try:
        assert run.step(3) == 3
        before = state(model)
        if kind == "autograd_function":
            _NanGrad.armed = True
        else:
            model.at_zero = True
        assert run.step(2) == 0
    finally:
        _NanGrad.armed = False
    assert math.isfinite(rec.calls[-1][2]), "the loss itself was finite"
    assert run.status == "paused"
    assert "diverged" in run.message and "gradient" in run.message
    assert_same_state(state(model), before)
    assert len(run.history) == 3 and run.steps == 3


def test_batchnorm_buffers_restored_on_divergence():
    rec = Recorder()
    run = small_run(model=("mlp", {"width": 16, "depth": 1, "norm": "batchnorm"}), loss=rec)
    run.step(3)
    before = {k: v.clone() for k, v in run.model.named_buffers()}
    assert {"norm1.running_mean", "norm1.running_var", "norm1.num_batches_tracked"} <= before.keys()
    rec.poison_at = {len(rec.calls) + 1}
    assert run.step(1) == 0
    after = dict(run.model.named_buffers())
    for k in before:
        assert torch.equal(after[k], before[k]), f"{k} was not restored"
    # the check can fail: a good step does move every one of them
    assert run.step(1) == 1
    moved = dict(run.model.named_buffers())
    assert all(not torch.equal(moved[k], before[k]) for k in before)




# ---- save and load ---------------------------------------------------------------------------
@pytest.mark.parametrize("optimizer, hp", [("sgd", {"momentum": 0.9}), ("adam", {"beta1": 0.85})])
def test_save_load_round_trip_and_exact_continuation(tmp_path, optimizer, hp):
    kw = dict(model=("mlp", {"width": 32}), data="digits", device="cpu", optimizer=optimizer, lr=0.01,
              batch_size=50, eval_every=20, seed=3, **hp)
    straight = Run(**kw)
    straight.step(60)

    first = Run(**kw)
    first.step(30)
    path = tmp_path / "run.pt"
    first.save(path)
    loaded = Run.load(path, device="cpu")

    assert loaded.settings() == first.settings()
    assert loaded.steps == 30
    assert_same_state(state(loaded.model), state(first.model))
    sa, sb = first.torch_optimizer.state_dict(), loaded.torch_optimizer.state_dict()
    assert sa["param_groups"] == sb["param_groups"]
    assert sa["state"].keys() == sb["state"].keys()
    for i in sa["state"]:
        for k in sa["state"][i]:
            assert torch.equal(torch.as_tensor(sa["state"][i][k]), torch.as_tensor(sb["state"][i][k])), (i, k)
    pd.testing.assert_frame_equal(loaded.history.frame(), first.history.frame(), check_dtype=False)

    loaded.step(30)
    a, b = no_time(straight.history.frame()), no_time(loaded.history.frame())
    assert a["train_loss"].tolist() == b["train_loss"].tolist()  # bit for bit
    pd.testing.assert_frame_equal(a, b, check_dtype=False)
    assert b["val_loss"].notna().sum() == 3
    assert_same_state(state(loaded.model), state(straight.model))


def test_reset_of_a_loaded_run_goes_back_to_the_initial_weights(tmp_path):
    run = small_run(seed=2)
    init = state(run.model)
    run.step(5)
    run.save(tmp_path / "r.pt")
    loaded = Run.load(tmp_path / "r.pt", device="cpu")
    loaded.reset()
    assert_same_state(state(loaded.model), init)
    assert len(loaded.history) == 0 and loaded.steps == 0


def test_save_is_atomic(tmp_path, monkeypatch):
    run = small_run()
    run.step(3)
    path = tmp_path / "run.pt"
    run.save(path)
    good = path.read_bytes()
    run.step(4)

    def broken_sync(fd):  # the bytes went to the temporary file; the disk filled before they were on it
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", broken_sync)
    with pytest.raises(OSError, match="disk full"):
        run.save(path)
    monkeypatch.undo()
    assert path.read_bytes() == good
    assert os.listdir(tmp_path) == ["run.pt"], "no temporary file is left behind"
    assert Run.load(path, device="cpu").steps == 3


def test_load_refuses_a_torch_file_that_is_not_a_run(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save({"weight": torch.zeros(3)}, path)
    with pytest.raises(ValueError, match="not a trainlab run"):
        Run.load(path, device="cpu")


def test_load_refuses_a_text_file(tmp_path):
    path = tmp_path / "notes.pt"
    path.write_text("these are not weights\n")
    with pytest.raises(ValueError, match="not a trainlab run"):
        Run.load(path, device="cpu")


class _Booby:
    """Unpickling this creates a file: proof that something was unpickled."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("how", ["pickle", "torch.save"])
def test_load_never_unpickles(tmp_path, how):
    marker = str(tmp_path / "unpickled")
    path = tmp_path / "run.pt"
    payload = {"format": "trainlab-run/1", "x": _Booby(marker)}
    if how == "pickle":
        with open(path, "wb") as f:
            pickle.dump(payload, f)
    else:
        torch.save(payload, path)
    with pytest.raises(ValueError, match="not a trainlab run"):
        Run.load(path, device="cpu")
    assert not os.path.exists(marker), "load executed code from the file"


def test_load_of_a_user_model_needs_model(tmp_path):
    def make():
        return nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 2))

    run = Run(model=make(), data="moons", device="cpu", lr=0.1)
    run.step(5)
    path = tmp_path / "mine.pt"
    run.save(path)
    with pytest.raises(ValueError, match="model="):
        Run.load(path, device="cpu")
    loaded = Run.load(path, model=make(), device="cpu")
    assert_same_state(state(loaded.model), state(run.model))
    assert loaded.steps == 5


def test_load_of_user_data_needs_data(tmp_path):
    d = as_data("moons")
    run = small_run(data=(d.X, d.y))
    run.step(2)
    run.save(tmp_path / "d.pt")
    with pytest.raises(ValueError, match="data="):
        Run.load(tmp_path / "d.pt", device="cpu")
    assert Run.load(tmp_path / "d.pt", data=(d.X, d.y), device="cpu").steps == 2


# ---- seeds -----------------------------------------------------------------------------------
def test_same_seed_same_history_and_reset_repeats_it():
    a = Run(data="digits", device="cpu", seed=1, eval_every=25)
    b = Run(data="digits", device="cpu", seed=1, eval_every=25)
    a.step(100)
    b.step(100)
    first = no_time(a.history.frame())
    pd.testing.assert_frame_equal(first, no_time(b.history.frame()))
    assert_same_state(state(a.model), state(b.model))

    a.reset()
    assert a.steps == 0 and len(a.history) == 0 and a.status == "idle"
    a.step(100)
    pd.testing.assert_frame_equal(first, no_time(a.history.frame()))

    c = Run(data="digits", device="cpu", seed=2, eval_every=25)
    c.step(100)
    assert not np.array_equal(first["train_loss"].to_numpy(), c.history.frame()["train_loss"].to_numpy())


# ---- the background thread -------------------------------------------------------------------
def test_start_stop_leaves_no_thread():
    run = small_run()
    run.start()
    try:
        assert run.status == "running"
        assert len(training_threads()) == 1
        wait_for(lambda: run.steps > 3)
    finally:
        run.stop()
    assert run.status == "stopped"
    assert training_threads() == []
    n = run.steps
    time.sleep(0.05)
    assert run.steps == n


def test_start_with_a_step_budget_stops_by_itself():
    run = small_run()
    run.start(steps=25)
    run.wait(timeout=20)
    assert training_threads() == []
    assert run.steps == 25 and len(run.history) == 25
    assert run.status == "stopped"


def test_pause_returns_with_no_step_in_progress():
    rec = Recorder(delay=0.01)  # slow steps, so that pause() lands mid-step
    run = small_run(loss=rec)
    run.start()
    try:
        for _ in range(3):
            wait_for(lambda: run.steps >= 3)
            run.pause()
            assert run.status == "paused"
            n, calls = run.steps, len(rec.calls)
            assert len(run.history) == n and run.history.last_step == n
            assert calls == n  # every step begun has finished and been logged
            time.sleep(0.1)
            assert run.steps == n and len(rec.calls) == calls
            run.resume()
            assert run.status == "running"
        with pytest.raises(RuntimeError, match="pause"):
            run.step(1)
        run.pause()
        n = run.steps
        assert run.step(2) == 2 and run.steps == n + 2  # by hand, once paused
    finally:
        run.stop()


def test_step_rejects_bad_counts():
    run = small_run()
    with pytest.raises(ValueError):
        run.step(-1)
    assert run.step(0) == 0 and run.steps == 0


# ---- data kinds ------------------------------------------------------------------------------
def _moons_tensors():
    d = as_data("moons")
    return d.X, d.y


def _decreased(run: Run, steps: int) -> bool:
    run.step(steps)
    loss = run.history.frame()["train_loss"]
    return loss.iloc[-10:].mean() < 0.6 * loss.iloc[:10].mean()


def test_dataset_trains_and_its_batch_size_is_live():
    X, y = _moons_tensors()
    rec = Recorder()
    run = small_run(data=TensorDataset(X, y), batch_size=32, lr=0.1, loss=rec)
    assert _decreased(run, 150)
    run.set(batch_size=8)
    run.step(2)
    assert [len(t) for _, t, _ in rec.calls[-3:]] == [32, 8, 8]
    assert run.history.frame()["epoch"].iloc[-1] > 0


def test_dataloader_trains_and_its_batch_size_is_fixed():
    X, y = _moons_tensors()
    loader = DataLoader(TensorDataset(X, y), batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(0))
    run = small_run(data=loader, lr=0.1)
    assert run.batch_size == 16
    assert _decreased(run, 150)
    before = run.settings()
    with pytest.raises(ValueError) as e:
        run.set(batch_size=8)
    assert "DataLoader" in str(e.value) and "batch_size" in str(e.value)
    assert run.settings() == before
    run.set(lr=0.05)  # other settings stay live
    run.step(1)
    assert groups(run)[0]["lr"] == 0.05


def test_regression_trains_with_mse():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(256, 3, generator=g)
    w = torch.tensor([1.5, -2.0, 0.5])
    y = X @ w + 0.05 * torch.randn(256, generator=g)
    Xv = torch.randn(64, 3, generator=g)
    run = small_run(data=(X, y), val_data=(Xv, Xv @ w), lr=0.05, batch_size=32, eval_every=50)
    assert run.data.task == "regression"
    assert run.loss_fn is mse
    run.step(200)
    df = run.history.frame()
    assert "train_acc" not in df.columns and "val_acc" not in df.columns
    assert df["train_loss"].iloc[-10:].mean() < 0.2 * df["train_loss"].iloc[:10].mean()
    # the logged validation loss is the MSE of the model on the validation set
    run.model.eval()
    with torch.no_grad():
        expected = F.mse_loss(run.model(Xv), (Xv @ w)[:, None]).item()
    assert df["val_loss"].iloc[-1] == pytest.approx(expected, rel=1e-5)


def test_train_columns_equal_what_the_batch_scored():
    rec = Recorder()
    run = Run(data="digits", device="cpu", batch_size=64, loss=rec)
    run.step(20)
    df = run.history.frame()
    assert len(rec.calls) == 20
    for (out, y, loss), (_, row) in zip(rec.calls, df.iterrows()):
        acc = (out.argmax(1) == y).double().mean().item()
        assert row["train_acc"] == pytest.approx(acc, abs=1e-9)
        assert row["train_loss"] == pytest.approx(loss, rel=1e-6)


def test_val_columns_every_eval_every_steps_only():
    run = small_run(eval_every=7)
    run.step(28)
    df = run.history.frame()
    has_val = df.loc[df["val_loss"].notna(), "step"].tolist()
    assert has_val == [7, 14, 21, 28]
    assert df.loc[df["val_acc"].notna(), "step"].tolist() == has_val
    # the value at step 28 is the model's after that step, on the validation set, in eval mode
    X, y = run.data.X_val, run.data.y_val
    run.model.eval()
    with torch.no_grad():
        out = run.model(X)
    run.model.train()
    assert df["val_loss"].iloc[-1] == pytest.approx(F.cross_entropy(out, y).item(), rel=1e-5)
    assert df["val_acc"].iloc[-1] == pytest.approx((out.argmax(1) == y).double().mean().item())
    run.set(eval_every=5)
    run.step(12)  # steps 29..40
    later = run.history.frame()
    assert later.loc[later["val_loss"].notna(), "step"].tolist() == [7, 14, 21, 28, 30, 35, 40]


def test_no_val_columns_without_validation_data():
    X, y = _moons_tensors()
    run = small_run(data=(X, y), eval_every=2)
    run.step(6)
    assert "val_loss" not in run.history.frame().columns


class _FailingProbe(Probe):
    """A probe whose measurement raises at its second measuring step."""

    def __init__(self):
        super().__init__(every=5)
        self.calls = 0

    def measure(self, run):
        self.calls += 1
        if self.calls == 2:
            raise RuntimeError("probe broke")
        return {"ok": 1.0}


def test_a_failing_probe_pauses_a_background_run_and_keeps_its_history():
    run = small_run(probes=[_FailingProbe()])
    run.start()
    wait_for(lambda: run.status == "paused", what="the run to pause on the probe error")
    assert "probe broke" in run.message and "step 10" in run.message
    df = run.history.frame()
    assert run.steps == 10 and df["step"].tolist() == list(range(1, 11))  # the failing step's row is logged
    assert df["ok"].dropna().index.tolist() == [4]  # only the first measurement landed
    run.stop()
    assert not training_threads()


def test_a_dataset_with_one_float_target_per_example_trains_with_mse():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(256, 3, generator=g)
    y = X @ torch.tensor([1.0, -2.0, 0.5])  # shape (N,): one target per example
    run = Run(model=("mlp", {"width": 16, "depth": 1}), data=TensorDataset(X, y), device="cpu", lr=0.02,
              batch_size=32, momentum=0.0)
    assert run.data.task == "regression" and run.data.n_out == 1
    run.step(200)
    losses = run.history.frame()["train_loss"]
    assert losses.iloc[-20:].mean() < 0.2 * losses.iloc[:20].mean()
    # the loss never broadcast (N, 1) against (N,): it equals the per-example mean squared error
    with torch.no_grad():
        out = run.model(X)
    assert run.loss_fn(out, y).item() == pytest.approx(((out.squeeze(1) - y) ** 2).mean().item(), rel=1e-6)


@pytest.mark.parametrize("name", optimizers.names())
def test_lr_defaults_to_the_optimizers_usual_value_and_reaches_torch(name):
    run = small_run(optimizer=name)
    assert run.lr == optimizers[name].meta.usual_lr
    key = optimizers[name].meta.lr_key  # max_lr for AliG; None for A2Grad, which has no lr
    # as the optimizer's own constructor stores it (GrokFastAdamW divides lr by 1 + grokfast_lamb)
    own = optimizers[name].build([torch.zeros(2, 2, requires_grad=True)], lr=run.lr).param_groups[0]
    assert key is None or groups(run)[0][key] == own[key]
    assert small_run(optimizer=name, lr=0.123).lr == 0.123


def _grad_norm_now(run: Run) -> float:
    return torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in run.model.parameters()])).item()


def test_gradients_share_one_buffer_and_survive_being_replaced():
    run = small_run(probes=[])
    run.step(3)
    flat = run.grads.flat
    assert flat is not None and all(p.grad.data_ptr() >= flat.data_ptr() for p in run.model.parameters())
    assert run.history.frame()["grad_norm"].iloc[-1] == pytest.approx(_grad_norm_now(run), rel=1e-5)
    run.torch_optimizer.zero_grad(set_to_none=True)  # a user's code drops the .grad views
    assert run.step(3) == 3
    assert run.history.frame()["grad_norm"].iloc[-1] == pytest.approx(_grad_norm_now(run), rel=1e-5)


def test_a_model_with_mixed_dtypes_keeps_separate_gradients():
    model = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 2))
    model[0].double()
    model.insert(1, _ToFloat())
    run = small_run(model=_Cast(model))
    assert run.grads.flat is None
    run.step(5)
    assert run.history.frame()["grad_norm"].iloc[-1] == pytest.approx(_grad_norm_now(run), rel=1e-5)


class _ToFloat(nn.Module):
    def forward(self, x):
        return x.float()


class _Cast(nn.Module):
    """Feeds float64 inputs to a model whose first layer is float64."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x.double())
