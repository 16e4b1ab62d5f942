"""EvoNorm-S0 and -B0 (Liu et al. 2020) forward and backward, each in two passes over the tensor.

Written by hand because torch has no fused kernel for them: as a chain of torch ops (its variance
alone is an unvectorized Welford pass on CPU) a forward and backward cost 8-30 LayerNorms; fused here,
about one. Each function takes C-contiguous float arrays of one dtype and allocates and returns its outputs
(fewer arrays to make and pass in Python: on a CNN's (64, 16, 8, 8) they had cost as much as the kernels' work).
B0's statistics are two-pass (mean, then the squared deviations) over blocks that fit in cache; S0's groups
are often short (64 entries of a layer of 256 features), where the second pass doubled the forward's time, so
theirs are one pass over x minus the block's first entry.

S0, on x of shape (N, L) (L = C·P, the P positions of a channel consecutive), `groups` blocks of
L / groups per example, s = σ(v x) (sigmoid.py's, computed in the pass that writes y):
    y = x s r γ + β, r = (var_block(x) + ε)^(-1/2).
B0, on x of shape (N, C, P):
    y = x / max(a_c, v_c x + b_nc) γ_c + β_c, b_nc = (var_p(x_nc) + ε)^(1/2),
a_c = (var_{n,p}(x_c) + ε)^(1/2) in training, from the running variance in eval.
`*_reference` are the NumPy forms of the forwards, for the tests. The one caller, trainlab.normlayers,
owns the shapes it passes (no checking wrapper: its cost per call would show on small tensors). The
first call compiles for about 10 s per dtype, once per machine (cache=True).
"""
from __future__ import annotations

import numpy as np
from numba import njit

from .config import ERROR_MODEL, FASTMATH, FEW_POSITIONS, fold, in_dtype, per_entry, repeat_into
from .sigmoid import sigmoid


@njit(cache=True, fastmath=FASTMATH, error_model=ERROR_MODEL)
def _params_per_entry(params, p):
    """(3, C) -> (3, C·p), for maps of few positions (config.FEW_POSITIONS)."""
    out = np.empty((params.shape[0], params.shape[1] * p), params.dtype)
    for a in range(params.shape[0]):
        out[a] = per_entry(params[a], p)
    return out


@njit(cache=True, fastmath=FASTMATH, error_model=ERROR_MODEL)
def s0_forward(x, params, groups, p, eps):
    """y as above, s = σ(v x), and stats (2, N, groups): the blocks' mean and r, for the backward.
    params (3, C) are v, γ, β. The outputs are allocated here: on small tensors each array passed in
    cost about as much as the work (a torch allocation, a conversion, the dispatcher's look at it)."""
    rows, length = x.shape
    if 1 < p < FEW_POSITIONS:  # as features (config.py)
        params, p = _params_per_entry(params, p), 1
    k, cg = length // groups, length // groups // p
    y, s, stats = np.empty_like(x), np.empty_like(x), np.empty((2, rows, groups), x.dtype)
    v, w, b, mean, rstd = params[0], params[1], params[2], stats[0], stats[1]
    rw = np.empty(length if p == 1 else 0, x.dtype)  # a row's r, entry by entry
    for n in range(rows):
        for g in range(groups):
            # 1-D slices and loops from 0: contiguous vector loads (an offset range, or 2-D indexing,
            # compiled to gathers, several times slower)
            lo, hi = g * k, (g + 1) * k
            xb = x[n, lo:hi]
            x0 = xb[0]  # moments of x - x0 in one pass: no cancellation unless x0 is far out in its block
            t, q = x0 - x0, x0 - x0
            for j in range(k):
                d = xb[j] - x0
                t += d
                q += d * d
            m = t / k
            mean[n, g] = x0 + m
            rstd[n, g] = 1.0 / np.sqrt(max(q / k - m * m, 0.0) + eps)
            r = rstd[n, g]  # read back: in x's dtype, so the loops below stay in it
            if p == 1:  # features: a channel per entry, σ and y below over the whole row
                rw[lo:hi] = r
            else:  # feature maps: a channel's positions
                for c in range(g * cg, (g + 1) * cg):
                    xc, sc, yc = x[n, c * p:(c + 1) * p], s[n, c * p:(c + 1) * p], y[n, c * p:(c + 1) * p]
                    rwc, bc, vc = r * w[c], b[c], v[c]
                    for i in range(p):
                        xi = xc[i]
                        si = sigmoid(vc * xi)
                        sc[i] = si
                        yc[i] = xi * si * rwc + bc
        if p == 1:
            # in one loop over the row, not one per group: LLVM's vector loop takes 32 entries a turn, so a
            # group of 16 (a width-64 layer in 4 groups) ran σ entry by entry, at 4x the time
            xr, sr, yr = x[n], s[n], y[n]
            for j in range(length):
                xj = xr[j]
                sj = sigmoid(v[j] * xj)
                sr[j] = sj
                yr[j] = xj * sj * rw[j] * w[j] + b[j]
    return y, s, stats


