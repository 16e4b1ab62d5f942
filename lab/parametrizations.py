"""How a model's scales follow its width (and depth): SP, NTK, μP and depth-μP by name.

A parametrization is applied once, to a model built by `trainlab.models` right after its initializer,
as three things: a rescaling of the initial weights, multipliers in the forward pass (a pre-hook that
scales a layer's input, an attention's `qk_scale`, a residual branch's `branch_scale`) and per-parameter
learning-rate multipliers, which the run's optimizer carries in its param groups (`lr_mult`, `wd_mult`).
What it did is kept on the model as `model.trainlab_parametrization` (an `Applied`).

μP follows "Tensor Programs V" (Yang et al. 2022) in the form of its Table 8, which is what the `mup`
package implements: every width is measured against the same model built at `base_width`, so at the
base width μP is SP. For a parameter whose shape differs from the base in two dimensions (a hidden
weight), Adam-like lr ÷ fan-in multiplier and SGD lr × fan-out/fan-in; in one dimension (input
weights, biases, norm gains, embeddings) SGD lr × that multiplier; the read-out (the Linear named
`out`) gets a 1/width multiplier on its input and its initial weights and bias × sqrt(width
multiplier); every other layer's bias × sqrt(fan-in multiplier). Weight decay goes the other way, so
that lr × decay stays as at the base (as `mup.MuAdam`/`MuSGD` do). Attention scores use 1/d_head
scaled to the base: qk_scale = sqrt(base d_head)/d_head. In effective terms this is Table 3's μP
(tested against it): output weights' init variance ∝ 1/fan_in², hidden SGD lr constant, Adam lr ∝
1/fan_in, and so on.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from torch import nn

from .registry import Registry

parametrizations = Registry("parametrization")

# mup's two families (mup/optim.py): an Adam-like update normalizes the gradient entrywise, an SGD-like one
# is linear in it. Optimizers with layer-wise trust ratios, their own per-shape scaling (Muon, LAMB, LARS)
# or their own groups are neither: μP's multipliers are not defined for them, and they are refused.
SGD_LIKE = frozenset({"sgd", "sgdw", "asgd", "asgd_po", "accsgd", "qhm", "aggmo", "pid"})
ADAM_LIKE = frozenset({"adam", "adamw", "nadam", "radam", "radam_po", "adamax", "adamax_po", "rmsprop", "adagrad",
                       "adabelief", "yogi", "laprop", "adopt", "ademamix", "simplifiedademamix", "stableadamw", "lion",
                       "tiger", "signsgd", "qhadam", "diffgrad", "adamod", "grokfastadamw"})


@dataclass(frozen=True)
class ParamInfo:
    """What the registry knows of a parametrization (an entry's `meta`)."""

    needs_base: bool       # measured against the same model at base_width (base_width required)
    per_layer_lr: bool     # the optimizer's groups carry lr multipliers (only SGD-/Adam-like optimizers)


@dataclass(frozen=True)
class Scaling:
    """One parameter's lr multiplier under each optimizer family."""

    sgd: float = 1.0
    adam: float = 1.0


@dataclass
class Applied:
    """What a parametrization did to a model: its name, the per-parameter lr multipliers (by parameter
    name; absent means 1) and the residual branches' count L (depth-μP)."""

    name: str
    per_layer_lr: bool = False
    scalings: dict[str, Scaling] = field(default_factory=dict)
    branches: int = 0


class InputScale:
    """A forward pre-hook multiplying a layer's input by `factor` (for a Linear: W(cx) + b, as mup's MuReadout)."""

    def __init__(self, factor: float):
        self.factor = float(factor)

    def __call__(self, module: nn.Module, args: tuple):
        return (args[0] * self.factor, *args[1:])

    def __repr__(self) -> str:
        return f"InputScale({self.factor:g})"


def input_scale(module: nn.Module) -> float:
    """The product of the InputScale hooks on `module` (1 when none)."""
    return math.prod(h.factor for h in module._forward_pre_hooks.values() if isinstance(h, InputScale))


def family(optimizer: str) -> str:
    """"sgd" or "adam": which of μP's lr rules an optimizer follows; others refused naming both lists."""
    if optimizer in SGD_LIKE:
        return "sgd"
    if optimizer in ADAM_LIKE:
        return "adam"
    raise ValueError(f"optimizer={optimizer!r} does not go with a μP parametrization: its per-layer learning rates are "
                     f"defined for SGD-like optimizers ({', '.join(sorted(SGD_LIKE))}) and Adam-like ones "
                     f"({', '.join(sorted(ADAM_LIKE))}); use one of those, or parametrization='sp' or 'ntk'")


def multipliers(model: nn.Module, optimizer: str) -> dict[str, tuple[float, float]] | None:
    """{parameter name: (lr multiplier, weight-decay multiplier)} the optimizer's groups carry for `model`, or
    None when there are none (SP, NTK, a model of the user's own): the parametrization's times the model's own
    (`model.trainlab_lr_mult`, by parameter name). Refuses an optimizer μP has no rule for."""
    applied = getattr(model, "trainlab_parametrization", None)
    own = getattr(model, "trainlab_lr_mult", {})  # the model's own (resmlp's ends_lr_mult): any optimizer's
    per_layer = applied is not None and applied.per_layer_lr
    if not per_layer and not own:
        return None
    kind = family(optimizer) if per_layer else None
    if own and optimizer not in SGD_LIKE | ADAM_LIKE:
        raise ValueError(f"optimizer={optimizer!r} does not go with the model's own lr multipliers (resmlp's "
                         f"ends_lr_mult): it builds its own parameter groups or scales each layer itself; use an "
                         f"SGD-like ({', '.join(sorted(SGD_LIKE))}) or Adam-like optimizer, or ends_lr_mult=1")
    out = {}
    for name, _ in model.named_parameters():
        s = applied.scalings.get(name) if per_layer else None
        m = (1.0 if s is None else getattr(s, kind)) * own.get(name, 1.0)
        out[name] = (m, 1.0 / m)
    return None if all(v == (1.0, 1.0) for v in out.values()) else out


# ---- the entries -------------------------------------------------------------------------------
@parametrizations.register("sp", meta=ParamInfo(needs_base=False, per_layer_lr=False))
def _sp(model: nn.Module, base: nn.Module | None) -> Applied:
    """Standard parametrization: the initializer's weights, one lr for every layer."""
    return Applied("sp")


@parametrizations.register("ntk", meta=ParamInfo(needs_base=False, per_layer_lr=False))
def _ntk(model: nn.Module, base: nn.Module | None) -> Applied:
    """NTK parametrization (Jacot et al. 2018): W = w/sqrt(fan_in) with w stored at sqrt(fan_in) times the
    initializer's scale, for every Linear and convolution (biases as they are); the same lr for all w.
    The network at init is the initializer's; its gradients, and so its training, are not. base_width is
    not used."""
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd)):
            fan_in = m.weight[0].numel()
            m.weight.data.mul_(math.sqrt(fan_in))
            m.register_forward_pre_hook(InputScale(1.0 / math.sqrt(fan_in)))
    return Applied("ntk")


