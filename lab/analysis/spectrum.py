"""Weight spectra: per-layer ESD, the Marchenko–Pastur bulk and its spikes, heavy-tail α, FARMS.

Conventions
- Weight matrices: every parameter with 2 or more dimensions, as (shape[0], rest): a Linear weight
  is (out, in), a Conv weight (out, in·kh·kw); 1-D parameters (biases, norms) are skipped. A
  parameter named `<module>.weight` is reported as `<module>`, like `run.layers`.
- ESD: for W with M = min(rows, cols) and N = max(rows, cols), the M eigenvalues of WᵀW/N (the
  nonzero ones of the larger Gram matrix), i.e. squared singular values over N; computed as the
  eigenvalues of the smaller Gram matrix, in the parameter's precision (float32 or float64).
- Marchenko–Pastur: iid entries of variance σ² give a bulk on [σ²(1-√q)², σ²(1+√q)²], q = M/N.
  σ² is the mean eigenvalue of the bulk: start from the mean of all eigenvalues (||W||_F²/(MN)),
  then repeat σ² = mean of the eigenvalues at or below λ+(σ²) until the set stops changing, so spikes
  do not inflate it. `num_spikes` counts eigenvalues above λ+ plus a Tracy–Widom margin
  (`tw_margin` standard deviations of the largest bulk eigenvalue, Johnstone 2001; 0 counts all above λ+).
- Power law: see `trainlab.kernels.powerlaw` (continuous MLE α, xmin by least KS distance, as the
  `powerlaw` package and Clauset et al. 2009). Every candidate xmin with α > 1 counts, as in
  WeightWatcher; the `powerlaw` package (2.0) also drops candidates whose α leaves its default range
  (0, 3], so on tails steeper than α ≈ 3 it returns another fit (the same one when its best α < 3).
- FARMS (Hu et al. 2025, "Eigenspectrum analysis of neural networks without aspect ratio bias"):
  the ESDs of many fixed-aspect-ratio submatrices pooled into one (an equal-weight average) and fitted.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy.linalg import eigvalsh
from scipy.linalg.blas import get_blas_funcs
from threadpoolctl import ThreadpoolController
from torch import nn

from ..jobs import Progress, as_progress
from ..kernels import powerlaw as _pl


MIN_EIGENVALUES = 10  # fewer positive eigenvalues than this: no power-law fit
TW_99 = 2.02  # the 99th percentile of the Tracy–Widom (β=1) law


# ---- matrices and eigenvalues -------------------------------------------------------------------
def weight_matrices(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """(name, 2-D view) of every parameter with 2+ dimensions, in model order (see module conventions)."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch nn.Module, got {type(model).__name__}")
    out = []
    for name, p in model.named_parameters():
        if p.ndim < 2:
            continue
        if not p.is_floating_point():
            raise ValueError(f"parameter {name!r} has dtype {p.dtype}; weight spectra need floating-point weights")
        out.append((name.removesuffix(".weight"), p.detach().reshape(p.shape[0], -1)))
    return out


def matrix_names(model: nn.Module) -> list[str]:
    return [name for name, _ in weight_matrices(model)]


def _matrix(weight, what: str) -> torch.Tensor:
    """A finite floating-point 2-D tensor, or a ValueError saying which of these it is not."""
    w = torch.as_tensor(weight).detach()
    if w.ndim != 2:
        raise ValueError(f"{what} must be 2-D, got shape {tuple(w.shape)}")
    if not w.is_floating_point():
        raise ValueError(f"weights must be floating point, got dtype {w.dtype}")
    if not torch.isfinite(w).all():
        raise ValueError("the weight matrix contains NaN or infinity")
    return w