@njit(cache=True, fastmath=FASTMATH, error_model=ERROR_MODEL)
def s0_backward(gy, x, s, params, stats, groups, p):
    """gx (N, L) and the parameters' gradients (3, C): of v, γ, β (params' order).

    With g = ∂L/∂y γ r and num = x s: ∂L/∂x = g (s + v x s(1-s)) - (Σ_block ∂L/∂y γ num) r³ (x - μ) / k,
    ∂L/∂γ = Σ ∂L/∂y num r, ∂L/∂v = Σ g x² s(1-s), ∂L/∂β = Σ ∂L/∂y.
    """
    channels = params.shape[1]
    if 1 < p < FEW_POSITIONS:  # as features (config.py)
        params, p = _params_per_entry(params, p), 1
    if p == 1 and x.shape[1] // groups <= ROW_GROUPS:
        gx, grads = _s0_backward_rows(gy, x, s, params, stats, groups)
    else:
        gx, grads = _s0_backward_blocks(gy, x, s, params, stats, groups, p)
    if grads.shape[1] == channels:
        return gx, grads
    folded = np.zeros((3, channels), x.dtype)
    for a in range(3):
        fold(grads[a], folded[a])
    return gx, folded


# Groups of features this short or shorter take whole-row loops in the backward: a loop per group paid its set-up
# (the arrays' overlap checks, the reduction's tail) per group, and a group of 16 ran as scalar code (the vector
# loop takes 32 entries a turn). Measured on (N, C, groups) float32, µs: (1024, 64, 4) 113 -> 57, (1024, 128, 4)
# 131 -> 87, (1024, 256, 16) 434 -> 260, (1024, 256, 4) 172-208 -> 170-184; longer groups lose: (1024, 512, 4)
# 237 -> 282, (256, 1024, 4) 137 -> 195.
ROW_GROUPS = 64


@njit(cache=True, fastmath=FASTMATH, error_model=ERROR_MODEL)
def _s0_backward_rows(gy, x, s, params, stats, groups):
    """s0_backward on features, each row in three loops over it: the parameters' sums and the blocks' terms
    Σ ∂L/∂y γ x s, their sums per block, then ∂L/∂x (r, the blocks' coefficient and mean entry by entry)."""
    rows, length = x.shape
    k = length // groups
    v, w, mean, rstd = params[0], params[1], stats[0], stats[1]
    gx, grads = np.empty_like(x), np.zeros_like(params)
    gv, gw, gb = grads[0], grads[1], grads[2]
    rw, t = np.empty(length, x.dtype), np.empty(length, x.dtype)  # r and Σ's terms, entry by entry
    cf, mu = np.empty(length, x.dtype), np.empty(length, x.dtype)  # the block's coefficient and mean
    zero = w[0] - w[0]
    for n in range(rows):
        for g in range(groups):
            rw[g * k:(g + 1) * k] = rstd[n, g]
        xr, sr, gr = x[n], s[n], gy[n]
        for j in range(length):
            xj, sj, gj = xr[j], sr[j], gr[j]
            xs = xj * sj
            gyw = gj * w[j]
            t[j] = gyw * xs
            gw[j] += gj * xs * rw[j]
            gb[j] += gj
            gv[j] += gyw * rw[j] * xj * xj * (sj - sj * sj)
        for g in range(groups):
            tb, acc = t[g * k:(g + 1) * k], zero
            for j in range(k):
                acc += tb[j]
            r = rstd[n, g]
            cf[g * k:(g + 1) * k] = -acc * r * r * r / k
            mu[g * k:(g + 1) * k] = mean[n, g]
        gxr = gx[n]
        for j in range(length):
            xj, sj = xr[j], sr[j]
            gxr[j] = gr[j] * w[j] * rw[j] * (sj + v[j] * xj * (sj - sj * sj)) + cf[j] * (xj - mu[j])
    return gx, grads


