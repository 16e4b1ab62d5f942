"""Playground2D: its sources hold exactly what trainlab.playground computes, after every kind of change."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from bokeh.events import Tap

from trainlab import playground as pg
from trainlab.widgets.playground import Playground2D


def assert_shows(w: Playground2D, function, specs, starts, steps):
    """The widget's path sources equal the lab API's paths for these settings."""
    ref = pg.trajectories(function, specs, start=starts, steps=steps)
    assert len(w.rows) == len(ref)
    for i, path in enumerate(ref):
        np.testing.assert_array_equal(w.sources[i].data["x"], path.xy[:, 0])
        np.testing.assert_array_equal(w.sources[i].data["y"], path.xy[:, 1])
        assert list(w.starts[i].data["x"]) == [path.start[0]]
    table = w._table.object
    assert list(table["optimizer"]) == [s[0] for s in specs]
    np.testing.assert_allclose(table["final loss"], [p.final_loss for p in ref])
    return ref


@pytest.fixture
def w():
    return Playground2D(optimizers=("sgd", "momentum", "adam"))


def test_builds_with_the_function_defaults(w):
    f = pg.as_function("rosenbrock")
    specs = [(r, pg.rules[r].defaults()) for r in ("sgd", "momentum", "adam")]
    assert_shows(w, "rosenbrock", specs, f.start, w.steps)
    xs, ys, z = pg.contour_grid(f)
    np.testing.assert_array_equal(w.grid.data["z"][0], z)
    assert (w.figure.x_range.start, w.figure.x_range.end, w.figure.y_range.start, w.figure.y_range.end) == f.box
    assert list(w.minima.data["x"]) == [1.0] and len(w.contours.data["xs"]) > 0
    assert [r.visible for r in w._renderers[3]] == [False] * 3  # unused rows draw nothing


def test_a_slider_move_recomputes_the_paths(w):
    before = np.array(w.sources[1].data["x"])
    w.rows[1].controls["momentum"].widget.value = 0.5  # as a user drags the slider
    w.rows[0].controls["lr"].widget.value = 0.002  # a log slider: a value of its grid
    specs = [("sgd", {"lr": 0.002}), ("momentum", {"momentum": 0.5}), ("adam", {})]
    assert_shows(w, "rosenbrock", specs, None, w.steps)
    assert not np.array_equal(before, w.sources[1].data["x"])
    w.steps = 50
    assert len(w.sources[0].data["x"]) == 51
    assert_shows(w, "rosenbrock", specs, None, 50)


def test_function_and_its_options(w):
    w.function = "quadratic"
    w.fn_controls["condition"].widget.value = 100.0
    f = pg.as_function(("quadratic", {"condition": 100.0}))
    assert_shows(w, f, [("sgd", {}), ("momentum", {}), ("adam", {})], f.start, w.steps)
    np.testing.assert_array_equal(w.grid.data["z"][0], pg.contour_grid(f)[2])
    assert w.figure.x_range.start == f.box[0] and w.figure.title.text.startswith("quadratic")


def test_a_refused_value_is_shown_and_changes_nothing(w):
    before = np.array(w.sources[2].data["x"])
    w.rows[2]._set("beta1", 1.0)  # what a control hands over: out of the declared [0, 1)
    assert "beta1=1.0 rejected for adam: allowed range [0, 1)" in w.error and w._error.visible
    assert w.rows[2].options.beta1 == 0.9
    np.testing.assert_array_equal(w.sources[2].data["x"], before)
    w.rows[2].controls["beta1"].widget.value = 0.8
    assert w.error == "" and not w._error.visible


def test_a_tap_moves_the_selected_start(w):
    w._target.value = "2"  # the radio buttons choose which optimizer a tap moves
    assert w.selected == 1
    w._on_tap(Tap(w.figure, x=0.5, y=-0.25))
    assert w.rows[1].start == (0.5, -0.25) and w.rows[0].start == pg.as_function("rosenbrock").start
    starts = [r.start for r in w.rows]
    assert_shows(w, "rosenbrock", [("sgd", {}), ("momentum", {}), ("adam", {})], starts, w.steps)
    w._on_tap(SimpleNamespace(x=None, y=None))  # a tap off the plot area moves nothing
    assert w.rows[1].start == (0.5, -0.25)


def test_rows_change_rule_add_and_remove(w):
    w.rows[0].chooser.value = "lion"  # the shared lr carries over
    assert w.rows[0].rule == "lion" and w.rows[0].options.lr == pg.rules["sgd"].defaults()["lr"]
    for rule in ("rmsprop", "adagrad", "adamw", "nesterov", "adan"):
        w.add_optimizer(rule)
    assert len(w.rows) == 8 and w._add.disabled and w._target.options == [str(i) for i in range(1, 9)]
    with pytest.raises(ValueError, match="at most 8"):
        w.add_optimizer("sgd")
    w.rows[5].color.value = "#000000"
    assert w._renderers[5][0].glyph.line_color == "#000000" == w._renderers[5][2].glyph.fill_color
    w.rows[3].remove.clicks += 1  # the ✕ button of row 4 (rmsprop)
    rules = ["lion", "momentum", "adam", "adagrad", "adamw", "nesterov", "adan"]
    assert [r.rule for r in w.rows] == rules and not w._add.disabled
    assert w._renderers[6][0].visible and not w._renderers[7][0].visible
    assert_shows(w, "rosenbrock", [(r, row.spec[1]) for r, row in zip(rules, w.rows)], None, w.steps)


def test_fair_race_sets_and_shows_the_chosen_lrs(w):
    w.steps = 200
    race = w.fair_race()
    ref = pg.fair_race("rosenbrock", ["sgd", "momentum", "adam"], steps=200)
    assert race.best_lr == ref.best_lr
    assert [r.options.lr for r in w.rows] == list(ref.best_lr.values())
    assert list(w._table.object["fair-race lr"]) == [f"{lr:.3g}" for lr in ref.best_lr.values()]
    assert_shows(w, "rosenbrock", [(t.optimizer, t.hyperparameters) for t in ref.best], None, 200)
    np.testing.assert_array_equal(w.sources[2].data["x"], ref.best[2].xy[:, 0])


def test_a_diverging_path_is_cut_and_marked(w):
    w.rows[0].controls["lr"].widget.value = 1.0  # sgd on Rosenbrock at lr 1 blows up in a few steps
    x = np.asarray(w.sources[0].data["x"])
    assert len(x) < 10 and np.isfinite(x).all()
    assert w._table.object["status"][0].startswith("diverged at step")