def eigenvalues(weight: torch.Tensor | np.ndarray) -> np.ndarray:
    """The M eigenvalues of WᵀW/N (M, N the smaller and larger dimension), ascending, clipped at 0."""
    w = _matrix(weight, "a weight matrix")
    if w.dtype not in (torch.float32, torch.float64):
        w = w.float()  # half precisions: LAPACK has no routine for them
    a = w.cpu().numpy()
    n = max(a.shape)
    at = a.T  # a C-ordered array is its transpose in Fortran order: BLAS reads it without a copy
    # BLAS syrk writes one triangle of the (M, M) Gram matrix (half a matmul's work) and LAPACK's
    # eigenvalues-only driver reads that triangle: 1.6x faster than torch's matmul + eigvalsh on one
    # thread here. SciPy's BLAS gets torch's thread count: left at its default it oversubscribed a
    # busy 2-core machine (5x slower).
    syrk = get_blas_funcs("syrk", (at,))
    with _blas_threads():
        gram = syrk(1.0 / n, at, trans=0 if a.shape[0] >= a.shape[1] else 1, lower=0)
        eigs = eigvalsh(gram, lower=False, driver="evd", check_finite=False, overwrite_a=True)
    return np.clip(eigs, 0, None).astype(np.float64)


_controller = None


def _blas_threads():
    global _controller
    if _controller is None:  # finding the loaded BLAS libraries takes ~1 ms: once
        _controller = ThreadpoolController()
    return _controller.limit(limits=torch.get_num_threads(), user_api="blas")


def _positive(eigs: np.ndarray) -> np.ndarray:
    """Eigenvalues above round-off: zeros of a rank-deficient matrix are not part of the spectrum's tail.

    The floor is the error of a float32 Gram matrix's eigenvalues, M·eps·λ_max.
    """
    top = float(eigs.max()) if eigs.size else 0.0
    return eigs[eigs > top * eigs.size * np.finfo(np.float32).eps]


# ---- fits ----------------------------------------------------------------------------------------
def _check_values(x, what: str = "eigenvalues") -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 1:
        raise ValueError(f"{what} must be a 1-D array, got shape {x.shape}")
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise ValueError(f"{what} must be real numbers, got dtype {x.dtype}")
    x = x.astype(np.float64)
    if not np.isfinite(x).all():
        raise ValueError(f"{what} contain NaN or infinity; the weights were probably non-finite")
    if (x < 0).any():
        raise ValueError(f"{what} must be >= 0 (eigenvalues of WᵀW/N); got {x.min():g}")
    return x


def powerlaw_fit(eigenvalues, min_eigenvalues: int = MIN_EIGENVALUES) -> tuple[float, float, float]:
    """(α, xmin, KS distance) of a continuous power law fitted to the positive values.

    α = 1 + n / Σ ln(x_i / xmin) over the n values x_i >= xmin (maximum likelihood), with xmin the
    distinct value (all but the largest) whose fit has the least KS distance. Zeros are dropped;
    fewer than `min_eigenvalues` positive values raise ValueError.
    """
    x = _check_values(eigenvalues)
    x = x[x > 0]
    if x.size < max(min_eigenvalues, 3) or np.unique(x).size < 3:
        raise ValueError(f"a power-law fit needs at least {max(min_eigenvalues, 3)} positive, not all equal "
                         f"eigenvalues; got {x.size}. Use a larger matrix (or FARMS on a larger one).")
    return _pl.fit(x)


def hill(eigenvalues, k: int) -> float:
    """Hill's estimate of the density exponent α from the k largest values: 1 + k / Σ_{i<k} ln(x_(i) / x_(k)).

    x_(0) >= x_(1) >= ... are the values in decreasing order; x_(k), the (k+1)-th largest, is the threshold.
    """
    x = np.sort(_check_values(eigenvalues))[::-1]
    if not isinstance(k, (int, np.integer)) or not 1 <= k < x.size:
        raise ValueError(f"k must be a whole number in [1, {x.size - 1}] (values given: {x.size}), got {k!r}")
    if x[k] <= 0:
        raise ValueError(f"the threshold x_(k) = x_({k}) is 0; take a smaller k")
    s = float(np.sum(np.log(x[:k] / x[k])))
    if s <= 0:
        raise ValueError(f"the {k} largest values all equal the threshold; take a larger k")
    return 1.0 + k / s


@dataclass
class Bulk:
    """A Marchenko–Pastur fit: σ², the ratio q = M/N, the bulk edges, the spike threshold and count."""

    sigma2: float
    q: float
    n: int
    lower: float
    edge: float
    threshold: float
    num_spikes: int


