"""PowerNorm's training step (Shen et al. 2020, Algorithm 1), forward and approximate backward, each one
pass over the tensor and one call.

Written by hand because torch has no fused kernel for it: as torch ops a step is five or six passes over
x and ∂L/∂y (an elementwise pass for y, one for mean_B(x²), then in the backward one each for ∂L/∂x's two
terms, γ's gradient and β's) and a dozen small ops on the (C,) statistics. Both cost: the passes are
memory-bound, and after a pass over a large tensor each small op paid 10-15 µs (the interpreter's data
evicted from cache), not 1. 1.8x LayerNorm's forward and backward on (1024, 256) features as torch ops;
fused here, the statistics updated in the same call. Shapes: x (N, C, P), P = 1 for features (whose
loops then run along the channels, contiguous; as do maps of fewer than FEW_POSITIONS, config.py: Numba's cache
keys this file on its own stamp, so after changing that constant touch this file); every array C-contiguous and
of x's dtype, outputs allocated by the caller. With ψ² = ψ²_{t-1} + ε, a = γ / ψ:
    forward:  y = a x + β; ψ_B² = mean_{n,p} x²; the running ψ² moves to α ψ² + (1-α) ψ_B²;
    backward: ∂L/∂x = a ∂L/∂y - ν x / ψ², ∂L/∂γ = Σ ∂L/∂y x / ψ, ∂L/∂β = Σ ∂L/∂y;
              ν ← ν (1 - (1-α) Γ) + (1-α) Λ, Γ = ψ_B² / ψ², Λ = γ ∂L/∂γ / (N P).
`*_reference` are the NumPy forms, for the tests.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from .config import ERROR_MODEL, FASTMATH, FEW_POSITIONS, fold, per_entry


@njit(cache=True, fastmath=FASTMATH, error_model=ERROR_MODEL)
def forward(x, w, b, running, eps, alpha, y, saved):
    """y as above; `running` (C,), ψ², moved in place; saved (2, C) out: ψ²_{t-1} and ψ_B², for the backward."""
    rows, channels, p = x.shape
    a, sq = np.empty(channels, x.dtype), np.zeros(channels, x.dtype)  # arrays of their own: LLVM then knows
    for c in range(channels):                                            # they alias nothing (-20 %)
        saved[0, c] = running[c]
        a[c] = w[c] / np.sqrt(running[c] + eps)
    if p < FEW_POSITIONS:  # features (or few positions, as features): a row at a time along its entries
        ae, be, sqe = per_entry(a, p), per_entry(b, p), np.zeros(channels * p, x.dtype)
        x2, y2 = x.reshape(rows, channels * p), y.reshape(rows, channels * p)  # 1-D rows: contiguous vector loads
        for n in range(rows):
            xr, yr = x2[n], y2[n]
            for j in range(channels * p):
                xj = xr[j]
                yr[j] = ae[j] * xj + be[j]
                sqe[j] += xj * xj
        fold(sqe, sq)
    else:
        for n in range(rows):
            for c in range(channels):
                xr, yr, ac, bc = x[n, c], y[n, c], a[c], b[c]
                t = sq[c] - sq[c]
                for i in range(p):
                    xi = xr[i]
                    yr[i] = ac * xi + bc
                    t += xi * xi
                sq[c] += t
    for c in range(channels):
        saved[1, c] = sq[c] / (rows * p)
        running[c] = alpha * running[c] + (1 - alpha) * saved[1, c]


@njit(cache=True, fastmath=FASTMATH, error_model=ERROR_MODEL)
def backward(gy, x, w, saved, nu, eps, alpha, gx, grads):
    """gx, and grads (2, C) out: ∂L/∂γ, ∂L/∂β; ν (C,) moved in place."""
    rows, channels, p = x.shape
    a, k = np.empty(channels, x.dtype), np.empty(channels, x.dtype)
    sw, sb = np.zeros(channels, x.dtype), np.zeros(channels, x.dtype)
    for c in range(channels):
        inv2 = 1 / (saved[0, c] + eps)
        a[c], k[c] = w[c] * np.sqrt(inv2), nu[c] * inv2
    if p < FEW_POSITIONS:
        e = channels * p
        ae, ke, swe, sbe = per_entry(a, p), per_entry(k, p), np.zeros(e, x.dtype), np.zeros(e, x.dtype)
        g2, x2, gx2 = gy.reshape(rows, e), x.reshape(rows, e), gx.reshape(rows, e)
        for n in range(rows):
            gr, xr, gxr = g2[n], x2[n], gx2[n]
            for j in range(e):
                gj, xj = gr[j], xr[j]
                gxr[j] = ae[j] * gj - ke[j] * xj
                swe[j] += gj * xj
                sbe[j] += gj
        fold(swe, sw)
        fold(sbe, sb)
    else:
        for n in range(rows):
            for c in range(channels):
                gr, xr, gxr, ac, kc = gy[n, c], x[n, c], gx[n, c], a[c], k[c]
                tw, tb = sw[c] - sw[c], sb[c] - sb[c]
                for i in range(p):
                    gi, xi = gr[i], xr[i]
                    gxr[i] = ac * gi - kc * xi
                    tw += gi * xi
                    tb += gi
                sw[c] += tw
                sb[c] += tb
    for c in range(channels):
        inv2 = 1 / (saved[0, c] + eps)
        grads[0, c], grads[1, c] = sw[c] * np.sqrt(inv2), sb[c]
        nu[c] = nu[c] * (1 - (1 - alpha) * saved[1, c] * inv2) + (1 - alpha) * w[c] * grads[0, c] / (rows * p)


def forward_reference(x, w, b, running, eps, alpha):
    """y, ψ_B² and the new running ψ², for x (N, C, P)."""
    sq = (x * x).mean(axis=(0, 2))
    y = (w / np.sqrt(running + eps))[None, :, None] * x + b[None, :, None]
    return y, sq, alpha * running + (1 - alpha) * sq


def backward_reference(gy, x, w, psi2, sq, nu, eps, alpha):
    """∂L/∂x, ∂L/∂γ, ∂L/∂β and the new ν, with psi2 = ψ²_{t-1} and sq = ψ_B² from the forward."""
    psi = np.sqrt(psi2 + eps)
    gx = (w / psi)[None, :, None] * gy - (nu / psi**2)[None, :, None] * x
    gw, gb = (gy * x).sum(axis=(0, 2)) / psi, gy.sum(axis=(0, 2))
    n = x.shape[0] * x.shape[2]
    return gx, gw, gb, nu * (1 - (1 - alpha) * sq / psi**2) + (1 - alpha) * w * gw / n
