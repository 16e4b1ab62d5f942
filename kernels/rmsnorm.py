"""RMSNorm over each example's channels and positions together, with a gain per channel (RMSNorm2d): forward
and backward, each one pass per example row.

On x (N, L), L = C·P (the P positions of a channel consecutive), γ (C,):
    y = x r_n γ_c, r_n = (mean_L x² + ε)^(-1/2).
With s_n = Σ_L ∂L/∂y γ x: ∂L/∂x = r_n ∂L/∂y γ - x r_n³ s_n / L, ∂L/∂γ_c = Σ_{n,p} ∂L/∂y x r_n.
The statistics are per example, so the layout of channels does not matter to the loops: γ goes in once
repeated over its positions (config.per_entry) and every loop runs over a whole row, vectorized, whatever the
map's size. Written by hand because torch's ops for it (a norm, then an (N, C, 1, 1) broadcast; in the
backward a product, its sums and two more passes) cost 1.3-1.9x LayerNorm forward and backward on a CNN's
maps, the most on the small ones (2x2 to 8x8), where each op's fixed cost and its few-entry broadcasts tell.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from .config import ERROR_MODEL, FASTMATH, fold, in_dtype, per_entry


@njit(cache=True, fastmath=FASTMATH, error_model=ERROR_MODEL)
def forward(x, weight, eps):
    """y (N, L) and r (N,)."""
    rows, length = x.shape
    we = per_entry(weight, length // weight.size)
    y, r = np.empty_like(x), np.empty(rows, x.dtype)
    for n in range(rows):
        xr, yr = x[n], y[n]  # 1-D rows: contiguous vector loads (2-D indexing compiled to gathers)
        q = xr[0] - xr[0]
        for j in range(length):
            q += xr[j] * xr[j]
        r[n] = 1.0 / np.sqrt(q / length + eps)
        rn = r[n]  # read back: in x's dtype, so the loop below stays in it
        for j in range(length):
            yr[j] = xr[j] * rn * we[j]
    return y, r


@njit(cache=True, fastmath=FASTMATH, error_model=ERROR_MODEL)
def backward(gy, x, weight, r):
    """∂L/∂x (N, L) and ∂L/∂γ (C,)."""
    rows, length = x.shape
    we = per_entry(weight, length // weight.size)
    gx, gwe = np.empty_like(x), np.zeros(length, x.dtype)  # gwe: γ's gradient entry by entry, folded at the end
    per_length = in_dtype(1.0 / length, x)
    for n in range(rows):
        gr, xr, gxr, rn = gy[n], x[n], gx[n], r[n]
        s = rn - rn
        for j in range(length):
            t = gr[j] * xr[j]
            s += t * we[j]
            gwe[j] += t * rn
        k = rn * rn * rn * s * per_length
        for j in range(length):
            gxr[j] = rn * we[j] * gr[j] - k * xr[j]
    gw = np.zeros(weight.size, x.dtype)
    fold(gwe, gw)
    return gx, gw


def reference(x, weight, eps):
    """y of the forward in NumPy, for the tests."""
    p = x.shape[1] // weight.size
    return x / np.sqrt((x * x).mean(axis=1, keepdims=True) + eps) * np.repeat(weight, p)
