"""The Export card's job results: each lab's card offers the newest result of each of its jobs as CSV and Parquet,
disabled and saying what makes one until there is one; the files hold `trainlab.live.table`'s tidy frame of the
job's result (compared here with the result itself), the Playground's card its paths and its fair race."""
from __future__ import annotations

import io

import numpy as np
import pandas as pd
import panel as pn
import pytest
from conftest import wait_until

from trainlab import Run, live
from trainlab.widgets import export
from trainlab.widgets.labs import LABS


def _card(panel) -> pn.Card:
    card = panel.__panel__().objects[0].objects[-1]
    assert isinstance(card, pn.Card) and card.title.startswith("Export")
    card.collapsed = False  # opened, as in the page: its contents join it then
    return card


def _result(card: pn.Card, label: str) -> tuple[str, list[pn.widgets.FileDownload]]:
    """The note and the CSV/Parquet buttons of the result `label` in an Export card (opened, as in the page)."""
    card.collapsed = False
    for row in card.select(pn.Column):
        objs = row.objects
        if len(objs) == 2 and isinstance(objs[0], pn.pane.HTML) and str(objs[0].object).startswith(f"<b>{label}</b>"):
            return objs[0].object, list(objs[1].objects)
    raise AssertionError(f"no result {label!r} in the card")


def _download(buttons) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """Both files of a result, as the browser gets them: (CSV, Parquet, the CSV's file name)."""
    csv_button, parquet_button = buttons
    assert not csv_button.disabled and not parquet_button.disabled
    csv = pd.read_csv(io.BytesIO(csv_button.callback().getvalue()))
    table = pd.read_parquet(parquet_button.callback())
    assert parquet_button.filename.endswith(".parquet")
    return csv, table, csv_button.filename


def _finish(panel, slot: str, timeout: float = 120) -> None:
    wait_until(lambda: not panel.slots[slot].running, timeout, f"the {slot} job", every=0.05)
    job = panel.slots[slot].job
    assert job.error is None, job.error
    panel.feed.tick()


def _run(**kw) -> Run:
    kw.setdefault("model", ("mlp", {"width": 16, "depth": 2}))
    kw.setdefault("data", "digits")
    return Run(device="cpu", seed=0, **kw)


def test_every_labs_results_name_a_table_and_its_card_lists_them():
    for lab in LABS:
        if lab.needs_run:
            for label, (table, missing) in lab.panel_class().job_results.items():
                assert table in live.TABLES, f"{lab.title}: {label} reads no table"
                assert missing
    assert {name for lab in LABS if lab.needs_run for name, _ in lab.panel_class().job_results.values()} >= {
        live.RANGE_TEST, live.LANDSCAPE, live.LINE, live.INTRINSIC, *live.HESSIAN.values(), live.SPECTRUM,
        live.COMPACT, live.REPAIR, live.NORM_COMPARISON, live.COORD_CHECK, live.MU_TRANSFER, live.DEPTH_TRANSFER,
        live.SHARPNESS_CURVES, live.FLUCTUATIONS}


def test_before_a_job_ran_its_buttons_are_disabled_and_say_what_makes_it():
    from trainlab.widgets.curvature import CurvaturePanel

    run = _run()
    panel = CurvaturePanel(run)
    try:
        card = _card(panel)
        assert card.title == "Export: this run's history, the job results, the plots"
        for label in CurvaturePanel.job_results:
            note, buttons = _result(card, label)
            assert all(b.disabled for b in buttons)
            assert note.endswith("first") and "press" in note
        assert live.frame(run, live.HESSIAN["top"]) is None
        run.step(2)
        panel.compute("trace")
        _finish(panel, "hessian")
        note, buttons = _result(card, "Hessian trace")
        assert note == "<b>Hessian trace</b>: computed at step 2" and not any(b.disabled for b in buttons)
        assert all(b.disabled for b in _result(card, "Hessian density")[1])  # the others still wait
    finally:
        panel.close()


def test_the_curvature_labs_files_are_its_hessian_results():
    from trainlab.widgets.curvature import CurvaturePanel

    run = _run()
    run.step(3)
    panel = CurvaturePanel(run, k=3, vectors=1, iters=8)
    try:
        card = _card(panel)
        panel.compute("top")
        _finish(panel, "hessian")
        step, snap = run.history.snapshot(live.HESSIAN["top"])
        csv, table, name = _download(_result(card, "Hessian top-k eigenvalues")[1])
        assert name == "hessian_top-step3.csv"
        for f in (csv, table):
            assert list(f["rank"]) == [1, 2, 3] and (f["computed_at"] == 3).all() and (f["k"] == 3).all()
            np.testing.assert_allclose(f["eigenvalue"], snap["eigenvalue"], rtol=1e-12)
        panel.compute("density")
        _finish(panel, "hessian")
        _, snap = run.history.snapshot(live.HESSIAN["density"])
        csv, table, _ = _download(_result(card, "Hessian density")[1])
        np.testing.assert_allclose(table["eigenvalue"], snap["grid"])
        np.testing.assert_allclose(csv["density"], snap["density"], rtol=1e-9)
        assert (table["vectors"] == 1).all() and (table["iters"] == 8).all() and "k" not in table
    finally:
        panel.close()


