"""Weight spectra: ESD against direct SVDs, the Marchenko–Pastur bulk and spikes, Hill, FARMS, the probe."""
from __future__ import annotations

import math

import numpy as np
import numpy.testing as npt
import pytest
import torch
import trainlab
from scipy import integrate
from torch import nn
from trainlab.analysis import spectrum as sp
from trainlab.jobs import Job, Progress
from trainlab.kernels import powerlaw as kp
from trainlab.probes import SpectrumProbe


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(40, 96), nn.LayerNorm(96), nn.ReLU(), nn.Linear(96, 30),
                         nn.Unflatten(1, (1, 5, 6)), nn.Conv2d(1, 12, 3), nn.Flatten(), nn.Linear(144, 10))


def test_matrices_follow_the_stated_conventions():
    model = _model()
    frame = sp.esd(model, progress=False)
    # LayerNorm's 1-D weight and every bias are skipped; the conv weight is (out, in*kh*kw)
    assert list(frame["name"]) == ["0", "3", "5", "7"]
    assert list(frame["shape"]) == [(96, 40), (30, 96), (12, 9), (10, 144)]
    for (_, w), row in zip(sp.weight_matrices(model), frame.itertuples()):
        w = w.double().numpy()
        n = max(w.shape)
        npt.assert_allclose(row.eigenvalues, np.sort(np.linalg.svd(w, compute_uv=False) ** 2 / n), rtol=1e-4,
                            atol=1e-6 * row.eigenvalues.max())
        assert row.eigenvalues.size == min(w.shape)
        assert row.spectral_norm == pytest.approx(float(torch.linalg.matrix_norm(torch.tensor(w), ord=2)), rel=1e-5)
        fro2, two2 = np.linalg.norm(w) ** 2, np.linalg.norm(w, 2) ** 2
        assert row.stable_rank == pytest.approx(fro2 / two2, rel=1e-4)


