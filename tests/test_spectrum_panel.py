"""SpectrumPanel: built over a run, fed by its probe and by 'Analyse now', drawing what the analyses computed."""
from __future__ import annotations

import html

import numpy.testing as npt
import pytest
from conftest import wait_until
import torch
import trainlab
from torch import nn
from trainlab.analysis import spectrum
from trainlab.probes import SpectrumProbe
from trainlab.widgets.spectrum import SpectrumPanel


@pytest.fixture
def run():
    r = trainlab.Run(model=("mlp", {"width": 32}), data="digits", seed=0, probes=[])
    yield r
    r.stop()


def _wait(panel, timeout=120.0):
    slot = panel.slots["esd"]
    wait_until(lambda: (panel.feed.tick(), not slot.running)[1], timeout, "the analysis to finish")
    panel.feed.tick()  # the Feed picks up the published snapshot


def test_live_probe_fills_the_alpha_curves_and_the_esd(run):
    panel = SpectrumPanel(run, every=5)
    assert any(isinstance(p, SpectrumProbe) and p.every == 5 for p in run.probes)
    run.step(10)
    panel.feed.tick()
    ref = spectrum.esd(run.model, progress=False).set_index("name")
    assert list(panel.alpha.data["step"]) == [5.0, 10.0]
    for layer in ("fc1", "fc2", "out"):
        assert panel.alpha.data[layer][-1] == pytest.approx(ref.loc[layer, "alpha"])
    table = panel.table.object
    assert table["layer"].tolist() == ["fc1", "fc2", "out"]
    npt.assert_allclose(table["alpha"], ref["alpha"].to_numpy(), atol=1e-4)
    npt.assert_array_equal(table["num_spikes"], ref["num_spikes"].to_numpy())
    # the chosen layer's histograms are the core's views of that layer
    view = spectrum.views(ref.reset_index())["fc1"]["plain"]
    npt.assert_allclose(panel.hist.data["top"], view["lin_density"])
    npt.assert_allclose(panel.loglog.data["y"], view["log_y"])
    npt.assert_allclose(panel.mp.data["y"], view["mp_pdf"])
    assert panel.xmin.data["x"] == [pytest.approx(ref.loc["fc1", "xmin"])]
    panel.layer_select.value = "out"
    out = spectrum.views(ref.reset_index())["out"]["plain"]
    npt.assert_allclose(panel.hist.data["top"], out["lin_density"])
    assert "**out**" in panel.status.object
    panel.close()
    assert not any(isinstance(p, SpectrumProbe) for p in run.probes)


def test_analyse_now_with_farms_publishes_a_snapshot(run):
    panel = SpectrumPanel(run, every=25)
    run.step(3)
    panel.controls["farms"].widget.value = True
    assert panel.farms
    panel.analyse_button.clicks += 1
    assert panel.slots["esd"].running and panel.cancel_button.disabled is False
    _wait(panel)
    step, snap = run.history.snapshot("esd_analysis")
    assert step == 3 and set(snap["layers"]) == {"fc1", "fc2", "out"}
    ref = spectrum.esd(run.model, farms=True, progress=False).set_index("name")
    npt.assert_allclose(panel.table.object["farms_alpha_hill"], ref["farms_alpha_hill"].to_numpy(), atol=1e-4)
    farms_view = snap["layers"]["fc1"]["farms"]
    npt.assert_allclose(panel.hist.data["top"], farms_view["lin_density"])  # the FARMS pool is drawn
    assert "FARMS ESD, from the analysis" in panel.status.object
    assert not panel.bar.visible and not panel.analyse_button.disabled
    # a second analysis at the same step redraws too (plain this time)
    panel.controls["farms"].widget.value = False
    panel.analyse()
    _wait(panel)
    assert run.history.snapshot("esd_analysis")[0] == 3
    assert "plain ESD, from the analysis" in panel.status.object
    # live snapshots arriving later do not replace the analysis on screen until "show" says so
    run.step(50)
    panel.feed.tick()
    assert run.history.snapshot("esd")[0] == 50 and "from the analysis" in panel.status.object
    panel.controls["show"].widget.value = "live probe"
    assert "plain ESD, from the live probe" in panel.status.object
    panel.close()


def test_cancel_stops_a_long_analysis(run):
    torch.manual_seed(0)
    big = nn.Sequential(*[nn.Linear(160, 160) for _ in range(150)])
    r = trainlab.Run(model=nn.Sequential(nn.Flatten(), nn.Linear(64, 160), big, nn.Linear(160, 10)), data="digits",
                     probes=[])
    panel = SpectrumPanel(r, every=1000)
    job = panel.analyse()
    panel.cancel_button.clicks += 1
    _wait(panel)
    assert job.cancelled and job.result == {} and "cancelled" in panel.slots["esd"].status.object
    assert r.history.snapshot("esd_analysis") is None  # no half-analysed model is published
    panel.close()


def test_every_is_validated_and_moves_the_probe(run):
    panel = SpectrumPanel(run, every=20)
    panel.controls["every"].widget.value = 0  # below the bound: refused, shown, the old value kept
    assert panel.every == 20 and panel.alert.visible and "every" in panel.alert.object
    assert panel.controls["every"].widget.value == 20
    panel.controls["every"].widget.value = 10
    probes = [p for p in run.probes if isinstance(p, SpectrumProbe)]
    assert len(probes) == 1 and probes[0].every == 10
    panel.every = 30  # from Python: the widget and the probe follow
    assert panel.controls["every"].widget.value == 30 and probes[0].every == 30
    panel.close()


def test_panel_renders_the_measured_spectra(run):
    import panel as pn
    from bokeh.models import ColumnDataSource

    panel = SpectrumPanel(run, every=5)
    run.step(5)
    panel.feed.tick()
    root = pn.panel(panel).get_root()
    sources = [m for m in root.references() if isinstance(m, ColumnDataSource)]
    ref = spectrum.esd(run.model, progress=False).set_index("name")
    alpha = next(s for s in sources if "fc1" in s.data and "step" in s.data)  # the α-over-training curves
    assert alpha.data["fc1"][-1] == pytest.approx(ref.loc["fc1", "alpha"])
    hist = next(s for s in sources if "top" in s.data and "left" in s.data)  # the drawn ESD histogram
    npt.assert_allclose(hist.data["top"], spectrum.views(ref.reset_index())["fc1"]["plain"]["lin_density"])
    table = html.unescape(next(str(m.text) for m in root.references() if "alpha_hill" in str(getattr(m, "text", ""))))
    assert all(f"<td>{layer}</td>" in table for layer in ("fc1", "fc2", "out"))  # the per-layer table
    panel.close()