def test_the_optimizer_labs_file_is_its_range_test():
    from trainlab.widgets.optimizer_panel import OptimizerPanel

    run = _run()
    panel = OptimizerPanel(run, range_steps=20)
    try:
        card = _card(panel)
        panel.start_range_test()
        _finish(panel, "range")
        result = panel.result
        csv, table, name = _download(_result(card, "LR range test")[1])
        assert name == "lr_range_test-step0.csv"
        for f in (csv, table):
            assert list(f["step"]) == list(range(len(result["lr"])))
            np.testing.assert_allclose(f["lr"], result["lr"], rtol=1e-12)
            np.testing.assert_allclose(f["loss"], result["loss"], rtol=1e-9)
            np.testing.assert_allclose(f["trend"], result["trend"], rtol=1e-9)
            assert (f["steps"] == 20).all() and (f["optimizer"] == run.optimizer).all()
            assert f["start"].iloc[0] == pytest.approx(panel.range_start) and f["end"].iloc[0] == pytest.approx(panel.range_end)
    finally:
        panel.close()


def test_the_landscape_labs_files_are_its_grid_its_line_and_its_intrinsic_dimension():
    from trainlab.widgets.landscape import LandscapePanel

    run = _run()
    run.step(4)
    panel = LandscapePanel(run, coarse=3, resolution=5, follow=False, id_steps=5, id_max_dim=4, directions="filter")
    try:
        card = _card(panel)
        panel.compute()
        _finish(panel, "plane")
        _, snap = run.history.snapshot(live.LANDSCAPE)
        csv, table, name = _download(_result(card, "Loss landscape (plane)")[1])
        assert name == "landscape-step4.csv" and len(table) == 25
        for f in (csv, table):
            for i, j in ((0, 0), (1, 3), (4, 2)):  # loss[i, j] sits at (x[i], y[j])
                row = f[np.isclose(f["x"], snap["x"][i]) & np.isclose(f["y"], snap["y"][j])]
                assert row["loss"].item() == pytest.approx(snap["loss"][i, j], rel=1e-9)
            assert (f["resolution"] == 5).all() and (f["directions"] == "filter").all() and (f["mode"] == "eval").all()
        _, line = run.history.snapshot(live.LINE)
        csv, _, name = _download(_result(card, "Interpolation (line)")[1])
        assert name == "landscape-line-step4.csv"
        np.testing.assert_allclose(csv["alpha"], line["alpha"])
        np.testing.assert_allclose(csv["loss"], line["loss"], rtol=1e-9)
        panel.measure_intrinsic()
        _finish(panel, "intrinsic")
        _, dims = run.history.snapshot(live.INTRINSIC)
        _, table, _ = _download(_result(card, "Intrinsic dimension")[1])
        assert list(table["d"]) == list(dims["dims"]) and (table["max_dim"] == 4).all()
        np.testing.assert_allclose(table["performance"], dims["performance"])
        assert table["target"].iloc[0] == pytest.approx(dims["threshold"] * dims["full"])
    finally:
        panel.close()


def test_the_spectrum_labs_files_are_its_fits_and_eigenvalues():
    from trainlab.analysis import spectrum
    from trainlab.widgets.spectrum import SpectrumPanel

    run = _run()
    run.step(2)
    panel = SpectrumPanel(run)
    try:
        card = _card(panel)
        panel.analyse()
        _finish(panel, "esd")
        direct = spectrum.esd(run.model, progress=False).set_index("name")
        _, fits, name = _download(_result(card, "ESD fits per layer")[1])
        assert name == "esd_analysis-step2.csv" and list(fits["layer"]) == list(direct.index)
        np.testing.assert_allclose(fits["alpha"], direct["alpha"], rtol=1e-9)
        np.testing.assert_allclose(fits["mp_bulk_edge"], direct["mp_bulk_edge"], rtol=1e-9)
        assert list(fits["shape"]) == ["x".join(map(str, s)) for s in direct["shape"]]
        _, eigs, name = _download(_result(card, "ESD eigenvalues")[1])
        assert name == "esd_analysis-eigenvalues-step2.csv"
        for layer, values in direct["eigenvalues"].items():
            np.testing.assert_allclose(eigs.loc[eigs["layer"] == layer, "eigenvalue"], values, rtol=1e-6)
    finally:
        panel.close()