def _mup_scalings(model: nn.Module, base: nn.Module) -> tuple[dict[str, Scaling], dict[str, list[float]]]:
    """Per-parameter lr multipliers (mup's rules) and each parameter's per-dimension width multipliers."""
    base_shapes = {n: tuple(p.shape) for n, p in base.named_parameters()}
    scalings, mults = {}, {}
    for name, p in model.named_parameters():
        b = base_shapes.get(name)
        if b is None or len(b) != p.ndim:
            raise ValueError(f"μP: parameter {name!r} {tuple(p.shape)} has no counterpart in the model at base width "
                             f"({b}); the model's structure must not change with its width")
        mult = [s / bs for s, bs in zip(p.shape, b)]
        inf = [i for i, m in enumerate(mult) if m != 1.0]
        if len(inf) > 2:
            raise ValueError(f"μP: parameter {name!r} scales with width in {len(inf)} dimensions; at most 2 are defined")
        main = mult[inf[-1]] if inf else 1.0  # mup's InfShape.width_mult: the last dimension that scales
        if len(inf) == 2:  # a hidden weight (fan_out, fan_in, ...)
            scalings[name] = Scaling(sgd=mult[0] / mult[1], adam=1.0 / main)
        elif len(inf) == 1:  # input weights, biases, gains, embeddings
            scalings[name] = Scaling(sgd=main, adam=1.0)
        mults[name] = mult
    return scalings, mults


