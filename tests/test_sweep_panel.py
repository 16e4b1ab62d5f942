"""SweepPanel over real results: axes (log for lr), brushing keeps what is inside every brush, the table ranks
the kept configurations, a picked row draws that run's curve, and new results are drawn as they arrive."""
from __future__ import annotations

import numpy as np
import pytest

from trainlab.experiment import results, train
from trainlab.widgets.sweep import SweepPanel

BASE = {"model": ("mlp", {"width": 8}), "data": "moons", "optimizer": "sgd", "steps": 60, "seed": 0}


@pytest.fixture(scope="module")
def frame():
    configs = [{**BASE, "lr": lr, "model": ("mlp", {"width": w})} for lr in (0.001, 0.01, 0.1) for w in (8, 32)]
    rows = [train(c) for c in configs]
    out = results(rows, configs)
    out["history"] = [r["history"] for r in rows]
    return out


class Arriving:
    """Results that come in one by one, as a running sweep's do."""

    def __init__(self, frame):
        self.all, self.n = frame, 0

    def results(self):
        return self.all.iloc[:self.n].copy()


def test_axes_table_and_curves(frame):
    panel = SweepPanel(frame)
    assert panel.settings == ["model.width", "lr"]
    labels = panel.parallel.xaxis.major_label_overrides
    assert labels == {0: "model.width (log)", 1: "lr (log)", 2: "val_loss"}
    ys = np.array(panel.lines.data["ys"])
    np.testing.assert_allclose(sorted(set(ys[:, 1])), [0, 0.5, 1])  # 0.001, 0.01, 0.1 evenly on a log axis
    table = panel.table.value
    assert len(table) == 6 and table["val_loss"].is_monotonic_increasing
    assert table.iloc[0]["val_loss"] == pytest.approx(frame["val_loss"].min(), abs=1e-5)
    best = int(table.iloc[0]["row"])
    assert panel.curve_note.visible and "pick a run" in panel.curve_note.text and not panel.curve_fig.legend.visible
    panel.table.selection = [0]
    np.testing.assert_allclose(panel.curve.data["train_loss"], frame.loc[best, "history"]["train_loss"])
    assert not panel.curve_note.visible and panel.curve_fig.legend.visible  # drawn: the legend, not the note
    assert len(panel.grid.objects) == 2 and "best val_loss" in panel.status.object


def test_brushing_keeps_the_configurations_inside_every_brush(frame):
    panel = SweepPanel(frame)
    x, y = np.array(panel.points.data["x"]), np.array(panel.points.data["y"])
    top_lr = [i for i in range(len(x)) if x[i] == 1 and y[i] == 1.0]  # lr = 0.1
    panel.points.selected.indices = top_lr
    assert panel.brushed == set(frame.index[frame["lr"] == 0.1])
    assert set(panel.table.value["row"]) == panel.brushed
    alpha = dict(zip(panel.lines.data["row"], panel.lines.data["alpha"]))
    assert all((alpha[r] > 0.5) == (r in panel.brushed) for r in alpha)
    wide = [i for i in range(len(x)) if x[i] == 0 and y[i] == 1.0]  # and width 32
    panel.points.selected.indices = top_lr + wide
    assert panel.brushed == set(frame.index[(frame["lr"] == 0.1) & (frame["model.width"] == 32)])
    panel.points.selected.indices = []
    assert panel.brushed is None and len(panel.table.value) == 6


def test_results_are_drawn_as_they_arrive(frame):
    sweep = Arriving(frame)
    panel = SweepPanel(sweep)
    assert panel.lines.data["xs"] == [] and "0 results" in panel.status.object
    for n in (2, 5, 6):
        sweep.n = n
        panel.refresh()
        assert len(panel.lines.data["row"]) == n and f"{n} results" in panel.status.object
    failed = frame.copy()
    failed.loc[0, "status"] = "failed"
    sweep.all = failed
    panel.refresh()
    assert len(panel.lines.data["row"]) == 5 and "1 failed" in panel.status.object


@pytest.mark.slow
def test_a_preset_runs_on_the_cluster_and_draws_one_curve_per_criterion():
    from conftest import wait_until

    panel = SweepPanel.preset("sparsity_criterion", steps=60, sparsities=[0.5, 0.95], methods=["random", "magnitude"],
                              workers=2)
    try:
        wait_until(lambda: (panel.refresh(), len(panel.frame))[1] == 4 and panel.sweep.done, 180,
                   "the preset's four runs")
        assert panel.settings == ["pruning", "pruning.sparsity"] and panel.metric == "val_acc"
        table = panel.table.value
        assert table["val_acc"].is_monotonic_decreasing  # accuracy: the best first
        sparsity_plot = panel.grid.objects[1].object
        legends = [item.label["value"] for item in sparsity_plot.legend[0].items]
        assert legends == ["random", "magnitude"]
    finally:
        panel.sweep.close()


def test_new_results_update_the_small_plots_in_place_until_their_axes_change(frame):
    sweep = Arriving(frame)
    panel = SweepPanel(sweep)
    sweep.n = 4
    panel.refresh()
    panel._draw_grid(panel._ok())
    figs = [p.object for p in panel.grid.objects]
    assert [f.title.text for f in figs] == ["val_loss vs model.width", "val_loss vs lr"]
    sweep.n = 6  # more results on the same axes: the same figures, their points updated
    panel.refresh()
    panel._draw_grid(panel._ok())
    assert [p.object for p in panel.grid.objects] == figs
    points = figs[1].renderers[0].data_source.data
    np.testing.assert_allclose(sorted(points["y"]), sorted(frame["val_loss"]))
    panel.metric = "val_acc"  # another metric: other axes, new figures
    panel.refresh()
    panel._draw_grid(panel._ok())
    assert all(p.object not in figs for p in panel.grid.objects)
    assert panel.grid.objects[0].object.title.text == "val_acc vs model.width"