def test_fit_columns_match_the_fit_functions():
    row = sp.esd(_model(), progress=False).iloc[0]
    assert (row.alpha, row.xmin, row.ks_distance) == pytest.approx(sp.powerlaw_fit(row.eigenvalues))
    assert row.alpha_hill == pytest.approx(sp.hill(row.eigenvalues, row.eigenvalues.size // 2))
    small = sp.esd(_model(), progress=False).set_index("name").loc["5"]  # 9 eigenvalues: too few to fit
    assert math.isnan(small.alpha) and small.eigenvalues.size == 9


@pytest.mark.parametrize("shape", [(1200, 300), (300, 600), (500, 500)])
def test_gaussian_matrix_stays_inside_the_mp_bulk(shape):
    torch.manual_seed(1)
    w = 0.7 * torch.randn(*shape, dtype=torch.float64)
    eigs = sp.eigenvalues(w)
    m, n = min(shape), max(shape)
    bulk = sp.mp_bulk(eigs, m, n)
    assert bulk.sigma2 == pytest.approx(0.49, rel=0.02)
    assert bulk.edge == pytest.approx(0.49 * (1 + math.sqrt(m / n)) ** 2, rel=0.02)
    assert bulk.num_spikes == 0
    # the eigenvalues follow the MP law (no atom at 0: the M x M Gram matrix has q = M/N <= 1)
    for x in np.quantile(eigs, [0.1, 0.5, 0.9]):
        cdf = integrate.quad(sp.mp_pdf, bulk.lower, x, args=(bulk.sigma2, bulk.q), limit=200)[0]
        assert cdf == pytest.approx(np.mean(eigs <= x), abs=0.02)


def test_mp_density_integrates_to_one():
    for q in (0.1, 0.5, 0.9):
        lo, hi = (1 - math.sqrt(q)) ** 2 * 2.0, (1 + math.sqrt(q)) ** 2 * 2.0
        assert integrate.quad(sp.mp_pdf, lo, hi, args=(2.0, q), limit=200)[0] == pytest.approx(1, abs=1e-6)


@pytest.mark.parametrize("strength, spikes", [(3.0, 1), (0.5, 0)])
def test_planted_spike_is_counted_above_the_bbp_threshold(strength, spikes):
    torch.manual_seed(2)
    n, m = 1000, 400
    g = torch.randn(n, m, dtype=torch.float64)
    u, v = torch.randn(n, 1, dtype=torch.float64), torch.randn(m, 1, dtype=torch.float64)
    theta = strength * (n * m) ** 0.25  # BBP: a rank-1 signal of singular value above (NM)^(1/4)σ separates
    w = g + theta * (u / u.norm()) @ (v / v.norm()).T
    bulk = sp.mp_bulk(sp.eigenvalues(w), m, n)
    assert bulk.num_spikes == spikes
    assert bulk.sigma2 == pytest.approx(1.0, rel=0.02)  # the spike does not inflate σ²


def test_hill_against_its_formula_and_a_known_tail():
    x = np.array([1.0, 2.0, 3.0, 5.0, 8.0, 13.0])
    assert sp.hill(x, 2) == pytest.approx(1 + 2 / (math.log(13 / 5) + math.log(8 / 5)))
    rng = np.random.default_rng(0)
    pareto = rng.pareto(1.5, 200_000) + 1  # density exponent α = 2.5
    assert sp.hill(pareto, 20_000) == pytest.approx(2.5, abs=0.05)
    with pytest.raises(ValueError, match="k must be"):
        sp.hill(x, 6)


def test_powerlaw_fit_drops_zeros_and_refuses_too_few_values():
    rng = np.random.default_rng(3)
    x = (rng.pareto(1.5, 300) + 1)
    assert sp.powerlaw_fit(np.concatenate([np.zeros(20), x])) == pytest.approx(kp.fit(x))
    with pytest.raises(ValueError, match="at least 10 positive"):
        sp.powerlaw_fit(x[:5])
    with pytest.raises(ValueError, match="NaN or infinity"):
        sp.powerlaw_fit(np.append(x, np.inf))
    with pytest.raises(ValueError, match=">= 0"):
        sp.powerlaw_fit(np.append(x, -1.0))


def test_farms_pool_equals_the_submatrices_computed_directly():
    torch.manual_seed(4)
    w = torch.randn(90, 200, dtype=torch.float64)
    f = sp.farms(w, size=40, aspect=1.5, windows=3)
    assert f.window == (40, 60) and len(f.starts) == 9 and not f.transposed
    direct = np.concatenate([np.linalg.svd(w[r:r + 40, c:c + 60].numpy(), compute_uv=False) ** 2 / 60
                             for r, c in f.starts])
    npt.assert_allclose(f.eigenvalues, np.sort(direct), rtol=1e-8, atol=1e-12)
    assert (f.alpha, f.xmin, f.ks_distance) == pytest.approx(sp.powerlaw_fit(direct))
    # a tall matrix is transposed first: the same pool as its transpose
    g = sp.farms(w.T, size=40, aspect=1.5, windows=3)
    assert g.transposed
    npt.assert_allclose(g.eigenvalues, f.eigenvalues, rtol=1e-10)


def test_farms_removes_the_aspect_ratio_bias():
    """Gaussian matrices of aspect ratio 1 to 8: plain Hill α drifts with the ratio, FARMS α does not."""
    torch.manual_seed(5)
    plain, pooled = [], []
    for cols in (128, 256, 512, 1024):
        w = torch.randn(128, cols)
        plain.append(sp.hill_half(sp.eigenvalues(w)))
        pooled.append(sp.farms(w, size=64, windows=4).alpha_hill)
    assert np.ptp(plain) > 1.5  # about 2.1 at q = 1 to 4.4 at q = 1/8
    assert np.ptp(pooled) < 0.1
    assert np.std(pooled) < 0.05 * np.std(plain)


@pytest.mark.parametrize("kw, match", [
    (dict(size=300), "does not fit"), (dict(aspect=0.5), "aspect"), (dict(windows=0), "windows"),
])
def test_farms_bad_options(kw, match):
    with pytest.raises(ValueError, match=match):
        sp.farms(torch.randn(50, 80), **kw)


def test_esd_with_farms_adds_columns():
    frame = sp.esd(_model(), farms=True, farms_options=dict(windows=2), progress=False)
    row = frame.iloc[0]
    f = sp.farms(sp.weight_matrices(_model())[0][1], windows=2)
    npt.assert_allclose(row.farms_eigenvalues, f.eigenvalues)
    assert row.farms_alpha == pytest.approx(f.alpha, nan_ok=True)
    assert row.farms_alpha_hill == pytest.approx(f.alpha_hill)


def test_bad_models_and_weights():
    with pytest.raises(ValueError, match="no weight matrix"):
        sp.esd(nn.Sequential(nn.ReLU()), progress=False)
    m = nn.Linear(20, 20)
    m.register_parameter("table", nn.Parameter(torch.ones(4, 4, dtype=torch.int64), requires_grad=False))
    with pytest.raises(ValueError, match="floating-point"):
        sp.esd(m, progress=False)
    with pytest.raises(ValueError, match="NaN or infinity"):
        sp.eigenvalues(torch.full((5, 5), math.nan))
    with pytest.raises(ValueError, match="nn.Module"):
        sp.esd(np.eye(3), progress=False)


def test_cancelled_analysis_keeps_the_rows_done():
    p = Progress()
    p.cancel()
    frame = sp.esd(_model(), progress=p)
    assert frame.attrs["cancelled"] and len(frame) == 0
    frame = Job(sp.esd, _model(), farms=True)
    result = frame.wait(60)
    assert not result.attrs["cancelled"] and list(result["name"]) == ["0", "3", "5", "7"]
    assert frame.progress.fraction == 1.0


def test_views_are_normalized_densities():
    frame = sp.esd(_model(), farms=True, progress=False)
    v = sp.views(frame)["0"]["plain"]
    assert np.sum(v["lin_density"] * np.diff(v["lin_edges"])) == pytest.approx(1.0)
    assert np.sum(v["log_density"] * np.diff(v["log_edges"])) == pytest.approx(1.0)
    assert v["pl_x"][0] == pytest.approx(v["xmin"])
    assert len(v["spikes"]) == v["num_spikes"]
    assert sp.views(frame)["0"]["farms"] is not None


def test_probe_logs_alpha_per_layer_and_an_esd_snapshot():
    run = trainlab.Run(model=("mlp", {"width": 32}), data="digits", seed=0, probes=[])
    run.add_probe(SpectrumProbe(every=5))
    run.step(10)
    df = run.history.frame()
    cols = [c for c in df.columns if c.startswith("alpha/")]
    assert cols == ["alpha/fc1", "alpha/fc2", "alpha/out"]
    assert df[cols].notna().sum().tolist() == [2, 2, 2]  # steps 5 and 10
    ref = sp.esd(run.model, progress=False).set_index("name")
    last = df.iloc[-1]
    for layer in ("fc1", "fc2", "out"):
        assert last[f"alpha/{layer}"] == pytest.approx(ref.loc[layer, "alpha"])
        assert last[f"alpha_hill/{layer}"] == pytest.approx(ref.loc[layer, "alpha_hill"])
    step, snap = run.history.snapshot("esd")
    assert step == 10 and set(snap["layers"]) == {"fc1", "fc2", "out"}
