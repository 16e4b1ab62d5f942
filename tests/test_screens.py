"""What every lab's page shows, checked on the panels themselves (no browser): one layout (controls, then an
Export card; plots that fill a grid cell), legends off the curves, empty plots that say what fills them,
learning rates on log axes, and the run's history exported as CSV and Parquet."""
from __future__ import annotations

import io
import re

import numpy as np
import pandas as pd
import panel as pn
import pytest
from bokeh.models import ColumnDataSource, Label, LogScale, Plot

from trainlab import Run
from trainlab.widgets import export, plots
from trainlab.widgets.dashboard import TrainingDashboard
from trainlab.widgets.labs import LABS

RUN_LABS = [lab for lab in LABS if lab.needs_run]


@pytest.fixture(scope="module")
def dashboard():
    """One dashboard with every lab's tab opened (an SGD run: Adam's second moments have nothing to show)."""
    d = TrainingDashboard(Run(model=("mlp", {"width": 16, "depth": 2}), data="digits", device="cpu", seed=0))
    for lab in RUN_LABS:
        d.open_lab(lab.title)
    yield d
    d.close()


def _figures(obj) -> list[Plot]:
    return export.figures_in([obj.__panel__() if hasattr(obj, "__panel__") else obj])


def _notes(fig) -> list[Label]:
    return [m for m in fig.center if isinstance(m, Label)]


@pytest.mark.parametrize("lab", RUN_LABS, ids=[lab.title for lab in RUN_LABS])
def test_every_lab_has_the_same_layout(dashboard, lab):
    panel = dashboard.labs[lab.title]
    page = panel.__panel__()
    sidebar, main = page.objects
    assert sidebar.width == 300, "the controls column"
    card = sidebar.objects[-1]
    assert isinstance(card, pn.Card) and card.title.startswith("Export"), "the controls end with the Export card"
    grid = next(o for o in main.objects if isinstance(o, pn.FlexBox))
    figs = export.figures_in(grid.objects)
    assert figs, "its plots sit in the grid"
    for fig in figs:
        if fig.sizing_mode == "stretch_width":  # a plot of its own width (a square heat map) keeps it
            assert fig.min_width == plots.MIN_WIDTH and fig.styles["flex"].startswith("1 1")
        for box in fig.legend:
            assert box.click_policy == "hide", f"{fig.title.text}: a legend entry hides its curve"
            assert box in fig.right or box in fig.below, f"{fig.title.text}: its legend sits off the curves"


def test_the_training_tab_has_an_export_card_and_a_grid(dashboard):
    training = dashboard.tabs[0]
    assert isinstance(training.objects[0], pn.FlexBox)
    assert training.objects[1].objects[0].title.startswith("Export")
    for fig in export.figures_in(training.objects[0].objects):
        assert all(box in fig.right or box in fig.below for box in fig.legend)


def test_learning_rates_are_drawn_on_log_axes(dashboard):
    """Every axis of an lr, in the Training tab and every lab, is logarithmic and auto-ranges to at least
    LOG_SPAN decades (a constant lr is not drawn across float noise)."""
    seen = 0
    for owner in [dashboard.tabs[0], *dashboard.labs.values()]:
        for fig in _figures(owner):
            for axis, scale, rng in ((fig.xaxis[0], fig.x_scale, fig.x_range), (fig.yaxis[0], fig.y_scale, fig.y_range)):
                if re.search(r"\b(lr|learning rate)\b", axis.axis_label or ""):
                    seen += 1
                    assert isinstance(scale, LogScale), f"{fig.title.text}: {axis.axis_label} on a linear axis"
                    callbacks = [cb for cbs in rng.js_property_callbacks.values() for cb in cbs]
                    assert any("have_updated_interactively" in cb.code for cb in callbacks), fig.title.text
    assert seen >= 4  # Training's lr, the schedule, the range test, μ-Transfer's two, the effective lr


def _placeholder_texts(panel) -> dict[str, str]:
    """Each figure's empty-state note that is showing, by title."""
    return {fig.title.text: " ".join(n.text.split()) for fig in _figures(panel) for n in _notes(fig) if n.visible}