def mp_bulk(eigs: np.ndarray, m: int, n: int, tw_margin: float = TW_99, iterations: int = 100) -> Bulk:
    """The MP bulk of the M eigenvalues of WᵀW/N (see module conventions for σ² and the margin)."""
    eigs = np.asarray(eigs, dtype=np.float64)
    q = m / n
    sigma2 = float(eigs.mean()) if eigs.size else 0.0
    inside = eigs.size
    for _ in range(iterations):
        edge = sigma2 * (1 + math.sqrt(q)) ** 2
        bulk = eigs[eigs <= edge]
        if bulk.size == inside or bulk.size == 0:
            break
        inside, sigma2 = bulk.size, float(bulk.mean())
    edge = sigma2 * (1 + math.sqrt(q)) ** 2
    # Johnstone's scale of the largest eigenvalue of an (N x M) white Wishart matrix, over N
    nn_, mm = max(n - 1, 1), max(m, 1)
    scale = sigma2 * (math.sqrt(nn_) + math.sqrt(mm)) * (1 / math.sqrt(nn_) + 1 / math.sqrt(mm)) ** (1 / 3) / n
    threshold = edge + tw_margin * scale
    return Bulk(sigma2, q, n, sigma2 * (1 - math.sqrt(q)) ** 2, edge, threshold, int((eigs > threshold).sum()))


def mp_pdf(x, sigma2: float, q: float) -> np.ndarray:
    """Marchenko–Pastur density of the eigenvalues of WᵀW/N (ratio q = M/N <= 1, entry variance σ²)."""
    x = np.asarray(x, dtype=np.float64)
    lo, hi = sigma2 * (1 - math.sqrt(q)) ** 2, sigma2 * (1 + math.sqrt(q)) ** 2
    inside = (x > lo) & (x < hi) & (x > 0)
    out = np.zeros_like(x)
    xi = x[inside]
    out[inside] = np.sqrt((hi - xi) * (xi - lo)) / (2 * math.pi * sigma2 * q * xi)
    return out


def _fit_or_nan(eigs: np.ndarray) -> tuple[float, float, float]:
    pos = _positive(eigs)
    if pos.size < MIN_EIGENVALUES or np.unique(pos).size < 3:
        return math.nan, math.nan, math.nan
    return _pl.fit(pos)