def test_the_pruning_labs_file_is_its_compact_preview():
    from trainlab.widgets.pruning import PruningPanel

    run = _run()
    panel = PruningPanel(run)
    try:
        card = _card(panel)
        note, buttons = _result(card, "Repair (DSnoT)")
        assert all(b.disabled for b in buttons) and "prune, then press Repair" in note
        panel.preview_compact()
        _finish(panel, "compact")
        _, r = run.history.snapshot(live.COMPACT)
        csv, table, _ = _download(_result(card, "Compact preview")[1])
        for f in (csv, table):
            assert len(f) == 1 and f["params"].item() == r["params"] and f["macs_dense"].item() == r["macs_dense"]
            assert f["latency_ratio"].item() == pytest.approx(r["latency_ratio"])
            assert f["unstructured_zeros"].item() == r["unstructured"]["zeros"] and f["ratio"].item() == 0.5
    finally:
        panel.close()


def test_the_normalization_labs_file_is_its_comparison():
    from trainlab.widgets.normalization import NormalizationPanel

    run = _run(model=("mlp", {"width": 16, "depth": 2, "norm": "batchnorm"}))
    panel = NormalizationPanel(run, compare=["none", "layernorm"], steps=10)
    try:
        card = _card(panel)
        panel.compare_norms()
        _finish(panel, "compare")
        _, snap = run.history.snapshot(live.NORM_COMPARISON)
        csv, table, _ = _download(_result(card, "Compare norms")[1])
        for f in (csv, table):
            assert list(dict.fromkeys(f["norm"])) == ["none", "layernorm"] and (f["steps"] == 10).all()
            for norm, c in snap["curves"].items():
                rows = f[f["norm"] == norm]
                assert list(rows["step"]) == list(c["step"].astype(int))
                np.testing.assert_allclose(rows["train_loss"], c["train_loss"], rtol=1e-9)
    finally:
        panel.close()


def test_the_init_labs_files_are_its_signal_at_init_and_depth_transfer():
    from trainlab.widgets.init_panel import InitPanel

    run = _run()
    panel = InitPanel(run)
    try:
        card = _card(panel)
        panel.feed.tick()
        _, snap = run.history.snapshot(live.SIGNAL_INIT)  # computed when the toggle turned on
        _, table, _ = _download(_result(card, "Signal at init")[1])
        assert list(table["layer"]) == list(snap["layer"])
        np.testing.assert_allclose(table["std"], snap["std"], rtol=1e-9)
        assert all(b.disabled for b in _result(card, "μ-Transfer")[1])
        lrs = (0.25, 1.0)
        panel.depth_transfer(depths=(2, 4), lrs=lrs, steps=5, width=8, workers=1)
        _finish(panel, "depth")
        _, snap = run.history.snapshot(live.DEPTH_TRANSFER)
        csv, table, _ = _download(_result(card, "Depth transfer")[1])
        for f in (csv, table):
            assert len(f) == 3 * 2 * 2 and set(f["branch"]) == {"1", "1/sqrt(L)", "1/L"} and (f["width"] == 8).all()
            np.testing.assert_allclose(f["mean_train_loss"], snap["rows"]["mean_train_loss"], rtol=1e-9)
            for g, d, best in zip(snap["best"]["branch"], snap["best"]["depth"], snap["best"]["best_lr"]):
                assert (f.loc[(f["branch"] == g) & (f["depth"] == d), "best_lr"] == best).all()
    finally:
        panel.close()


def test_the_sweep_jobs_tables_hold_their_rows_and_settings():
    """μ-Transfer, super consistency, the coordinate check and the fluctuations (the Init & μP tab's other jobs),
    small, through the same tables the card writes."""
    run = _run(model=("mlp", {"width": 16, "depth": 1}), data="moons", lr=0.5)
    run.step(2)
    live.compute(live.mu_transfer, run, progress=False, widths=(8, 16), lrs=(0.1, 0.5), steps=4, workers=1)
    mu, snap = live.frame(run, live.MU_TRANSFER), run.history.snapshot(live.MU_TRANSFER)[1]
    assert len(mu) == 8 and (mu["computed_at"] == 2).all() and (mu["steps"] == 4).all() and "workers" not in mu
    np.testing.assert_allclose(mu["loss"], snap["rows"]["loss"])
    assert set(mu["best_lr"]) <= {0.1, 0.5}
    live.compute(live.super_consistency, run, progress=False, widths=(8, 16), steps=4, workers=1)
    curves, snap = live.frame(run, live.SHARPNESS_CURVES), run.history.snapshot(live.SHARPNESS_CURVES)[1]
    np.testing.assert_allclose(curves["sharpness"], snap["curves"]["sharpness"])
    for par, spread in snap["spread"].items():
        assert (curves.loc[curves["parametrization"] == par, "spread"] == spread).all()
    live.compute(live.coord_check, run, progress=False, widths=(8, 16), steps=1)
    coords, snap = live.frame(run, live.COORD_CHECK), run.history.snapshot(live.COORD_CHECK)[1]
    for par, d in snap["parametrizations"].items():
        np.testing.assert_allclose(coords.loc[coords["parametrization"] == par, "l1"], d["l1"])
    assert coords["width"].dtype == np.int64 and (coords["steps"] == 1).all()
    live.compute(live.fluctuations, run, progress=False, depths=(1, 2), seeds=2, m=4)
    fl, snap = live.frame(run, live.FLUCTUATIONS), run.history.snapshot(live.FLUCTUATIONS)[1]
    np.testing.assert_allclose(fl["ntk_rel_var"], snap["ntk_rel_var"])
    assert (fl["seeds"] == 2).all() and "settings" not in fl


