"""The sweep's task on a worker, without a cluster: the events it sends for a batch of runs, in how many messages."""
from __future__ import annotations

from types import SimpleNamespace

from trainlab.sweeps import task
from trainlab.sweeps.config import expand

BASE = {"model": ("mlp", {"width": 8, "depth": 1}), "data": "moons", "optimizer": "sgd", "steps": 20}


class FakeWorker:
    """What run_batch asks of a Dask worker; each log_event is recorded (and may cancel the task)."""

    address, key = "tcp://fake:1", "trainlab-task-0"

    def __init__(self, cancel_after_start: bool = False):
        self.sent, self.cancel_after_start = [], cancel_after_start
        self.state = SimpleNamespace(tasks={self.key: SimpleNamespace(state="executing")})

    def get_current_task(self):
        return self.key

    def log_event(self, topic, msg):
        self.sent.append((topic, msg))
        if self.cancel_after_start and any(e["kind"] == "started" for e in msg):
            self.state.tasks[self.key].state = "cancelled"  # as Dask marks a task whose future was cancelled


def _batch(monkeypatch, worker, n=3):
    monkeypatch.setattr(task, "_worker", lambda: worker)
    monkeypatch.setattr(task, "CHECK_EVERY", 0.0)  # the task's own state is looked at before every step
    configs = [c for c, _ in expand(BASE, {"lr": [0.05 * (i + 1) for i in range(n)]}, None)[0]]
    items = [(i, c, None) for i, c in enumerate(configs)]
    return task.run_batch(items, topic="t", report_every=60)


def test_a_runs_result_goes_out_with_the_next_runs_start(monkeypatch):
    worker = FakeWorker()
    rows = _batch(monkeypatch, worker)
    assert [r["status"] for r in rows] == ["finished"] * 3
    messages = [[(e["kind"], e["index"]) for e in msg] for _, msg in worker.sent]
    assert messages == [[("started", 0)], [("result", 0), ("started", 1)], [("result", 1), ("started", 2)],
                        [("result", 2)]]  # 4 messages for the 6 events
    results = [e for _, msg in worker.sent for e in msg if e["kind"] == "result"]
    assert [e["row"]["train_loss"] for e in results] == [r["train_loss"] for r in rows]
    assert all(e["key"] == worker.key and e["elapsed"] > 0 for e in results)


def test_a_result_held_for_a_start_that_never_comes_is_still_sent(monkeypatch):
    worker = FakeWorker(cancel_after_start=True)
    rows = _batch(monkeypatch, worker)
    assert [r["status"] for r in rows] == ["cancelled"] * 3
    assert rows[0]["steps"] < BASE["steps"] and "steps" not in rows[1]  # stopped by the flag; the others never began
    events = [(e["kind"], e["index"]) for _, msg in worker.sent for e in msg]
    assert events == [("started", 0), ("result", 0)]
    assert worker.sent[-1][1][0]["row"]["status"] == "cancelled"
