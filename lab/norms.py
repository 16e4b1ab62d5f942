"""Normalization layers by name. The normalization lab adds entries here."""
from __future__ import annotations

from torch import nn

from .registry import Registry

norms = Registry("normalization")


@norms.register("none")
def _none(features: int, dims: int) -> nn.Module:
    """No normalization."""
    return nn.Identity()


@norms.register("batchnorm")
def _batchnorm(features: int, dims: int) -> nn.Module:
    """Batch normalization (Ioffe & Szegedy 2015) over the batch, per feature or channel."""
    return nn.BatchNorm1d(features) if dims == 1 else nn.BatchNorm2d(features)


@norms.register("layernorm")
def _layernorm(features: int, dims: int) -> nn.Module:
    """Layer normalization (Ba et al. 2016); on feature maps, over channels and positions together."""
    # GroupNorm with one group is LayerNorm over (C, H, W) without fixing H and W at build time.
    return nn.LayerNorm(features) if dims == 1 else nn.GroupNorm(1, features)