def test_empty_plots_say_what_fills_them(dashboard):
    """Before anything ran: each empty plot names what fills it, and shows no legend of invisible lines."""
    opt = _placeholder_texts(dashboard.labs["Optimizer"])
    assert opt["LR range test"] == "press LR range test"
    assert opt["Second moment v̂: median per layer"].startswith("Adam-like optimizers only")
    assert opt["Second moment v̂: distribution"].startswith("Adam-like optimizers only")
    curv = _placeholder_texts(dashboard.labs["Curvature"])
    assert curv["Top Hessian eigenvalues"] == "press Top-k eigenvalues"
    assert curv["Hessian eigenvalue density (SLQ)"] == "press Density"
    assert curv["Sharpness vs stability threshold"].startswith("turn on Sharpness")
    prune = _placeholder_texts(dashboard.labs["Pruning"])
    assert len(prune) == 6 and all("prun" in t or "mask update" in t for t in prune.values())
    assert _placeholder_texts(dashboard.labs["Normalization"])["Training loss by normalization"] == "press Compare norms"
    assert "press Measure intrinsic dimension" in _placeholder_texts(dashboard.labs["Landscape"]).values()
    assert "α every 50 steps" in _placeholder_texts(dashboard.labs["Spectrum"]).values()
    for panel in dashboard.labs.values():
        for fig, note, source, needs in panel._hints:
            if note.visible:
                assert not any(box.visible for box in fig.legend), f"{fig.title.text}: a legend over an empty plot"
            assert len(note.text.split("\n")) <= 3 and max(map(len, note.text.split("\n"))) <= 40  # fits a cell


def test_an_empty_state_goes_when_its_data_comes_and_needs_its_own_column(dashboard):
    """Validation points alone (no sparsity: pruning is off) leave the pruning quality plot empty; an
    Adam run's second moments fill their plot, and its note goes and its legend comes."""
    dashboard.run.step(30)  # a validation every 25 steps: the quality source gets val_acc, no sparsity
    dashboard.feed.tick()
    quality = next(f for f in _figures(dashboard.labs["Pruning"]) if "against sparsity" in f.title.text)
    assert _notes(quality)[0].visible
    run = Run(model=("mlp", {"width": 16, "depth": 2}), data="digits", optimizer="adam", device="cpu", seed=0)
    from trainlab.widgets.optimizer_panel import OptimizerPanel

    panel = OptimizerPanel(run)
    try:
        median = next(f for f in _figures(panel) if f.title.text.startswith("Second moment v̂: median"))
        assert _notes(median)[0].visible and not median.legend[0].visible
        run.step(52)  # the probe measures every 50 steps
        panel.feed.tick()
        assert not _notes(median)[0].visible and median.legend[0].visible
    finally:
        panel.close()
        run.stop()


def test_the_export_card_writes_the_runs_history_and_switches_the_plots_to_svg(dashboard):
    run = dashboard.run
    run.step(5)
    run.set(lr=0.02)  # a change: the history's event column mixes text and gaps
    run.step(3)
    panel = dashboard.labs["Optimizer"]
    card = panel.__panel__().objects[0].objects[-1]
    assert card.collapsed and not card.objects, "closed, the card holds nothing yet (its models cost the page)"
    card.collapsed = False  # opened, as in the page
    csv_button, parquet_button = card.objects[0].objects
    expected = run.history.frame()
    csv = pd.read_csv(io.BytesIO(csv_button.callback().getvalue()))
    assert len(csv) == len(expected) and list(csv.columns) == list(expected.columns)
    np.testing.assert_allclose(csv["train_loss"], expected["train_loss"])
    table = pd.read_parquet(parquet_button.callback())
    assert len(table) == len(expected) and table["lr"].iloc[-1] == pytest.approx(0.02)
    assert table["step"].dtype == np.int64
    assert parquet_button.filename.endswith(".parquet") and csv_button.filename.endswith(".csv")

    svg = next(o for o in card.objects if isinstance(o, pn.widgets.Checkbox))
    figs = panel.figures_shown()
    assert len(figs) >= 5 and all(f.output_backend == "canvas" for f in figs)
    svg.value = True
    assert all(f.output_backend == "svg" for f in figs)
    svg.value = False
    assert all(f.output_backend == "canvas" for f in figs)


