"""σ(z) = 1 / (1 + e^{-z}) that LLVM vectorizes inside a Numba loop.

Numba's exp is a call into libm, one element at a time (without Intel's SVML, which is not installed
here). Here e^{-|z|} is Cephes' exp (Moshier), arithmetic only: k = round(t / ln 2), r = t - k ln 2 in
two parts (Cody-Waite), a polynomial (float32) or Padé form (float64) in r, times 2^k built from its
bits. Both tails keep their relative accuracy: σ = 1 / (1 + e) for z ≥ 0 and e / (1 + e) below. Within
3 ulp of the exact value, as torch's is (tests/test_norm_kernels.py checks it against long double).
On its own it takes about torch's sigmoid's time (0.41-0.54 ms against 0.56 ms on 262,144 float32 entries,
2026-12-03, the machine busy); inside a kernel
that passes over the tensor anyway it saves torch's two passes (v x, then σ) and their Python calls.

Call `sigmoid(z)` from a Numba kernel; from Python it is math's. Numba's cache keys a kernel on its own file's
stamp only: after editing this file, delete kernels/__pycache__ (or touch the callers), or they keep the old σ.
"""
from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload

# Not "reassoc" (which the kernels calling this have): it would fold r = t - k C1 - k C2 into t - k (C1 + C2),
# the Cody-Waite split undone (210 ulp in float64 at z = -700). LLVM still inlines these into the loop
# that calls them (each instruction keeps its own flags), and vectorizes it.
_FLAGS = {"nsz", "arcp", "contract"}


def sigmoid(z):
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


@intrinsic
def _pow2(typingctx, k):
    """2^k for a whole-valued float k in the exponent's range, built from its bits: (k + bias) << mantissa.
    Through a 32-bit integer in both precisions, because AVX2 converts floats to int32 eight at a time but
    has no vector conversion to int64: Numba's own int64(k) made LLVM convert lane by lane (9 scalar
    conversions per 8 entries), which took most of σ's time."""
    if not isinstance(k, types.Float):
        return None
    f64 = k.bitwidth == 64
    wide, bias, shift = (ir.IntType(64), 1023, 52) if f64 else (ir.IntType(32), 127, 23)

    def codegen(context, builder, signature, args):
        i = builder.fptosi(args[0], ir.IntType(32))
        if f64:
            i = builder.sext(i, wide)
        bits = builder.shl(builder.add(i, ir.Constant(wide, bias)), ir.Constant(wide, shift))
        return builder.bitcast(bits, context.get_value_type(k))
    return k(k), codegen


@njit(fastmath=_FLAGS)
def _exp_neg32(t):
    """e^{-t} for t ≥ 0 in float32 (Cephes expf); t past 87 gives e^{-87}, σ's tail then 1e-38, not 0."""
    x = -min(t, np.float32(87.0))
    k = np.floor(x * np.float32(1.44269504088896341) + np.float32(0.5))
    r = x - k * np.float32(0.693359375) - k * np.float32(-2.12194440e-4)
    p = (((((np.float32(1.9875691500e-4) * r + np.float32(1.3981999507e-3)) * r + np.float32(8.3334519073e-3)) * r
           + np.float32(4.1665795894e-2)) * r + np.float32(1.6666665459e-1)) * r + np.float32(5.0000001201e-1))
    y = p * (r * r) + r + np.float32(1.0)
    return y * _pow2(k)


@njit(fastmath=_FLAGS)
def _exp_neg64(t):
    """e^{-t} for t ≥ 0 in float64 (Cephes exp); t past 708 gives e^{-708}."""
    x = -min(t, 708.0)
    k = np.floor(x * 1.4426950408889634073599 + 0.5)
    r = x - k * 6.93145751953125e-1 - k * 1.42860682030941723212e-6
    rr = r * r
    p = r * ((1.26177193074810590878e-4 * rr + 3.02994407707441961300e-2) * rr + 9.99999999999999999910e-1)
    q = ((3.00198505138664455042e-6 * rr + 2.52448340349684104192e-3) * rr + 2.27265548208155028766e-1) * rr \
        + 2.00000000000000000009e0
    y = 1.0 + 2.0 * (p / (q - p))
    return y * _pow2(k)


@overload(sigmoid, jit_options={"fastmath": _FLAGS})
def _sigmoid(z):
    if not isinstance(z, types.Float):
        return None
    exp_neg, one = (_exp_neg32, np.float32(1.0)) if z.bitwidth == 32 else (_exp_neg64, 1.0)

    def impl(z):
        e = exp_neg(abs(z))
        d = one / (one + e)
        return d if z >= 0 else e * d  # both computed, one chosen: no branch, so the loop stays vectorized
    return impl