@njit(cache=True, fastmath=FASTMATH, error_model=ERROR_MODEL)
def _s0_backward_blocks(gy, x, s, params, stats, groups, p):
    """s0_backward block by block: feature maps (a channel's positions), and features in long groups."""
    rows, length = x.shape
    k, cg = length // groups, length // groups // p
    v, w, mean, rstd = params[0], params[1], stats[0], stats[1]
    gx, grads = np.empty_like(x), np.zeros_like(params)
    gv, gw, gb = grads[0], grads[1], grads[2]
    coef = np.empty(1, x.dtype)  # -Σ r³ / k, rounded to x's dtype as the loop below computes in it
    zero = w[0] - w[0]
    for n in range(rows):
        for g in range(groups):
            lo, hi, r = g * k, (g + 1) * k, rstd[n, g]
            gr = zero  # in x's dtype: a float64 sum of float32 terms costs a conversion per entry
            if p == 1:  # features: a channel per entry, accumulated in place
                gyb, xb, sb = gy[n, lo:hi], x[n, lo:hi], s[n, lo:hi]
                wb, aw, av, ab = w[lo:hi], gw[lo:hi], gv[lo:hi], gb[lo:hi]
                for j in range(k):
                    xj, sj, gj = xb[j], sb[j], gyb[j]
                    xs = xj * sj
                    gyw = gj * wb[j]
                    gr += gyw * xs
                    aw[j] += gj * xs * r
                    ab[j] += gj
                    av[j] += gyw * r * xj * xj * (sj - sj * sj)
            else:  # feature maps: each channel's sums over its positions
                for c in range(g * cg, (g + 1) * cg):
                    gyc, xc, sc = gy[n, c * p:(c + 1) * p], x[n, c * p:(c + 1) * p], s[n, c * p:(c + 1) * p]
                    sw, sv, sbias = zero, zero, zero
                    for i in range(p):
                        xi, si, gi = xc[i], sc[i], gyc[i]
                        xs = xi * si
                        sw += gi * xs
                        sbias += gi
                        sv += gi * xi * xi * (si - si * si)
                    gr += w[c] * sw
                    gw[c] += sw * r
                    gb[c] += sbias
                    gv[c] += sv * w[c] * r
            coef[0] = -gr * r * r * r / k
            cf, mu = coef[0], mean[n, g]
            if p == 1:
                gyb, xb, sb, gxb, wb, vb = gy[n, lo:hi], x[n, lo:hi], s[n, lo:hi], gx[n, lo:hi], w[lo:hi], v[lo:hi]
                for j in range(k):
                    xj, sj = xb[j], sb[j]
                    gj = gyb[j] * wb[j] * r
                    gxb[j] = gj * (sj + vb[j] * xj * (sj - sj * sj)) + cf * (xj - mu)
            else:
                for c in range(g * cg, (g + 1) * cg):
                    gyc, xc, sc, gxc = gy[n, c * p:(c + 1) * p], x[n, c * p:(c + 1) * p], s[n, c * p:(c + 1) * p], \
                        gx[n, c * p:(c + 1) * p]
                    rw, vc = r * w[c], v[c]
                    for i in range(p):
                        xi, si = xc[i], sc[i]
                        gxc[i] = gyc[i] * rw * (si + vc * xi * (si - si * si)) + cf * (xi - mu)
    return gx, grads


# 2x2 maps, a CNN's last (digits' 8x8 after two poolings): B0's loops there run a constant 4 positions, which LLVM
# unrolls and vectorizes across channels (a runtime 4 left loops of 4 scalar turns per channel: the per-(n, c) sums
# of (1024, 64, 2, 2) took 138 µs as against 18; the kernels' forward 812 -> 172 µs, backward 1104 -> 275). Constant
# 2 and 3 gain as much, 8 half as much, 9 and 16 lose (2-3x slower); each constant compiles the kernels once more,
# so only the common one is specialized.
SPECIALIZED_POSITIONS = 4
# Other maps of fewer positions than these (3x3, 4x4, 5x5, ...) run B0's elementwise loops over whole rows, the
# parameters repeated over their positions, since a loop over a channel's few positions is scalar code. A/B in one
# process, 2026-12-04, µs: (1024, 64, 3, 3) forward 639 -> 470, backward 1340 -> 852 (-> 457 with the backward's
# second pass vectorized); (256, 64, 4, 4) backward 248 -> 203 but forward 88 -> 114; (128, 32, 5, 5) backward
# 102 -> 77, forward 37 -> 42; at 64 positions rows lose both ways (backward 32 against 24).
ROW_POSITIONS = 16  # the forward's
BACKWARD_ROW_POSITIONS = 32


