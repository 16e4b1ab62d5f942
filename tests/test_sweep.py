"""Sweeps on Dask: results equal to plain runs, nothing lost or duplicated when a worker dies, cancellation,
an Optuna search, a cluster started on its own, and bad input refused before anything starts."""
from __future__ import annotations

import math
import os
import signal
import sys
import time
from pathlib import Path

import pytest
import torch

import trainlab
from conftest import free_port, serving, wait_until

BASE = {"model": ("mlp", {"width": 16, "depth": 1}), "data": "moons", "optimizer": "sgd", "eval_every": 25}
LONG = 200_000  # steps no test waits for: runs that are still training when the test acts


class FileStore:
    """A stand-in for trainlab.store.Store: `save` writes Run.save's file (the workers import this module)."""

    def __init__(self, root):
        self.root = str(root)

    def save(self, run, name=None):
        run.save(os.path.join(self.root, f"{name}.pt"))
        return name


class TrackingStore(FileStore):
    """A stand-in for a store that records runs live (trainlab.store's track): a marker while the run trains,
    the saved run when the block ends."""

    def track(self, run, name):
        store = self

        class Recording:
            def __enter__(self):
                open(os.path.join(store.root, f"{name}.live"), "w").close()
                self.name = name
                return self

            def __exit__(self, *exc):
                store.save(run, name)

        return Recording()


class TinyNet(torch.nn.Sequential):
    """A user's own model in an importable module (this one): the workers build it by name."""

    def __init__(self, hidden=8):
        super().__init__(torch.nn.Linear(2, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, 2))


def blobs(n=200, seed=0):
    """A user's own data: a function returning what Run's data= takes."""
    X = torch.randn(n, 2, generator=torch.Generator().manual_seed(seed))
    return X, (X[:, 0] + 0.3 * X[:, 1] > 0).long()


@pytest.fixture(scope="module")
def client():
    """A 2-worker LocalCluster as trainlab.sweep makes one (allowed-failures=0), shared by the tests here."""
    from trainlab.sweeps.cluster import connect

    c, cluster, _ = connect(None, workers=2)
    yield c
    c.close()
    cluster.close()


def _direct(config: dict, steps: int) -> trainlab.Run:
    run = trainlab.Run(**config, device="cpu")
    run.step(steps)
    return run


def _no_duplicates(sw) -> None:
    frame = sw.results()
    assert sorted(frame["index"]) == list(range(len(sw.configs)))
    assert frame["status"].isin(["finished", "failed", "cancelled", "diverged"]).all(), frame


@pytest.mark.slow
def test_a_grid_gives_what_the_same_runs_give_directly(client, tmp_path, monkeypatch):
    from distributed import Future

    seen, live, fetched = [], {}, []
    result = Future.result
    monkeypatch.setattr(Future, "result", lambda self, *a, **k: (fetched.append(self.key), result(self, *a, **k))[1])
    sw = trainlab.sweep(BASE, grid={"lr": [0.05, 0.2], "model.width": [8, 16]}, seeds=[3], steps=120,
                        scheduler=client, store=FileStore(tmp_path), report_every=0.01)
    sw.on_metrics(lambda i, rows: live.setdefault(i, []).extend(rows))
    sw.on_result(seen.append)
    arrived = list(sw.as_completed(timeout=120))
    sw.wait(60)
    frame = sw.results()
    assert sorted(r["index"] for r in arrived) == [0, 1, 2, 3] == sorted(r["index"] for r in seen)
    assert list(frame.columns[:4]) == ["index", "lr", "model.width", "seed"]
    assert (frame["status"] == "finished").all(), frame[["status", "error"]]
    assert (frame["steps"] == 120).all() and (frame["seed"] == 3).all()
    assert set(zip(frame["lr"], frame["model.width"])) == {(0.05, 8), (0.05, 16), (0.2, 8), (0.2, 16)}
    for row in frame.to_dict("records"):
        run = _direct({"model": ("mlp", {"width": row["model.width"], "depth": 1}), "data": "moons", "lr": row["lr"],
                       "seed": 3, "eval_every": 25}, 120)
        ref = run.history.frame()
        assert row["train_loss"] == ref["train_loss"].iloc[-1]  # the same seed gives the same run, bit for bit
        assert row["val_loss"] == pytest.approx(run.evaluate()["val_loss"], rel=1e-12)
        assert row["best_val_loss"] == pytest.approx(min(ref["val_loss"].min(), row["val_loss"]), rel=1e-12)
        saved = trainlab.Run.load(tmp_path / f"{row['name']}.pt", device="cpu")  # in the store once it finished
        assert saved.steps == 120 and saved.history.frame()["train_loss"].iloc[-1] == row["train_loss"]
        curve = sw.curves(row["index"])
        assert curve["step"].iloc[-1] == 120 and curve["train_loss"].iloc[-1] == row["train_loss"]
    assert live and all(r["step"] <= 120 for rows in live.values() for r in rows)  # live metrics while training
    assert not fetched  # every row came with its run's event: no task's result was fetched again


