"""Generated token tasks for the tiny transformer: one class per sequence, learnt on a CPU in seconds.

Inputs are integer token ids, (N, sequence length), with `Data.vocab` tokens; the last token is "="
(the position the model reads its answer from). Nothing is downloaded.
"""
from __future__ import annotations

import param
import torch

from .data import Data, datasets

_SEED = dict(seed=param.Integer(0, bounds=(0, None), doc="seed of the generator and of the split"))


def _split(name: str, X: torch.Tensor, y: torch.Tensor, fraction: float, seed: int, classes: int, vocab: int) -> Data:
    perm = torch.randperm(len(X), generator=torch.Generator().manual_seed(seed))
    k = max(1, min(len(X) - 1, round(fraction * len(X))))
    tr, va = perm[:k], perm[k:]
    return Data(name, X[tr], y[tr], X[va], y[va], task="classification", n_out=classes, vocab=vocab)


@datasets.register(
    "modular_addition",
    p=param.Integer(23, bounds=(2, 200), softbounds=(5, 113), doc="the modulus: tokens 0..p-1 and '='"),
    fraction=param.Number(0.5, bounds=(0, 1), inclusive_bounds=(False, False), softbounds=(0.1, 0.9), step=0.05,
                          doc="fraction of the p² pairs used for training; the rest is validation"),
    **_SEED,
)
def modular_addition(p: int = 23, fraction: float = 0.5, seed: int = 0) -> Data:
    """(a, b, '=') -> (a + b) mod p over all p² pairs (Power et al. 2022's grokking task)."""
    a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    a, b = a.reshape(-1), b.reshape(-1)
    X = torch.stack([a, b, torch.full_like(a, p)], 1)
    return _split("modular_addition", X, (a + b) % p, fraction, seed, classes=p, vocab=p + 1)


@datasets.register(
    "majority",
    n=param.Integer(1000, bounds=(10, None), softbounds=(100, 5000), doc="number of sequences"),
    length=param.Integer(9, bounds=(1, 255), softbounds=(3, 63), doc="bits per sequence (odd: no ties)"),
    **_SEED,
)
def majority(n: int = 1000, length: int = 9, seed: int = 0) -> Data:
    """(bits..., '=') -> 1 if most bits are 1; 80 % for training."""
    if length % 2 == 0:
        raise ValueError(f"length={length} rejected for majority: an odd number of bits (an even one can tie)")
    bits = torch.randint(0, 2, (n, length), generator=torch.Generator().manual_seed(seed))
    X = torch.cat([bits, torch.full((n, 1), 2)], 1)
    return _split("majority", X, (bits.sum(1) * 2 > length).long(), 0.8, seed + 1, classes=2, vocab=3)