def test_legends_go_outside_and_hide_on_click():
    fig = plots.figure("t", "step", "y")
    fig.line([0, 1], [1, 2], legend_label="a")
    plots.tidy(fig)
    box = fig.legend[0]
    assert box in fig.right and box not in fig.center and box.click_policy == "hide"
    plots.legend(fig)  # again: still one legend, once
    assert fig.right.count(box) == 1
    wide = plots.figure("t", "step", "y")
    wide.line([0, 1], [1, 2], legend_label="threshold (2/lr for GD)")
    height = wide.height
    plots.tidy(wide)
    assert wide.legend[0] in wide.below and wide.height > height  # long labels: below, the plot keeps its width


def test_the_long_analyses_a_notebook_calls_count_progress_and_cancel():
    """The fluctuation study (seconds) and the coordinate check count their work on a Progress (a tqdm bar by
    default) and stop when it is cancelled, before the next unit of work."""
    from torch import nn

    from trainlab.analysis.fluctuations import depth_study
    from trainlab.analysis.signal import coord_check
    from trainlab.data import as_data
    from trainlab.jobs import Cancelled, Progress

    for fn in (depth_study, coord_check):
        import inspect

        assert inspect.signature(fn).parameters["progress"].default is True, f"{fn.__name__}: a bar by default"
    p = Progress()
    frame = coord_check(lambda w: nn.Sequential(nn.Linear(64, w), nn.ReLU(), nn.Linear(w, 10)), [8, 16], steps=2,
                        progress=p)
    assert p.done == p.total == 2 and len(frame)
    cancelled = Progress()
    cancelled.cancel()
    with pytest.raises(Cancelled):
        coord_check(lambda w: nn.Sequential(nn.Linear(64, w), nn.ReLU(), nn.Linear(w, 10)), [8, 16], progress=cancelled)
    assert cancelled.done == 0
    with pytest.raises(Cancelled):
        depth_study("mlp", as_data("digits"), [1, 2], seeds=2, m=4, width=8, progress=cancelled)


def test_a_collapsed_card_gets_its_contents_when_first_opened_and_keeps_them():
    from trainlab.widgets import lazy

    inside = pn.widgets.Button(label="x")
    card = lazy.card(inside, title="More")
    assert card.collapsed and card.objects == []
    card.collapsed = False
    assert card.objects == [inside]
    card.collapsed = True
    assert card.objects == [inside], "closing again keeps what the page already has"
    assert lazy.card(inside, title="Open", collapsed=False).objects == [inside]


def test_curves_leave_their_faded_copies_to_the_page_unless_something_selects(dashboard):
    """Bokeh builds a nonselection and a muted glyph for every curve; the page makes them itself ("auto")
    except the nonselection glyph of a figure whose points can be selected (its own look, e.g. the sweep's
    brushed points)."""
    from bokeh.models import BoxSelectTool, GlyphRenderer

    figs = [f for owner in [dashboard.tabs[0], *dashboard.labs.values()] for f in _figures(owner)]
    renderers = [r for f in figs for r in f.renderers if isinstance(r, GlyphRenderer)]
    assert len(renderers) > 20
    assert all(r.muted_glyph == "auto" and r.nonselection_glyph == "auto" for r in renderers)
    fig = plots.figure("brushed", "x", "y")
    points = fig.scatter("x", "y", source=ColumnDataSource({"x": [1], "y": [2]}), nonselection_alpha=0.3)
    fig.add_tools(BoxSelectTool(renderers=[points]))
    plots.tidy(fig)
    assert points.muted_glyph == "auto" and points.nonselection_glyph.fill_alpha == 0.3
