"""N:M and block masks from scores (|w| by default).

N:M groups run along the input dimension: a Linear's rows, a conv's output channel flattened over
in_channels x kh x kw (torch.ao's WeightNormSparsifier with sparse_block_shape=(1, M) works on 2-D
weights only; on the flattened conv weight its masks equal these). Blocks are (bh, bw) tiles of the
same 2-D view, scored by their L2 norm.
"""
from __future__ import annotations

import torch



def as_rows(t: torch.Tensor) -> torch.Tensor:
    """The 2-D (out, in * kernel) view N:M groups and blocks are taken in."""
    return t.reshape(t.shape[0], -1) if t.ndim > 1 else t.reshape(1, -1)


def check_nm(n, m, shape, name: str = "weight") -> None:
    """A clear error for N > M, M not dividing the layer's input size, or not whole numbers."""
    for k, v in (("n", n), ("m", m)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError(f"{k}={v!r} rejected for N:M masks: a whole number")
    if m < 1 or n < 0 or n > m:
        raise ValueError(f"n={n}, m={m} rejected for N:M masks: 0 <= N <= M and M >= 1 (N > M keeps more than a group)")
    cols = int(torch.Size(shape).numel() // shape[0]) if len(shape) > 1 else int(shape[0])
    if cols % m:
        raise ValueError(f"m={m} rejected for {name}: it does not divide the layer's input size {cols} "
                         f"(shape {tuple(shape)}); allowed: a divisor of {cols}")


def nm_mask(weight: torch.Tensor, n: int = 2, m: int = 4, scores: torch.Tensor | None = None) -> torch.Tensor:
    """Bool mask (weight's shape) keeping the n largest |weight| (or `scores`) of every m along the input dimension."""
    from ..kernels.nm import nm_keep  # Numba loads on first use: `import trainlab` stays light

    check_nm(n, m, weight.shape)
    s = (weight.detach().abs() if scores is None else scores.detach()).to("cpu", torch.float64)
    keep = nm_keep(as_rows(s).numpy(), n, m)
    return torch.from_numpy(keep).reshape(weight.shape).to(weight.device)


def nm_mask_torch(weight: torch.Tensor, n: int = 2, m: int = 4) -> torch.Tensor:
    """The vectorized torch reference: topk over reshaped groups (the benchmark's peer)."""
    rows = as_rows(weight.detach().abs())
    groups = rows.reshape(rows.shape[0], -1, m)
    keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(2, groups.topk(n, dim=2).indices, True)
    return keep.reshape(weight.shape)


def check_block(block, shape, name: str = "weight") -> tuple[int, int]:
    if not (isinstance(block, (tuple, list)) and len(block) == 2 and all(isinstance(b, int) and b >= 1 for b in block)):
        raise ValueError(f"block={block!r} rejected: a (rows, cols) pair of whole numbers >= 1")
    rows, cols = shape[0], int(torch.Size(shape).numel() // shape[0])
    if rows % block[0] or cols % block[1]:
        raise ValueError(f"block={tuple(block)} rejected for {name}: it does not tile its {rows} x {cols} view "
                         f"(shape {tuple(shape)})")
    return int(block[0]), int(block[1])


def block_scores(scores: torch.Tensor, block) -> torch.Tensor:
    """(out/bh, in/bw) L2 norms of the scores over each block."""
    bh, bw = block
    rows = as_rows(scores)
    r, c = rows.shape
    return rows.reshape(r // bh, bh, c // bw, bw).pow(2).sum((1, 3)).sqrt()


def expand_blocks(keep: torch.Tensor, block, shape) -> torch.Tensor:
    """A per-block mask spread over its entries, in the weight's shape."""
    bh, bw = block
    return keep.repeat_interleave(bh, 0).repeat_interleave(bw, 1).reshape(shape)