def _mup(model: nn.Module, base: nn.Module, name: str = "mup") -> Applied:
    modules = dict(model.named_modules())
    out = modules.get("out")
    if not isinstance(out, nn.Linear):
        raise ValueError(f"parametrization={name!r} needs the model's read-out to be an nn.Linear named 'out'")
    scalings, mults = _mup_scalings(model, base)
    base_modules = dict(base.named_modules())
    for mname, m in modules.items():
        if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd)):
            fan_in_mult = mults[f"{mname}.weight"][1]
            if m is out:
                # mup's MuReadout: input / width_mult, weights and bias x sqrt(width_mult) (set_base_shapes)
                m.weight.data.mul_(math.sqrt(fan_in_mult))
                if m.bias is not None:
                    m.bias.data.mul_(math.sqrt(fan_in_mult))
                m.register_forward_pre_hook(InputScale(1.0 / fan_in_mult))
            elif m.bias is not None:
                m.bias.data.mul_(math.sqrt(fan_in_mult))  # mup's rescale_linear_bias
        if hasattr(m, "qk_scale"):
            # μP's attention: 1/d_head instead of 1/sqrt(d_head), equal to SP's at the base d_head
            base_qk = float(base_modules[mname].qk_scale)
            m.qk_scale = float(m.qk_scale) ** 2 / base_qk
    return Applied(name, per_layer_lr=True, scalings=scalings)


@parametrizations.register("mup", meta=ParamInfo(needs_base=True, per_layer_lr=True))
def _mup_entry(model: nn.Module, base: nn.Module) -> Applied:
    """μP (Yang et al. 2022, Tensor Programs V): per-layer init, a 1/width read-out and per-layer lrs, measured
    against the model at base_width, so that the best lr found at the base holds at every width."""
    return _mup(model, base)


@parametrizations.register("depth_mup", meta=ParamInfo(needs_base=True, per_layer_lr=True))
def _depth_mup(model: nn.Module, base: nn.Module) -> Applied:
    """Depth-μP: μP with every residual branch scaled by 1/sqrt(L), L the number of branches (Bordelon et al.
    2023, "Depthwise Hyperparameter Transfer in Residual Networks"), and Adam-like lrs of the branches'
    parameters × 1/sqrt(L) (Yang et al. 2023, Tensor Programs VI); SGD lrs as in μP."""
    branches = [(n, m) for n, m in model.named_modules() if hasattr(m, "branch_scale")]
    if not branches:
        raise ValueError("parametrization='depth_mup' scales residual branches, and this model has none: use a "
                         "residual model ('resmlp') or parametrization='mup'")
    L = len(branches)
    scale = 1.0 / math.sqrt(L)
    own = {float(m.branch_scale) for _, m in branches} - {1.0, scale}
    if own:
        raise ValueError(f"parametrization='depth_mup' sets each residual branch's scale to 1/sqrt(L) = {scale:g}; the "
                         f"model scales them by {sorted(own)[0]:g} itself (its branch option): use branch='1' or "
                         f"'1/sqrt(L)', or parametrization='mup' to keep the model's own")
    applied = _mup(model, base, "depth_mup")
    prefixes = tuple(f"{n}." for n, _ in branches)
    for _, m in branches:
        m.branch_scale = scale
    for pname, _ in model.named_parameters():
        if pname.startswith(prefixes):
            s = applied.scalings.get(pname, Scaling())
            applied.scalings[pname] = Scaling(sgd=s.sgd, adam=s.adam * scale)
    applied.branches = L
    return applied


def apply(name: str, model: nn.Module, base: nn.Module | None = None) -> Applied:
    """Apply parametrization `name` to `model` (in place; `base`: the same model at the base width, for
    those that need it) and keep the record on the model as `model.trainlab_parametrization`."""
    entry = parametrizations[name]
    if entry.meta.needs_base and base is None:
        raise ValueError(f"parametrization={name!r} needs base_width: the width at which it equals SP and from "
                         f"which the lr transfers (e.g. base_width=64)")
    applied = entry.build(model, base)
    model.trainlab_parametrization = applied
    return applied