@pytest.mark.slow
def test_a_users_own_model_and_data_ship_by_name(client):
    sw = trainlab.sweep({"model": (TinyNet, {"hidden": 4}), "data": (blobs, {"n": 128}), "steps": 30},
                        grid={"lr": [0.1, 0.3]}, seeds=[5], scheduler=client)
    frame = sw.wait(120).results()
    assert (frame["status"] == "finished").all(), frame[["status", "error"]]
    assert sw.configs[0]["model"] == "test_sweep:TinyNet" and sw.configs[0]["data"] == "test_sweep:blobs"
    for row in frame.to_dict("records"):
        torch.manual_seed(5)  # the sweep builds the model under the run's seed
        run = _direct({"model": TinyNet(4), "data": blobs(128), "lr": row["lr"], "seed": 5}, 30)
        assert row["train_loss"] == run.history.frame()["train_loss"].iloc[-1]


@pytest.mark.slow
def test_cancel_stops_queued_runs_and_interrupts_running_ones(client):
    sw = trainlab.sweep(BASE, grid={"lr": [0.01, 0.02, 0.03, 0.04, 0.05, 0.06]}, steps=LONG, scheduler=client)
    wait_until(lambda: len(sw.running()) == 2 and all(sw.curves(i).shape[0] for i in sw.running()), 120,
               "two runs training, with live metrics")
    sw.cancel(timeout=60)
    frame = sw.results()
    _no_duplicates(sw)
    assert (frame["status"] == "cancelled").all(), frame[["status", "error"]]
    interrupted = frame[frame["steps"].notna()]
    assert len(interrupted) >= 2 and (interrupted["steps"] < LONG).all() and (interrupted["steps"] > 0).all()
    assert sw.progress().cancelled == 6 and sw.done
    assert not client.processing() or not any(client.processing().values())  # nothing left on the cluster


@pytest.mark.slow
def test_optuna_samples_within_the_declared_range(client, tmp_path):
    import optuna

    journal = tmp_path / "study.log"
    sw = trainlab.sweep({**BASE, "momentum": 0.5}, samples=4, space={"lr": "auto", "model.width": [8, 16]},
                        sampler=("random", {"seed": 1}), storage=journal, steps=60, scheduler=client, name="opt")
    sw.wait(120)
    frame = sw.results()
    assert len(frame) == 4 and (frame["status"] == "finished").all(), frame[["status", "error"]]
    lo, hi = trainlab.Run.param["lr"].softbounds
    assert frame["lr"].between(lo, hi).all() and frame["lr"].nunique() == 4
    study = optuna.load_study(study_name="opt", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(journal))))  # the journal holds every trial, told
    told = {t.number: t.value for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE}
    assert told == dict(zip(frame["trial"], frame["val_loss"]))
    assert {t.params["lr"] for t in study.trials} == set(frame["lr"])