@njit(cache=True, fastmath=FASTMATH, error_model=ERROR_MODEL)
def b0_forward(x, params, running_var, eps, momentum, train):
    """y as above for x (N, C, P), params (3, C) v, γ, β; returns y, stats (2, N, C): mean_nc and std_nc (= b_nc),
    and per_c (3, C): the batch's mean_c and var_c (in eval 0 and the running variance), a. In training the
    running variance moves to the batch's in place, by `momentum` (x's dtype, as torch's lerp_)."""
    rows, channels, p = x.shape
    y = np.empty_like(x)
    stats, per_c = np.empty((2, rows, channels), x.dtype), np.empty((3, channels), x.dtype)
    x2, y2 = x.reshape((rows, channels * p)), y.reshape((rows, channels * p))
    v, w, b, mean_nc, std_nc = params[0], params[1], params[2], stats[0], stats[1]
    mean_c, var_c, a = per_c[0], per_c[1], per_c[2]
    if p == SPECIALIZED_POSITIONS:
        _b0_statistics(x2, SPECIALIZED_POSITIONS, running_var, eps, train, mean_nc, std_nc, mean_c, var_c, a)
        _b0_output(x2, SPECIALIZED_POSITIONS, v, w, b, y2, std_nc, a)
    else:
        _b0_statistics(x2, p, running_var, eps, train, mean_nc, std_nc, mean_c, var_c, a)
        if p < ROW_POSITIONS:
            _b0_output_rows(x2, p, v, w, b, y2, std_nc, a)
        else:
            _b0_output(x2, p, v, w, b, y2, std_nc, a)
    if train:
        for c in range(channels):
            running_var[c] += momentum * (var_c[c] - running_var[c])
    return y, stats, per_c


@njit(fastmath=FASTMATH, error_model=ERROR_MODEL, inline="always")
def _b0_statistics(x, p, running_var, eps, train, mean_nc, std_nc, mean_c, var_c, a):
    """mean_nc, std_nc = b_nc, and per channel mean_c, var_c and a, of x (N, C·P); inlined (as every _b0_* is)
    so that a constant p reaches LLVM. Loops run channels innermost where they can (the channels' statistics
    over the batch accumulate row by row, vectorized across channels). The batch variance is the law of total
    variance over the examples' (exact, and stable)."""
    rows, channels = mean_nc.shape
    per_p, zero = in_dtype(1.0 / p, x), in_dtype(0.0, x)
    for n in range(rows):
        xr, mr, sr = x[n], mean_nc[n], std_nc[n]  # 1-D rows: contiguous loads (2-D indexing compiled to gathers)
        for c in range(channels):
            t = zero
            for i in range(p):
                t += xr[c * p + i]
            mu = t * per_p
            q = zero
            for i in range(p):
                d = xr[c * p + i] - mu
                q += d * d
            mr[c], sr[c] = mu, q * per_p  # sr the variance for now
    if train:
        mean_c[:], var_c[:] = 0.0, 0.0
        for n in range(rows):
            mean_c += mean_nc[n]
        mean_c /= rows
        for n in range(rows):
            mr, sr = mean_nc[n], std_nc[n]
            for c in range(channels):
                d = mr[c] - mean_c[c]
                var_c[c] += sr[c] + d * d
        var_c /= rows
        a[:] = np.sqrt(var_c + eps)
    else:  # the batch's statistics unused; written all the same, as the backward reads them (times 0)
        mean_c[:], var_c[:] = 0.0, running_var
        a[:] = np.sqrt(running_var + eps)
    for n in range(rows):
        sr = std_nc[n]
        for c in range(channels):
            sr[c] = np.sqrt(sr[c] + eps)


@njit(fastmath=FASTMATH, error_model=ERROR_MODEL, inline="always")
def _b0_output(x, p, v, w, b, y, std_nc, a):
    """y, a channel's positions at a time (from 16 positions on, or a constant p)."""
    rows, channels = std_nc.shape
    for n in range(rows):
        xr, yr, sr = x[n], y[n], std_nc[n]
        for c in range(channels):
            ac, bn, vc, wc, bc = a[c], sr[c], v[c], w[c], b[c]
            for i in range(p):
                xi = xr[c * p + i]
                t = vc * xi + bn
                d = ac if ac > t else t
                yr[c * p + i] = xi / d * wc + bc