def hill_half(eigs: np.ndarray) -> float:
    """Hill's α from the larger half of the positive eigenvalues (the PL_Alpha_Hill of TempBalance and FARMS)."""
    pos = np.sort(_positive(np.asarray(eigs, dtype=np.float64)))
    if pos.size < MIN_EIGENVALUES or pos[-1] == pos[pos.size - pos.size // 2 - 1]:
        return math.nan
    return hill(pos, pos.size // 2)


# ---- FARMS ---------------------------------------------------------------------------------------
@dataclass
class Farms:
    """The pooled ESD of fixed-aspect-ratio submatrices and its power-law fit."""

    eigenvalues: np.ndarray  # every submatrix's eigenvalues, concatenated and sorted
    alpha: float
    xmin: float
    ks_distance: float
    alpha_hill: float  # Hill's α from the larger half of the pool: steadier than the KS fit on bulk-like ESDs
    window: tuple[int, int]  # (rows, cols) of each submatrix, rows <= cols, of W oriented rows <= cols
    starts: list[tuple[int, int]] = field(default_factory=list)  # (row, col) of each submatrix's corner
    transposed: bool = False  # whether W was transposed so that rows <= cols


def _starts(length: int, window: int, count: int) -> list[int]:
    """`count` window starts evenly spread over a dimension (fewer if the dimension has fewer)."""
    if window >= length:
        return [0]
    return sorted({int(round(s)) for s in np.linspace(0, length - window, count)})


def farms(weight, size: int | None = None, aspect: float = 1.0, windows: int = 4,
          progress: bool | Progress = False) -> Farms:
    """FARMS: pool the ESDs of submatrices of one fixed shape sampled from W, and fit α to the pool.

    W is oriented so that rows <= cols (an ESD does not change under transposition). Each submatrix is
    `size` x round(size·aspect) (default size: half the smaller dimension, at least 10 rows), and
    its ESD is that of WᵀW/N with N = its column count, as for a whole matrix. Starts are evenly spaced
    along each dimension, `windows` of them per dimension: up to windows² overlapping submatrices.
    All windows share one aspect ratio, so the pooled ESD no longer depends on W's own (Marchenko–Pastur's
    shape depends on q = M/N, which biases α across layers of different shapes).
    """
    w = _matrix(weight, "FARMS's weight matrix")
    transposed = w.shape[0] > w.shape[1]
    w = (w.T if transposed else w).cpu()
    rows, cols = w.shape
    if not aspect >= 1.0:
        raise ValueError(f"aspect (columns / rows of each submatrix) must be >= 1, got {aspect}")
    if not isinstance(windows, (int, np.integer)) or windows < 1:
        raise ValueError(f"windows (submatrices per dimension) must be a whole number >= 1, got {windows!r}")
    size = max(rows // 2, min(rows, MIN_EIGENVALUES)) if size is None else size
    width = int(round(size * aspect))
    if not isinstance(size, (int, np.integer)) or size < 2 or size > rows or width > cols:
        raise ValueError(f"a {size} x {width} submatrix does not fit in the {rows} x {cols} matrix "
                         f"(oriented rows <= cols); choose size in [2, {min(rows, int(cols / aspect))}]")
    starts = [(r, c) for r in _starts(rows, size, windows) for c in _starts(cols, width, windows)]
    p = as_progress(progress, len(starts), "FARMS")
    parts = []
    try:
        for chunk in range(0, len(starts), 8):  # batched eigvalsh, a cancel check between batches
            if p.cancelled:
                break
            block = starts[chunk : chunk + 8]
            sub = torch.stack([w[r : r + size, c : c + width] for r, c in block])  # (B, size, width)
            parts.append(torch.linalg.eigvalsh(sub @ sub.transpose(1, 2) / width).clamp_min(0).double().flatten())
            p.update(len(block))
    finally:
        p.close()
    starts = starts[: sum(len(x) for x in parts) // size]
    eigs = np.sort(torch.cat(parts).numpy()) if parts else np.zeros(0)
    alpha, xmin, ks = _fit_or_nan(eigs)
    return Farms(eigs, alpha, xmin, ks, hill_half(eigs), (size, width), starts, transposed)


_farms = farms  # esd's `farms` flag shadows the function's name


# ---- whole model ---------------------------------------------------------------------------------
def _row(name: str, w: torch.Tensor, tw_margin: float) -> dict[str, Any]:
    eigs = eigenvalues(w)
    m, n = min(w.shape), max(w.shape)
    bulk = mp_bulk(eigs, m, n, tw_margin)
    alpha, xmin, ks = _fit_or_nan(eigs)
    top = float(eigs[-1]) if eigs.size else 0.0
    return dict(name=name, shape=tuple(w.shape), eigenvalues=eigs, alpha=alpha, xmin=xmin, ks_distance=ks,
                alpha_hill=hill_half(eigs),
                spectral_norm=math.sqrt(top * n), stable_rank=float(eigs.sum() / top) if top > 0 else math.nan,
                mp_bulk_edge=bulk.edge, num_spikes=bulk.num_spikes, mp_sigma2=bulk.sigma2, q=bulk.q)


def esd(model: nn.Module, farms: bool = False, tw_margin: float = TW_99, farms_options: dict | None = None,
        progress: bool | Progress = True) -> pd.DataFrame:
    """A row per weight matrix of `model`: its ESD, power-law fit, norms and Marchenko–Pastur bulk.

    Columns: name, shape, eigenvalues (NumPy array, ascending), alpha, xmin, ks_distance (NaN for
    a matrix with fewer than MIN_EIGENVALUES positive eigenvalues), alpha_hill (Hill's α from the
    larger half of the eigenvalues), spectral_norm (||W||_2),
    stable_rank (||W||_F² / ||W||_2²), mp_bulk_edge (λ+), num_spikes, mp_sigma2 (σ²), q (M/N); with
    `farms=True` also farms_alpha, farms_xmin, farms_ks_distance, farms_alpha_hill, farms_eigenvalues and farms_window
    (`farms_options` are passed to `farms`). Cancelling keeps the rows done (attrs["cancelled"]).
    """
    mats = weight_matrices(model)
    if not mats:
        raise ValueError(f"{type(model).__name__} has no weight matrix (no parameter with 2 or more dimensions)")
    p = as_progress(progress, len(mats), "ESD")
    rows, cancelled = [], False
    try:
        for name, w in mats:
            if p.cancelled:
                cancelled = True
                break
            row = _row(name, w, tw_margin)
            if farms:
                f = _farms(w, **(farms_options or {}))
                row.update(farms_alpha=f.alpha, farms_xmin=f.xmin, farms_ks_distance=f.ks_distance,
                           farms_alpha_hill=f.alpha_hill,
                           farms_eigenvalues=f.eigenvalues, farms_window=f.window)
            rows.append(row)
            p.update()
    finally:
        p.close()
    df = pd.DataFrame(rows)
    df.attrs["cancelled"] = cancelled
    return df


# ---- views for plots -----------------------------------------------------------------------------
def _view(eigs: np.ndarray, m: int, n: int, alpha: float, xmin: float, ks: float, tw_margin: float,
          bins: int) -> dict[str, Any]:
    """What a plot of one ESD draws: log- and linear-binned histograms, the power law, the MP density."""
    pos = _positive(eigs)
    bulk = mp_bulk(eigs, m, n, tw_margin)
    out: dict[str, Any] = dict(alpha=alpha, xmin=xmin, ks_distance=ks, alpha_hill=hill_half(eigs),
                               mp_bulk_edge=bulk.edge, mp_sigma2=bulk.sigma2,
                               q=bulk.q, threshold=bulk.threshold, num_spikes=bulk.num_spikes,
                               spikes=eigs[eigs > bulk.threshold])
    if pos.size:
        lo, hi = pos.min(), pos.max()
        edges = np.geomspace(lo, hi * (1 + 1e-9), bins + 1) if hi > lo else np.array([lo * 0.9, hi * 1.1])
        out["log_edges"], out["log_density"] = edges, np.histogram(pos, edges)[0] / (pos.size * np.diff(edges))
    else:
        out["log_edges"], out["log_density"] = np.array([0.0, 1.0]), np.zeros(1)
    # points for log axes: geometric bin centres of the non-empty bins
    keep = out["log_density"] > 0
    out["log_x"] = np.sqrt(out["log_edges"][:-1] * out["log_edges"][1:])[keep]
    out["log_y"] = out["log_density"][keep]
    if math.isfinite(alpha):
        tail = pos[pos >= xmin]
        x = np.geomspace(xmin, tail.max(), 50)
        # the tail's share of the values times the power-law density: comparable to the histogram
        out["pl_x"], out["pl_y"] = x, tail.size / pos.size * (alpha - 1) / xmin * (x / xmin) ** (-alpha)
    else:
        out["pl_x"], out["pl_y"] = np.zeros(0), np.zeros(0)
    top = max(float(eigs.max()) if eigs.size else 1.0, bulk.edge) * 1.02
    edges = np.linspace(0, top, bins + 1)
    out["lin_edges"], out["lin_density"] = edges, np.histogram(eigs, edges)[0] / max(eigs.size, 1) / np.diff(edges)
    x = np.linspace(bulk.lower, bulk.edge, 202)[1:-1]  # inside the bulk: at q = 1 the density diverges at 0
    out["mp_x"], out["mp_pdf"] = x, mp_pdf(x, bulk.sigma2, bulk.q) if bulk.sigma2 > 0 else np.zeros_like(x)
    return out


def views(frame: pd.DataFrame, tw_margin: float = TW_99, bins: int = 40) -> dict[str, dict[str, Any]]:
    """Per layer, {"plain": view, "farms": view or None}: the snapshot a SpectrumPanel draws."""
    out = {}
    for r in frame.to_dict("records"):
        m, n = min(r["shape"]), max(r["shape"])
        v = {"plain": _view(r["eigenvalues"], m, n, r["alpha"], r["xmin"], r["ks_distance"], tw_margin, bins),
             "farms": None, "shape": r["shape"], "spectral_norm": r["spectral_norm"], "stable_rank": r["stable_rank"]}
        fe = r.get("farms_eigenvalues")
        if isinstance(fe, np.ndarray) and fe.size:
            # a FARMS pool of square (or fixed-ratio) windows: MP with the windows' own ratio
            size, width = r["farms_window"]
            v["farms"] = _view(fe, size, width, r["farms_alpha"], r["farms_xmin"], r["farms_ks_distance"],
                               tw_margin, bins)
        out[r["name"]] = v
    return out
