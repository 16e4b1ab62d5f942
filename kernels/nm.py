"""N:M masks: in every group of M consecutive entries of a row, keep the N of largest score.

`nm_keep(scores, n, m)` takes a (rows, cols) array, cols a multiple of m, and returns a bool array
of the same shape. An entry's rank in its group is the number of entries with a larger score (ties:
the earlier entry counts as larger), so exactly n are kept per group. O(rows * cols * m).
`nm_keep_reference` is the NumPy reference (a stable argsort per group).
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(cache=True, parallel=False)
def _nm_keep(scores, n, m, out):
    rows, cols = scores.shape
    for r in prange(rows):
        for g in range(0, cols, m):
            for i in range(m):
                s = scores[r, g + i]
                rank = 0
                for j in range(m):
                    t = scores[r, g + j]
                    if t > s or (t == s and j < i):
                        rank += 1
                out[r, g + i] = rank < n
    return out


def _check(scores: np.ndarray, n: int, m: int) -> np.ndarray:
    scores = np.ascontiguousarray(scores)
    if scores.ndim != 2:
        raise ValueError(f"scores must be 2-D (rows, cols), got shape {scores.shape}")
    if not (isinstance(n, (int, np.integer)) and isinstance(m, (int, np.integer)) and 0 <= n <= m and m >= 1):
        raise ValueError(f"n={n}, m={m} rejected: whole numbers with 0 <= n <= m, m >= 1")
    if scores.shape[1] % m:
        raise ValueError(f"m={m} does not divide the row length {scores.shape[1]}")
    return scores


def nm_keep(scores: np.ndarray, n: int, m: int) -> np.ndarray:
    """Bool mask keeping the n largest scores in each group of m consecutive entries of every row."""
    scores = _check(scores, n, m)
    return _nm_keep(scores, int(n), int(m), np.empty(scores.shape, dtype=np.bool_))


def nm_keep_reference(scores: np.ndarray, n: int, m: int) -> np.ndarray:
    """The same mask by a stable descending argsort of each group (NumPy)."""
    scores = _check(scores, n, m)
    rows, cols = scores.shape
    groups = scores.reshape(rows, cols // m, m)
    order = np.argsort(-groups, axis=2, kind="stable")
    keep = np.zeros(groups.shape, dtype=bool)
    np.put_along_axis(keep, order[:, :, :n], True, axis=2)
    return keep.reshape(rows, cols)