def test_bad_configurations_are_refused_before_anything_starts(tmp_path):
    def refused(match, **kw):
        kw.setdefault("steps", 10)
        with pytest.raises(ValueError, match=match):
            trainlab.sweep(kw.pop("base", BASE), scheduler="tcp://127.0.0.1:1", **kw)  # never reached

    refused("grid is empty", grid={})
    refused(r"unknown setting 'lrr' in grid; valid settings here: lr, batch_size", grid={"lrr": [0.1]})
    refused(r"grid\['lr'\]=0.1 rejected: a non-empty list", grid={"lr": 0.1})
    refused(r"configuration 1 of 2 \(lr=-0.1, seed=0\): lr=-0.1 rejected for Run: allowed range \(0, inf\)",
            grid={"lr": [0.1, -0.1]})
    refused(r"configuration 2 of 4 \(model.width=0, seed=0\): model 'mlp': width=0 rejected",
            grid={"model.width": [4, 0]}, seeds=[0, 1])
    refused(r"configuration 0 of 1 \(momentum=1.5, seed=0\): momentum=1.5 rejected", grid={"momentum": [1.5]})
    refused(r"unknown setting 'model.widht' in grid", grid={"model.widht": [4]})
    refused(r"nesterov", grid={"nesterov": [True]})  # the optimizer's own rule: Nesterov needs momentum
    refused("steps is missing", grid={"lr": [0.1]}, steps=None)
    refused("not both", grid={"lr": [0.1]}, samples=3)
    refused(r"space\['lr'\]: low=-1 rejected", samples=2, space={"lr": {"low": -1, "high": 0.1}})
    refused(r"space\['model.width'\]: a log range needs low > 0|low=0 rejected", samples=2,
            space={"model.width": {"low": 0, "high": 8}})
    file = tmp_path / "a-file"
    file.write_text("")
    refused("is a file: a store is a folder", grid={"lr": [0.1]}, store=file)

    class Net(torch.nn.Module):
        pass

    Net.__module__ = "__main__"
    refused(r"model=.*Net rejected: it is defined in __main__ .* workers cannot import", base={**BASE, "model": Net},
            grid={"lr": [0.1]})
    refused(r"model='no_such_module:Net' cannot be imported", base={**BASE, "model": "no_such_module:Net"},
            grid={"lr": [0.1]})
    refused("an nn.Module instance", base={**BASE, "model": torch.nn.Linear(2, 2)}, grid={"lr": [0.1]})


def test_a_cluster_without_trainlab_is_refused_before_anything_is_submitted():
    from trainlab.sweeps.cluster import check_workers

    class Cluster:  # a Client whose scheduler, then whose worker, cannot unpickle trainlab's functions
        def __init__(self, scheduler_fails):
            self.scheduler_fails = scheduler_fails

        def run_on_scheduler(self, fn):
            if self.scheduler_fails:
                raise ImportError("No module named 'trainlab'")
            return fn()

        def run(self, fn, *args, on_error):
            return {"tcp://10.0.0.7:4000": ModuleNotFoundError("No module named 'trainlab'")}

        def submit(self, *args, **kwargs):
            raise AssertionError("nothing may be submitted")

    with pytest.raises(ValueError, match="the Dask scheduler cannot import trainlab .* nothing was started"):
        check_workers(Cluster(True), [])
    with pytest.raises(ValueError, match=r"worker tcp://10.0.0.7:4000 cannot run trainlab's sweep tasks .* install"):
        check_workers(Cluster(False), [])


def test_a_scheduler_that_does_not_answer_is_refused_within_seconds():
    port = free_port()  # nothing listens there
    start = time.monotonic()
    with pytest.raises(ConnectionError, match=f"no Dask scheduler answers at 'tcp://127.0.0.1:{port}'.*nothing was"):
        trainlab.sweep(BASE, grid={"lr": [0.1]}, steps=10, scheduler=f"tcp://127.0.0.1:{port}", timeout=2)
    assert time.monotonic() - start < 30  # the 2 s connection timeout, plus a loaded machine's slack


