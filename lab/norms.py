"""Normalization layers by name: torch's own modules where they exist, the rest from `normlayers`.

An entry builds the layer that follows a Linear (dims 1: features (N, C)) or a Conv (dims 2: feature
maps (N, C, H, W)); its `meta` (a NormInfo) says where it is meaningful and what else it does. The
model builders place every norm through `follow`, the one way: it refuses a norm where it has no
meaning, and applies weight standardization to the layer before the norm when the entry says so.
"""
from __future__ import annotations

from dataclasses import dataclass

import param
from torch import nn

from . import normlayers as L
from .registry import LogInteger, Registry, parse_spec

norms = Registry("normalization")


@dataclass(frozen=True)
class NormInfo:
    """What a norm is besides its layer."""

    dims: tuple[int, ...] = (1, 2)  # where it is meaningful: 1 = features, 2 = feature maps
    why: str = ""  # why not elsewhere, for the error
    weight: str | None = None  # "ws" / "scaled_ws": it standardizes the weight of the layer before it
    activation: bool = False  # a normalization-activation layer: the model leaves out its own activation


_GROUPS = dict(groups=LogInteger(4, bounds=(1, None), softbounds=(1, 32), doc="groups of channels; must divide them"))
_MAPS_ONLY = "it normalizes each channel over positions, and features (N, C) have none"


@norms.register("none", meta=NormInfo())
def _none(features: int, dims: int) -> nn.Module:
    """No normalization."""
    return nn.Identity()


@norms.register("batchnorm", meta=NormInfo())
def _batchnorm(features: int, dims: int) -> nn.Module:
    """Batch normalization (Ioffe & Szegedy 2015) over the batch, per feature or channel."""
    return nn.BatchNorm1d(features) if dims == 1 else nn.BatchNorm2d(features)


@norms.register("layernorm", meta=NormInfo())
def _layernorm(features: int, dims: int) -> nn.Module:
    """Layer normalization (Ba et al. 2016); on feature maps, over channels and positions together."""
    # GroupNorm with one group is LayerNorm over (C, H, W) without fixing H and W at build time.
    return nn.LayerNorm(features) if dims == 1 else nn.GroupNorm(1, features)


@norms.register("rmsnorm", meta=NormInfo())
def _rmsnorm(features: int, dims: int) -> nn.Module:
    """RMSNorm (Zhang & Sennrich 2019): LayerNorm without centering; on feature maps over (C, H, W)."""
    return nn.RMSNorm(features) if dims == 1 else L.RMSNorm2d(features)


@norms.register("groupnorm", meta=NormInfo(), **_GROUPS)
def _groupnorm(features: int, dims: int, groups: int = 4) -> nn.Module:
    """Group normalization (Wu & He 2018): per example, over each group of channels (and positions)."""
    L.check_groups(groups, features, "groupnorm")
    return nn.GroupNorm(groups, features)


@norms.register("instancenorm", meta=NormInfo(dims=(2,), why=_MAPS_ONLY))
def _instancenorm(features: int, dims: int) -> nn.Module:
    """Instance normalization (Ulyanov et al. 2016): per example and channel, over positions."""
    return nn.InstanceNorm2d(features, affine=True)


@norms.register("powernorm", meta=NormInfo(),
                alpha=param.Number(0.9, bounds=(0, 1), inclusive_bounds=(True, False), softbounds=(0.5, 0.999),
                                   step=0.001, doc="decay of the running quadratic mean and of the backward's ν"))
def _powernorm(features: int, dims: int, alpha: float = 0.9) -> nn.Module:
    """PowerNorm (Shen et al. 2020): a running quadratic mean, no centering, an approximate backward."""
    return L.PowerNorm(features, alpha=alpha)


@norms.register("ws_bcn", meta=NormInfo(weight="ws"), **_GROUPS)
def _ws_bcn(features: int, dims: int, groups: int = 4) -> nn.Module:
    """Weight standardization with batch-channel normalization (Qiao et al. 2019): BatchNorm, then GroupNorm."""
    L.check_groups(groups, features, "ws_bcn")
    group_norm = L.FeatureGroupNorm if dims == 1 else nn.GroupNorm
    return nn.Sequential(_batchnorm(features, dims), group_norm(groups, features))


@norms.register("evonorm_b0", meta=NormInfo(dims=(2,), why=_MAPS_ONLY, activation=True))
def _evonorm_b0(features: int, dims: int) -> nn.Module:
    """EvoNorm-B0 (Liu et al. 2020): batch and instance variance together; replaces norm and activation."""
    return L.EvoNormB0(features)


@norms.register("evonorm_s0", meta=NormInfo(activation=True), **_GROUPS)
def _evonorm_s0(features: int, dims: int, groups: int = 4) -> nn.Module:
    """EvoNorm-S0 (Liu et al. 2020): x σ(v x) over the group std; replaces norm and activation."""
    return L.EvoNormS0(features, groups)


@norms.register("scaled_ws", meta=NormInfo(weight="scaled_ws"))
def _scaled_ws(features: int, dims: int) -> nn.Module:
    """Scaled weight standardization (Brock et al. 2021, normalizer-free networks): no norm layer."""
    return nn.Identity()


def spec(norm) -> tuple[str, dict]:
    """(name, options) of a norm setting, the name checked."""
    name, options = parse_spec(norm, "norm")
    norms[name]  # an unknown name lists the valid ones
    return name, options


def follow(norm, layer: nn.Module, dims: int, activation: str, where: str) -> tuple[nn.Module, nn.Module]:
    """(layer, the norm after it) for a Linear (dims 1) or Conv2d (dims 2) `layer` of model `where`.

    A norm not meaningful there is refused, naming it; a weight-standardizing norm returns `layer`
    standardized (scaled WS with the gain of `activation`).
    """
    name, options = spec(norm)
    info = norms[name].meta
    if dims not in info.dims:
        ok = [e.name for e in norms if dims in e.meta.dims]
        raise ValueError(f"norm={name!r} rejected for {where}: {info.why}; allowed here: {', '.join(ok)}")
    features = layer.out_features if dims == 1 else layer.out_channels
    module = norms.build(name, features, dims, **options)
    if info.weight is not None:
        layer = L.standardized(layer, info.weight == "scaled_ws", L.activation_gain(activation))
    return layer, module


def replaces_activation(norm) -> bool:
    """True for a normalization-activation layer (EvoNorm): the model drops its own activation there."""
    return norms[spec(norm)[0]].meta.activation


def batch_dependent(model: nn.Module) -> list[str]:
    """Names of the modules that normalize by the batch's own statistics in training (BatchNorm, EvoNorm-B0):
    a single example has no batch variance (BatchNorm1d would raise, or output zeros)."""
    return [n for n, m in model.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) or getattr(m, "batch_statistics", False)]