def test_a_jobs_settings_are_plain_and_a_non_dict_result_is_left_as_it_is():
    def job(run, *, progress, n: int, probe=None, widths=(1, 2), workers=None):
        return {"plain": {"v": np.arange(n)}, "listed": list(range(n))}

    run = _run()
    out = live.compute(job, run, progress=False, n=3, probe=object())
    assert out["plain"]["settings"] == {"n": 3, "widths": (1, 2)}  # no object, no how-it-ran
    assert out["listed"] == [0, 1, 2]
    with pytest.raises(ValueError, match="no table named"):
        live.frame(run, "plain")


def test_the_playgrounds_card_writes_its_paths_and_its_race():
    from trainlab import playground
    from trainlab.widgets.playground import Playground2D

    pg = Playground2D(optimizers=("sgd", "adam"), steps=50)
    card = pg.export_card()
    assert card.title == "Export: the paths, the race, the plots"
    csv, table, name = _download(_result(card, "Paths")[1])
    assert name == "playground-rosenbrock-2paths-50steps.csv" and table["diverged"].dtype == bool
    for f in (csv, table):
        assert list(f.columns[:7]) == ["function", "path", "optimizer", "step", "x", "y", "loss"]
        for i, p in enumerate(pg.paths):
            rows = f[f["path"] == i + 1]
            assert (rows["optimizer"] == p.optimizer).all() and list(rows["step"]) == list(range(len(p.xy)))
            np.testing.assert_allclose(rows[["x", "y"]].to_numpy(), p.xy, rtol=1e-12)
            np.testing.assert_allclose(rows["loss"], p.loss, rtol=1e-12)
            assert rows["lr"].iloc[0] == pytest.approx(p.lr)
    race_note, race = _result(card, "Fair race")
    assert all(b.disabled for b in race) and race_note.endswith("press Fair race first")
    pg.steps = 20  # a recompute: the paths' file follows
    assert _result(card, "Paths")[1][0].filename == "playground-rosenbrock-2paths-20steps.csv"
    result = pg.fair_race()
    _, table, name = _download(_result(card, "Fair race")[1])
    assert name.startswith("fair-race-rosenbrock") and len(table) == 2 * len(result.lrs)
    assert table["chosen"].dtype == bool  # Parquet keeps booleans
    chosen = table[table["chosen"]]
    assert list(chosen["lr"]) == pytest.approx([t.lr for t in result.best])
    np.testing.assert_array_equal(table["final_loss"], result.losses.ravel())
    assert playground.frame([]).empty
    figs = export.figures_in([pg.__panel__()])
    assert figs == [pg.figure]


def test_the_sweeps_tabs_card_writes_the_sweeps_results():
    """The Sweeps tab (where the pruning lab's sparsity study runs): the last sweep's results, a row per run."""
    from trainlab.experiment import results, train
    from trainlab.widgets import SweepLab

    configs = [{"model": ("mlp", {"width": 8}), "data": "moons", "steps": 10, "seed": 0, "lr": lr} for lr in (0.01, 0.1)]
    frame = results([train(c) for c in configs], configs)

    class Done:
        name, done = "lr-test", True

        def results(self):
            return frame

        def progress(self):
            return "2 finished"

    lab = SweepLab()
    card = lab.export_card
    assert card.title == "Export: the sweep's results, the plots"
    note, buttons = _result(card, "Sweep results")
    assert all(b.disabled for b in buttons) and note.endswith("press Start sweep first")
    lab.show(Done())
    lab._say()
    csv, table, name = _download(_result(card, "Sweep results")[1])
    assert name == "sweep-lr-test.csv" and list(table["lr"]) == [0.01, 0.1]
    np.testing.assert_allclose(csv["val_loss"], frame["val_loss"])
    lab.close()