@pytest.mark.slow
def test_a_model_module_the_workers_cannot_import_is_refused_naming_the_worker(client, tmp_path, monkeypatch):
    (tmp_path / "mymodels_for_sweep.py").write_text(
        "import torch\nclass Net(torch.nn.Sequential):\n"
        "    def __init__(self, hidden=8):\n        super().__init__(torch.nn.Linear(2, hidden), torch.nn.ReLU(),"
        " torch.nn.Linear(hidden, 2))\n")
    monkeypatch.syspath_prepend(str(tmp_path))  # importable here; the workers started before, without it
    with pytest.raises(ValueError, match=r"worker tcp://.* cannot import 'mymodels_for_sweep:Net'.*PYTHONPATH"):
        trainlab.sweep({**BASE, "model": ("mymodels_for_sweep:Net", {"hidden": 4})}, grid={"lr": [0.1]}, steps=5,
                       scheduler=client)
    with pytest.raises(ValueError, match=r"does not take these options \(width\)"):
        trainlab.sweep({**BASE, "model": ("mymodels_for_sweep:Net", {"width": 4})}, grid={"lr": [0.1]}, steps=5,
                       scheduler=client)


STEPS = 1000  # a run of a second or more: long enough to be killed mid-run


def _kill_mid_run(sw) -> tuple[int, float]:
    """kill -9 the worker process of a run that is training (its live metrics are coming); (its index, when)."""
    def training():
        assert not sw.done, sw.results()[["status", "error"]].to_string()
        for i, info in sw.running().items():
            live = sw.curves(i)
            if live.shape[0] and live["step"].iloc[-1] < STEPS // 2:  # well before its end
                return i, info
        return None

    victim, info = wait_until(training, 120, "a run training, with live metrics")
    os.kill(info["pid"], signal.SIGKILL)
    return victim, time.time()


@pytest.mark.slow
def test_a_worker_killed_mid_sweep_loses_only_its_run():
    sw = trainlab.sweep(BASE, grid={"lr": [0.01, 0.02, 0.03, 0.04]}, steps=STEPS, workers=2,
                        report_every=0.1)  # the embedded cluster
    victim, killed = _kill_mid_run(sw)
    sw.wait(300)
    frame = sw.results().set_index("index")
    _no_duplicates(sw)
    assert frame.loc[victim, "status"] == "failed" and "died" in frame.loc[victim, "error"], frame.loc[victim]
    assert [f["index"] for f in sw.failures] == [victim]
    assert sw.failures[0]["time"] - killed < 5  # reported within 5 s
    others = frame.drop(index=victim)
    assert (others["status"] == "finished").all() and (others["steps"] == STEPS).all(), others[["status", "error"]]


