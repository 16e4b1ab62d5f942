"""Compile flags every kernel here shares (none sets its own), and the layout rule of the norms' kernels.

FASTMATH lets LLVM reassociate sums (so a reduction over contiguous memory is vectorized), fuse
multiply-adds and ignore the sign of zero; NaN and infinity keep their IEEE meaning.
ERROR_MODEL "numpy": a float division by zero gives inf/NaN as in NumPy instead of raising, which
drops the per-element check that kept a loop with a division from being vectorized (7x slower here).
"""
import numpy as np
from numba import njit

FASTMATH = {"reassoc", "contract", "nsz", "arcp"}
ERROR_MODEL = "numpy"

# Feature maps of fewer positions than this (a CNN's last 2x2 to 6x6 maps) are run as features, each entry with its
# channel's parameters, sums folded back per channel: a loop over a channel's 4 positions is scalar code. EvoNorm-S0
# on (1024, 64, 2, 2) took 3.9x the time of a (1024, 256) of as many entries, forward and backward (670 against 173
# µs forward); as features it takes the same. On an AVX-512 machine (2026-12-04, A/B in one process, µs forward +
# backward) the channel loops lost up to 36 positions too: S0 (256, 64, 4, 4) 294 -> 182, (128, 32, 5, 5) 144 -> 82,
# (113, 64, 6, 6) 251 -> 192, (83, 64, 7, 7) the same, 8x8 better per channel; PowerNorm 4x4 87 -> 58, 5x5 32 -> 23,
# 6x6 the same. (On AVX2, 16 positions had been 1.1-1.3x the features' time per channel, 32 the same.)
FEW_POSITIONS = 40  # Numba caches its users (evonorm.py, powernorm.py) by their own files: touch them after changing it


@njit(cache=True)
def per_entry(t, p):
    """(C,) -> (C·p,): each channel's value repeated over its p positions (t itself when p is 1)."""
    if p == 1:
        return t
    out = np.empty(t.size * p, t.dtype)
    repeat_into(t, p, out)
    return out


@njit(inline="always")
def repeat_into(t, p, out):
    """per_entry into an array of the caller's, out[c·p + i] = t[c]: for a per-row statistic, row after row."""
    for c in range(t.size):
        tc = t[c]
        for i in range(p):
            out[c * p + i] = tc


@njit(inline="always")
def in_dtype(value, like):
    """`value` as a scalar of the array `like`'s dtype: a kernel's loop that meets a Python float or an int
    divisor (1.0 / p, 0.5) is computed in float64, at half the vector width for float32 data."""
    out = np.empty(1, like.dtype)
    out[0] = value
    return out[0]


@njit(cache=True)
def fold(per, out):
    """out[c] += Σ_i per[c·p + i]: per-entry sums back to their channels'."""
    p = per.size // out.size
    for c in range(out.size):
        t = out[c] - out[c]
        for i in range(p):
            t += per[c * p + i]
        out[c] += t
