"""The edge of chaos (EOC) of a deep network at initialization (Poole et al. 2016, Schoenholz et al. 2017), as
Hayou et al. 2021 ("Robust Pruning at Initialization", ICLR) use it to rescale a network pruned at init.

For y^l = W^l φ(y^{l−1}) + B^l with W_ij ~ N(0, σ_w²/N_{l−1}) and B_i ~ N(0, σ_b²), the pre-activations'
variance follows q^l = σ_b² + σ_w² E[φ(√q^{l−1} Z)²] (Z ~ N(0, 1)), and χ = σ_w² E[φ'(√q* Z)²] at its fixed
point q* says whether correlations and gradients grow (χ > 1, chaos) or fade (χ < 1, order). The EOC is χ = 1:
(σ_b, σ_w) = (0, √2) for ReLU; for tanh and ELU a curve, solved here for the network's σ_b.

On the EOC, q* = σ_b² + E[φ(√q* Z)²] / E[φ'(√q* Z)²]: for a given σ_b that is one equation in q*, solved by
Brent's method (scipy), then σ_w² = 1 / E[φ'(√q* Z)²].
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from torch import nn

#: activation name -> (φ, φ'), on NumPy arrays
ACTIVATIONS = {
    "relu": (lambda x: np.maximum(x, 0.0), lambda x: (x > 0).astype(float)),
    "tanh": (np.tanh, lambda x: 1.0 - np.tanh(x) ** 2),
    "elu": (lambda x: np.where(x > 0, x, np.expm1(np.minimum(x, 0.0))), lambda x: np.where(x > 0, 1.0, np.exp(np.minimum(x, 0.0)))),
    "linear": (lambda x: x, lambda x: np.ones_like(x)),
}
MODULES = {nn.ReLU: "relu", nn.Tanh: "tanh", nn.ELU: "elu", nn.Identity: "linear"}
# E[f(Z)], Z ~ N(0, 1), as Gauss–Legendre on each half-line [0, 10] (ReLU and ELU bend at 0, so one rule across
# it, such as Gauss–Hermite, is only accurate to ~1e-5; either side is smooth). Mass beyond |z| = 10: 1e-23
_X, _V = np.polynomial.legendre.leggauss(96)
_X, _V = 5.0 * (_X + 1.0), 5.0 * _V * np.exp(-(5.0 * (_X + 1.0)) ** 2 / 2) / np.sqrt(2 * np.pi)
_Z, _W = np.concatenate([_X, -_X]), np.concatenate([_V, _V]) / (2 * _V.sum())


def gauss(f, q: float) -> float:
    """E[f(√q Z)], Z ~ N(0, 1)."""
    return float(_W @ f(np.sqrt(max(q, 0.0)) * _Z))


def variance_map(activation: str, q: float, sigma_w2: float, sigma_b2: float) -> float:
    """q^l from q^{l−1}: σ_b² + σ_w² E[φ(√q Z)²]."""
    phi = ACTIVATIONS[_name(activation)][0]
    return sigma_b2 + sigma_w2 * gauss(lambda x: phi(x) ** 2, q)


def chi(activation: str, q: float, sigma_w2: float) -> float:
    """σ_w² E[φ'(√q Z)²]: 1 on the edge of chaos."""
    dphi = ACTIVATIONS[_name(activation)][1]
    return sigma_w2 * gauss(lambda x: dphi(x) ** 2, q)


@lru_cache(maxsize=256)
def edge_of_chaos(activation: str, sigma_b: float = 0.0) -> tuple[float, float]:
    """(σ_w², q*) on the EOC for this activation and bias standard deviation σ_b (q* is 0 when σ_b = 0; for
    ReLU σ_w² = 2 whatever q, which σ_b > 0 then grows without a fixed point)."""
    from scipy.optimize import brentq

    name = _name(activation)
    phi, dphi = ACTIVATIONS[name]
    if name in ("relu", "linear"):  # positively homogeneous: χ does not depend on q
        return 1.0 / gauss(lambda x: dphi(x) ** 2, 1.0), float("nan") if sigma_b > 0 else 0.0
    if sigma_b < 0:
        raise ValueError(f"sigma_b={sigma_b} rejected: a standard deviation >= 0")
    if sigma_b == 0:
        return 1.0 / float(dphi(np.zeros(1))[0] ** 2), 0.0

    def gap(q):  # σ_b²(q) on the EOC, minus the σ_b² asked for
        return q - gauss(lambda x: phi(x) ** 2, q) / gauss(lambda x: dphi(x) ** 2, q) - sigma_b ** 2

    hi = 1.0
    while gap(hi) < 0:
        hi *= 2
        if hi > 1e6:
            raise ValueError(f"no edge of chaos found for {name} at sigma_b={sigma_b}")
    q = brentq(gap, 1e-12, hi, xtol=1e-14, rtol=1e-12)
    return 1.0 / gauss(lambda x: dphi(x) ** 2, q), q


def _name(activation: str) -> str:
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation={activation!r} rejected for the edge of chaos: one of "
                         f"{', '.join(map(repr, ACTIVATIONS))}")
    return activation


def model_activation(model: nn.Module) -> str:
    """The one activation a model uses between its layers (its ReLU/Tanh/ELU modules), by name."""
    found = {MODULES[type(m)] for m in model.modules() if type(m) in MODULES and type(m) is not nn.Identity}
    if len(found) != 1:
        what = f"activations {sorted(found)}" if found else "no ReLU, Tanh or ELU module"
        raise ValueError(f"rescale 'eoc' with activation='auto' needs one activation in the model; it has {what}: "
                         f"give activation= (one of {', '.join(map(repr, ACTIVATIONS))})")
    return found.pop()


def bias_sigma(module: nn.Module) -> float:
    """The layer's σ_b: the root mean square of its bias (0 without one)."""
    b = getattr(module, "bias", None)
    return float(b.detach().double().pow(2).mean().sqrt()) if isinstance(b, torch.Tensor) and b.numel() else 0.0