@pytest.mark.slow
def test_the_same_sweep_on_a_cluster_started_separately(tmp_path, monkeypatch):
    """`dask scheduler` + `dask worker` processes (Dask's default allowed-failures=3): the cluster path is the
    same code; a worker killed mid-run is seen leaving, its run tried again once, none counted twice."""
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    bin_dir = Path(sys.executable).parent
    # the scheduler unpickles the tasks and the workers run them: both import this module (the test store)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(Path(__file__).parent),
                                                                  os.environ.get("PYTHONPATH")])))
    scheduler = [str(bin_dir / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"]
    worker = [str(bin_dir / "dask"), "worker", address, "--nworkers", "2", "--nthreads", "1", "--no-dashboard",
              "--host", "127.0.0.1"]
    with serving(scheduler, port, tmp_path), serving_workers(worker, address, tmp_path):
        store = tmp_path / "store"
        store.mkdir()
        sw = trainlab.sweep(BASE, grid={"lr": [0.02, 0.04, 0.06, 0.08]}, steps=STEPS, scheduler=address, retries=1,
                            report_every=0.1, store=TrackingStore(store), name="ext")
        victim, killed = _kill_mid_run(sw)
        sw.wait(300)
        frame = sw.results().set_index("index")
        _no_duplicates(sw)
        assert (frame["status"] == "finished").all(), frame[["status", "error"]]
        assert frame.loc[victim, "attempts"] == 2 and (frame.drop(index=victim)["attempts"] == 1).all()
        assert [f["index"] for f in sw.failures] == [victim] and sw.failures[0]["time"] - killed < 5
        # the attempt that died left its live record; the retry is stored beside it: one saved run each
        assert frame.loc[victim, "name"] == f"ext-{victim:04d}-2"
        assert sorted(p.name for p in store.glob("*.pt")) == sorted(f"{n}.pt" for n in frame["name"])
        assert (store / f"ext-{victim:04d}.live").exists() and not (store / f"ext-{victim:04d}.pt").exists()
        direct = _direct({"model": ("mlp", {"width": 16, "depth": 1}), "data": "moons", "lr": 0.02,
                          "eval_every": 25}, STEPS)
        assert frame.loc[0, "train_loss"] == direct.history.frame()["train_loss"].iloc[-1]


class serving_workers:
    """`dask worker` processes in their own process group, until the block ends (stopped by group)."""

    def __init__(self, cmd, address, folder):
        self.cmd, self.address, self.folder = cmd, address, folder

    def __enter__(self):
        import subprocess

        from distributed import Client

        self.log = open(self.folder / "workers.log", "wb")
        self.proc = subprocess.Popen(self.cmd, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        with Client(self.address, timeout=30) as c:
            c.wait_for_workers(2, timeout=120)
        return self.proc

    def __exit__(self, *exc):
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except Exception:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.log.close()


@pytest.mark.slow
def test_the_command_line_runs_a_toml_sweep(client, tmp_path, capsys):
    from trainlab.widgets.cli import main

    config = tmp_path / "sweep.toml"
    config.write_text(
        'steps = 40\nseeds = [0, 1]\n\n[base]\nmodel = ["mlp", {width = 8, depth = 1}]\ndata = "moons"\n'
        '"data.noise" = 0.2\n\n[grid]\nlr = [0.05, 0.1]\n')
    out = tmp_path / "results.csv"
    assert main(["sweep", str(config), "--scheduler", client.scheduler.address, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "4 runs on tcp://" in printed and printed.count(": finished, val_loss") == 4
    import pandas as pd

    table = pd.read_csv(out)
    assert sorted(zip(table["lr"], table["seed"])) == [(0.05, 0), (0.05, 1), (0.1, 0), (0.1, 1)]
    assert (table["status"] == "finished").all() and math.isfinite(table["val_loss"].sum())
    config.write_text('steps = 40\n[base]\nlr = -1\n[grid]\n"model.width" = [4]\n')
    assert main(["sweep", str(config), "--scheduler", client.scheduler.address]) == 2
    assert "lr=-1 rejected" in capsys.readouterr().err


def test_a_toml_file_reads_as_the_sweeps_arguments(tmp_path):
    from trainlab.sweeps.config import expand
    from trainlab.sweeps.tomlfile import read

    path = tmp_path / "sweep.toml"
    path.write_text('steps = 30\nseeds = [0, 1]\nretries = 1\n[base]\nmodel = ["mlp", {width = 8}]\n'
                    '"model.depth" = 1\ndata = "moons"\n[grid]\nlr = [0.1, 0.2]\n'
                    'model = [["mlp", {width = 4}], "mlp"]\n')
    kwargs = read(path)
    assert kwargs["steps"] == 30 and kwargs["retries"] == 1 and kwargs["grid"]["lr"] == [0.1, 0.2]
    configs, columns = expand({**kwargs["base"], "steps": 30}, kwargs["grid"], kwargs["seeds"])
    assert columns == ["lr", "model"] and len(configs) == 8
    first, shown = configs[0]
    assert shown == {"lr": 0.1, "model": "mlp(width=4)"}
    assert {k: first[k] for k in ("model", "model.width", "model.depth", "seed", "steps")} == \
        {"model": "mlp", "model.width": 4, "model.depth": 2, "seed": 0, "steps": 30}  # a pair replaces the options
    assert configs[2][0]["model.width"] == 8 and configs[2][0]["model.depth"] == 1  # a name keeps the base's
    path.write_text("steps = 30\nlearning_rate = 0.1\n")
    with pytest.raises(ValueError, match="unknown key 'learning_rate'; a sweep file takes name, steps"):
        read(path)
    path.write_text("steps = \n")
    with pytest.raises(ValueError, match="is not valid TOML"):
        read(path)


def test_the_search_space_comes_from_the_declared_parameters():
    from optuna import distributions as d

    from trainlab.sweeps.space import distributions

    base = {**BASE, "steps": 10}
    got = distributions(base, {"lr": "auto", "model.width": "auto", "momentum": "auto", "model.activation": "auto",
                               "optimizer": ["sgd", "adam"], "batch_size": {"low": 16, "high": 128}})
    lr, width = trainlab.Run.param["lr"], trainlab.models["mlp"].params["width"]
    assert got["lr"] == d.FloatDistribution(*lr.softbounds, log=True)  # a LogNumber: on a log scale
    assert got["model.width"] == d.IntDistribution(*width.softbounds, log=True)  # a LogInteger too
    momentum = trainlab.optimizers["sgd"].params["momentum"]
    assert got["momentum"] == d.FloatDistribution(*momentum.softbounds, log=False)
    assert got["model.activation"] == d.CategoricalDistribution(["relu", "tanh", "gelu", "linear"])
    assert got["optimizer"] == d.CategoricalDistribution(["sgd", "adam"])
    assert got["batch_size"] == d.IntDistribution(16, 128, log=True)
    with pytest.raises(ValueError, match=r"space\['optimizer'\]: choice='nosuch' rejected: unknown optimizer"):
        distributions(base, {"optimizer": ["sgd", "nosuch"]})


@pytest.mark.slow
def test_a_worker_killed_mid_batch_loses_only_its_unfinished_run(monkeypatch, tmp_path):
    """Three runs to a task: the batch's ended run stays ended (and stored), the one training fails, the one
    after it, never started, trains elsewhere; each result came as its run ended."""
    from trainlab.sweeps import monitor

    monkeypatch.setattr(monitor.Sweep, "_batch_size", lambda self: 3)
    seen = []
    sw = trainlab.sweep(BASE, grid={"lr": [0.01, 0.02, 0.03, 0.04, 0.05, 0.06]}, steps=STEPS, workers=2,
                        report_every=0.1, store=FileStore(tmp_path))
    sw.on_result(lambda row: seen.append((row["index"], time.monotonic())))

    def second_of_a_batch_training():
        assert not sw.done, sw.results()[["status", "error"]].to_string()
        for i, info in sw.running().items():
            key = sw._key_of.get(i)
            batch = sw._futures.get(key, ([],))[0]
            live = sw.curves(i)
            if batch[1:2] == [i] and sw.progress().finished and live.shape[0] and live["step"].iloc[-1] < STEPS // 2:
                return i, batch, info
        return None

    victim, batch, info = wait_until(second_of_a_batch_training, 180, "the second run of a batch training")
    done_before = {i for i, _ in seen}
    assert batch[0] in done_before  # its batch-mate's result came before the batch ended
    os.kill(info["pid"], signal.SIGKILL)
    killed = time.time()
    sw.wait(300)
    frame = sw.results().set_index("index")
    _no_duplicates(sw)
    assert frame.loc[victim, "status"] == "failed" and "died" in frame.loc[victim, "error"]
    assert [f["index"] for f in sw.failures] == [victim] and sw.failures[0]["time"] - killed < 5
    others = frame.drop(index=victim)
    assert (others["status"] == "finished").all() and (others["steps"] == STEPS).all(), others[["status", "error"]]
    assert frame.loc[batch[0], "attempts"] == 1 and frame.loc[batch[2], "attempts"] == 1  # never run twice
    assert sorted(p.name for p in tmp_path.glob("*.pt")) == sorted(f"{n}.pt" for n in others["name"])