@njit(fastmath=FASTMATH, error_model=ERROR_MODEL, inline="always")
def _b0_output_rows(x, p, v, w, b, y, std_nc, a):
    """y in whole-row loops, the parameters repeated over their positions (config.per_entry), b_nc row by row."""
    rows, channels = std_nc.shape
    ve, we, be, ae = per_entry(v, p), per_entry(w, p), per_entry(b, p), per_entry(a, p)
    bne = np.empty(channels * p, x.dtype)
    for n in range(rows):
        xr, yr = x[n], y[n]
        repeat_into(std_nc[n], p, bne)
        for j in range(channels * p):
            xi = xr[j]
            t = ve[j] * xi + bne[j]
            d = ae[j] if ae[j] > t else t
            yr[j] = xi / d * we[j] + be[j]


@njit(cache=True, fastmath=FASTMATH, error_model=ERROR_MODEL)
def b0_backward(gy, x, params, stats, per_c, train):
    """gx (N, C, P) and the parameters' gradients (3, C), in params' order, from b0_forward's stats and per_c.
    d = max(a, v x + b): ∂L/∂d = -∂L/∂y γ x / d², split between its two sides as torch.maximum does (all to the
    larger, half each on a tie); a and b_nc pass it on to x through the variances: ∂a/∂x = (x - μ_c) / (a N P),
    ∂b_nc/∂x = (x - μ_nc) / (b_nc P)."""
    rows, channels, p = x.shape
    shape = (rows, channels * p)
    gx, grads = np.empty_like(x), np.zeros((3, channels), x.dtype)
    ga, gstd = np.zeros(channels, x.dtype), np.empty((rows, channels), x.dtype)  # ∂L/∂a, ∂L/∂b_nc
    half = in_dtype(0.5, x)
    g2, x2, gx2 = gy.reshape(shape), x.reshape(shape), gx.reshape(shape)
    v, w, gv, gw, gb = params[0], params[1], grads[0], grads[1], grads[2]
    if p == SPECIALIZED_POSITIONS:
        _b0_backward(g2, x2, SPECIALIZED_POSITIONS, v, w, stats[0], stats[1], per_c[0], per_c[2], train, half, gx2,
                     gv, gw, gb, ga, gstd)
    elif p < BACKWARD_ROW_POSITIONS:
        _b0_backward_rows(g2, x2, p, v, w, stats[0], stats[1], per_c[0], per_c[2], train, half, gx2, gv, gw, gb, ga,
                          gstd)
    else:
        _b0_backward(g2, x2, p, v, w, stats[0], stats[1], per_c[0], per_c[2], train, half, gx2, gv, gw, gb, ga, gstd)
    return gx, grads


@njit(fastmath=FASTMATH, error_model=ERROR_MODEL, inline="always")
def _b0_backward(gy, x, p, v, w, mean_nc, std_nc, mean_c, a, train, half, gx, gv, gw, gb, ga, gstd):
    """b0_backward on (N, C·P) arrays, a channel's positions at a time (from 32 positions on, or a constant p)."""
    rows, channels = mean_nc.shape
    zero = half - half
    one = half + half
    for n in range(rows):
        xr, gr, sr, kr = x[n], gy[n], std_nc[n], gstd[n]
        for c in range(channels):
            ac, bn, vc, wc = a[c], sr[c], v[c], w[c]
            sw, sb, sa, sn, sv = zero, zero, zero, zero, zero
            for i in range(p):
                xi, gi = xr[c * p + i], gr[c * p + i]
                t = vc * xi + bn
                m = one if t > ac else zero  # the share of v x + b
                m = half if t == ac else m
                d = ac if ac > t else t
                u = xi / d
                gd = -gi * wc * u / d
                sw += gi * u
                sb += gi
                sa += gd * (one - m)
                sn += gd * m
                sv += gd * m * xi
            gw[c] += sw
            gb[c] += sb
            ga[c] += sa
            gv[c] += sv
            kr[c] = sn / (bn * p)  # the factor of (x - μ_nc), kept in x's dtype (as the loop below is)
    if train:
        ga /= a * (rows * p)
    else:
        ga[:] = zero
    for n in range(rows):
        xr, gr, gxr, sr, kr, mr = x[n], gy[n], gx[n], std_nc[n], gstd[n], mean_nc[n]
        for c in range(channels):
            ac, bn, vc, wc = a[c], sr[c], v[c], w[c]
            ka, kb, mc, mn = ga[c], kr[c], mean_c[c], mr[c]
            for i in range(p):
                xi = xr[c * p + i]
                t = vc * xi + bn
                m = one if t > ac else zero
                m = half if t == ac else m
                d = ac if ac > t else t
                gu = gr[c * p + i] * wc / d
                gxr[c * p + i] = gu - gu * xi / d * m * vc + ka * (xi - mc) + kb * (xi - mn)



@njit(fastmath=FASTMATH, error_model=ERROR_MODEL, inline="always")
def _b0_backward_rows(gy, x, p, v, w, mean_nc, std_nc, mean_c, a, train, half, gx, gv, gw, gb, ga, gstd):
    """_b0_backward in whole-row loops (fewer than 32 positions): the sums over the batch accumulate entry by
    entry and fold to channels at the end; only ∂L/∂b_nc's is summed per (n, c), from a row of its terms."""
    rows, channels = mean_nc.shape
    length = channels * p
    zero = half - half
    one = half + half
    ve, we, ae = per_entry(v, p), per_entry(w, p), per_entry(a, p)
    acc = np.zeros((4, length), x.dtype)  # Σ_n, entry by entry: of γ's, β's, a's and v's terms
    swe, sbe, sae, sve = acc[0], acc[1], acc[2], acc[3]
    bne, sne = np.empty(length, x.dtype), np.empty(length, x.dtype)
    for n in range(rows):
        xr, gr, sr, kr = x[n], gy[n], std_nc[n], gstd[n]
        repeat_into(sr, p, bne)
        for j in range(length):
            xi, gi, ac = xr[j], gr[j], ae[j]
            t = ve[j] * xi + bne[j]
            m = one if t > ac else zero  # the share of v x + b
            m = half if t == ac else m
            rd = one / (ac if ac > t else t)
            u = xi * rd
            gd = -gi * we[j] * u * rd
            swe[j] += gi * u
            sbe[j] += gi
            sae[j] += gd * (one - m)
            sne[j] = gd * m
            sve[j] += gd * m * xi
        for c in range(channels):
            sn = zero
            for i in range(p):
                sn += sne[c * p + i]
            kr[c] = sn / (sr[c] * p)  # the factor of (x - μ_nc), kept in x's dtype (as the loop below is)
    for k, out in enumerate((gw, gb, ga, gv)):
        fold(acc[k], out)
    if train:
        ga /= a * (rows * p)
    else:
        ga[:] = zero
    # the variances' terms ∂a (x - μ_c) + ∂b_nc (x - μ_nc) as k1 x - k0, per (n, c): fewer arrays in the loop below
    # (LLVM vectorizes a loop only while the overlap checks between its arrays stay few)
    k1e, k0e = np.empty(length, x.dtype), np.empty(length, x.dtype)
    for n in range(rows):
        xr, gr, gxr, sr, kr, mr = x[n], gy[n], gx[n], std_nc[n], gstd[n], mean_nc[n]
        for c in range(channels):
            k1, k0, bn = ga[c] + kr[c], ga[c] * mean_c[c] + kr[c] * mr[c], sr[c]
            for i in range(p):
                k1e[c * p + i], k0e[c * p + i], bne[c * p + i] = k1, k0, bn
        for j in range(length):
            xi, ac = xr[j], ae[j]
            t = ve[j] * xi + bne[j]
            m = one if t > ac else zero
            m = half if t == ac else m
            rd = one / (ac if ac > t else t)  # one division, then products: a vector division costs several
            gu = gr[j] * we[j] * rd
            gxr[j] = gu - gu * xi * rd * m * ve[j] + k1e[j] * xi - k0e[j]


def s0_reference(x, v, w, b, groups, p, eps):
    """y and s = σ(v x)."""
    rows, length = x.shape
    s = 1 / (1 + np.exp(-np.repeat(v, p) * x))
    blocks = x.reshape(rows, groups, -1)
    r = 1 / np.sqrt(blocks.var(axis=2, keepdims=True) + eps)
    return ((x * s).reshape(rows, groups, -1) * r).reshape(rows, length) * np.repeat(w, p) + np.repeat(b, p), s


def b0_reference(x, v, w, b, eps, running_var=None):
    inst = x.var(axis=2, keepdims=True)
    var = x.var(axis=(0, 2)) if running_var is None else running_var
    den = np.maximum(np.sqrt(var + eps)[None, :, None], v[None, :, None] * x + np.sqrt(inst + eps))
    return x / den * w[None, :, None] + b[None, :, None]
