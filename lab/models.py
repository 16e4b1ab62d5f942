"""Models by name (an MLP, a residual MLP, a small CNN and a tiny transformer), each with a normalization, an
initializer and a parametrization by name.

A builder makes the architecture only; `models.build` then applies the options every model shares, in
one place (`finish`): the initializer (given the run's data, for those that measure on it) and the
parametrization (given the same model built at `base_width`, for μP).
"""
from __future__ import annotations

from collections import OrderedDict

import param
import torch
from torch import nn

from .data import Data
from .functional import eval_mode
from .inits import apply as apply_init
from .inits import inits
from .norms import follow, norms, replaces_activation
from .norms import spec as norm_spec
from .parametrizations import apply as apply_parametrization
from .parametrizations import parametrizations
from .registry import Choice, LogInteger, LogNumber, Registry, option_values
from .transformer import Attention, FeedForward, Layer, Transformer


class ModelRegistry(Registry):
    """Models by name: `build(name, data, **options)` validates the options, builds the architecture and
    applies the shared options (`SHARED`) to it."""

    def build(self, name: str, data: Data, **options) -> nn.Module:
        entry = self[name]
        values = option_values(entry.options(**options))
        shared = {k: values.pop(k) for k in SHARED if k in values}
        return finish(entry, data, values, **shared)


models = ModelRegistry("model")

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU, "linear": nn.Identity}

_common = dict(
    activation=param.Selector(default="relu", objects=list(ACTIVATIONS), doc="nonlinearity between layers"),
    norm=Choice(norms, default="none", doc="normalization after each hidden layer: a name, or (name, {options}) "
                                          "such as ('groupnorm', {'groups': 8})"),
    init=Choice(inits, "default", doc="weight initialization: a name, or (name, {options}) such as "
                                      "('critical', {'C_W': 1.5})"),
    parametrization=param.Selector(default="sp", objects=parametrizations.names(),
                                   doc="how init, multipliers and per-layer lrs scale with width: sp, ntk, mup, "
                                       "depth_mup"),
    base_width=param.Integer(None, allow_None=True, bounds=(1, None),
                             doc="the width at which μP equals SP (its lr transfers from there); needed by mup"),
)
SHARED = ("init", "parametrization", "base_width")  # applied by `finish`, not by the builders
WIDTH_OPTIONS = ("width", "channels", "d_model")  # the option base_width stands for, the first a model declares


def finish(entry, data: Data, arch: dict, init="default", parametrization="sp", base_width=None) -> nn.Module:
    """The model of `entry` with architecture options `arch`, initialized and parametrized."""
    info = parametrizations[parametrization].meta
    width_key = next((k for k in WIDTH_OPTIONS if k in arch), None)
    if info.needs_base:  # refused before anything is built
        if base_width is None:
            raise ValueError(f"parametrization={parametrization!r} needs base_width (the width it equals SP at and "
                             f"transfers its lr from, e.g. base_width=64); none was given")
        if width_key is None:
            raise ValueError(f"parametrization={parametrization!r}: model {entry.name!r} has no width option "
                             f"({', '.join(WIDTH_OPTIONS)}) for base_width to set")
    model = entry.build(data, **arch)
    apply_init(init, model, arch.get("activation", "relu"), data=data)
    base = None
    if info.needs_base:
        with torch.device("meta"):  # shapes only: no memory, no random numbers drawn
            base = entry.build(data, **{**arch, width_key: base_width})
    apply_parametrization(parametrization, model, base)
    return model


@models.register(
    "mlp",
    width=LogInteger(128, bounds=(1, None), softbounds=(2, 1024), doc="units per hidden layer"),
    depth=param.Integer(2, bounds=(0, None), softbounds=(0, 8), doc="number of hidden layers"),
    **_common,
)
def mlp(data: Data, width=128, depth=2, activation="relu", norm="none") -> nn.Module:
    """A multilayer perceptron: depth x (linear, norm, activation), then a linear read-out."""
    _real_valued(data, "mlp")
    layers: dict[str, nn.Module] = {"flatten": nn.Flatten()}
    fan_in = data.n_features
    act = ACTIVATIONS["linear" if replaces_activation(norm) else activation]
    for i in range(1, depth + 1):  # named, so per-layer columns read "grad_norm/fc1", not "grad_norm/1"
        layers[f"fc{i}"], layers[f"norm{i}"] = follow(norm, nn.Linear(fan_in, width), 1, activation, "mlp")
        layers[f"act{i}"] = act()
        fan_in = width
    layers["out"] = nn.Linear(fan_in, data.n_out)
    return nn.Sequential(OrderedDict(layers))


_BRANCH = {"1": lambda L: 1.0, "1/sqrt(L)": lambda L: L**-0.5, "1/L": lambda L: 1.0 / L}


class Residual(nn.Module):
    """x + branch_scale * fc(act(norm(x))): a pre-activation residual branch (Bordelon et al. 2023's form)."""

    def __init__(self, width: int, norm: str, activation: str, branch_scale: float):
        super().__init__()
        name, options = norm_spec(norm)
        self.norm = norms.build(name, width, 1, **options)
        self.act = ACTIVATIONS[activation]()
        self.fc = nn.Linear(width, width)
        self.branch_scale = float(branch_scale)

    def forward(self, x):
        return x + self.branch_scale * self.fc(self.act(self.norm(x)))


@models.register(
    "resmlp",
    width=LogInteger(128, bounds=(1, None), softbounds=(2, 1024), doc="units per residual block"),
    depth=param.Integer(4, bounds=(1, None), softbounds=(1, 32), doc="number of residual blocks L"),
    branch=param.Selector(default="1", objects=list(_BRANCH),
                          doc="each residual branch's multiplier: 1, 1/sqrt(L) (depth-μP) or 1/L"),
    ends_lr_mult=LogNumber(1.0, bounds=(0, None), inclusive_bounds=(False, True), softbounds=(0.01, 100),
                              doc="lr multiplier of the embedding and the read-out: a depth study sweeps the blocks' "
                                  "lr with theirs held fixed"),
    **_common,
)
def resmlp(data: Data, width=128, depth=4, branch="1", ends_lr_mult=1.0, activation="relu",
           norm="none") -> nn.Module:
    """A residual MLP: a linear embedding, L blocks x + s·W act(norm(x)) with s = branch(L), a linear read-out."""
    scale = _BRANCH[branch](depth)
    layers: dict[str, nn.Module] = {"flatten": nn.Flatten(), "inp": nn.Linear(data.n_features, width)}
    for i in range(1, depth + 1):
        layers[f"block{i}"] = Residual(width, norm, activation, scale)
    layers["act"] = ACTIVATIONS[activation]()
    layers["out"] = nn.Linear(width, data.n_out)
    model = nn.Sequential(OrderedDict(layers))
    if ends_lr_mult != 1.0:  # read by parametrizations.multipliers, on top of the parametrization's own
        model.trainlab_lr_mult = {n: float(ends_lr_mult) for n, _ in model.named_parameters()
                                  if n.startswith(("inp.", "out."))}
    return model


@models.register(
    "cnn",
    channels=LogInteger(16, bounds=(1, None), softbounds=(2, 128), doc="channels of the first convolution"),
    **_common,
)
def cnn(data: Data, channels=16, activation="relu", norm="none") -> nn.Module:
    """Two 3x3 convolutions (c, 2c channels), a 2x2 max-pool and a linear read-out; for image data."""
    _real_valued(data, "cnn")
    if data.image_shape is None:
        raise ValueError(f"cnn needs image data (digits, or a Dataset of images); {data.name!r} has none. Use model='mlp'.")
    c_in, h, w = data.image_shape
    act = ACTIVATIONS["linear" if replaces_activation(norm) else activation]
    conv1, norm1 = follow(norm, nn.Conv2d(c_in, channels, 3, padding=1), 2, activation, "cnn")
    conv2, norm2 = follow(norm, nn.Conv2d(channels, 2 * channels, 3, padding=1), 2, activation, "cnn")
    return nn.Sequential(OrderedDict(
        unflatten=nn.Unflatten(1, data.image_shape) if data.X is not None and data.X.ndim == 2 else nn.Identity(),
        conv1=conv1, norm1=norm1, act1=act(),
        conv2=conv2, norm2=norm2, act2=act(),
        pool=nn.MaxPool2d(2),
        flatten=nn.Flatten(),
        out=nn.Linear(2 * channels * (h // 2) * (w // 2), data.n_out),
    ))


PLACEMENTS = ("pre_ln", "post_ln", "pre_rmsnorm", "mix_ln")


@models.register(
    "transformer",
    width=LogInteger(64, bounds=(1, None), softbounds=(8, 512), doc="d_model: features per token"),
    depth=param.Integer(2, bounds=(1, None), softbounds=(1, 12), doc="number of layers (attention + MLP each)"),
    heads=LogInteger(4, bounds=(1, None), softbounds=(1, 16), doc="attention heads; must divide width"),
    placement=param.Selector(default="pre_ln", objects=list(PLACEMENTS),
                             doc="where the norm goes: before each branch (pre), after the residual sum (post), "
                                 "Post-LN in the early layers and Pre-LN in the later ones (mix_ln); "
                                 "pre_rmsnorm is Pre-LN with RMSNorm"),
    mix_fraction=param.Number(0.25, bounds=(0, 1), softbounds=(0, 1), step=0.05,
                              doc="mix_ln: the fraction of layers, from the first, in Post-LN (Li et al. 2024: 0.25)"),
    **{**_common, "norm": Choice(norms, default="layernorm",
                                 doc="the norm at each placement (a name or (name, {options})), per token")},
)
def transformer(data: Data, width=64, depth=2, heads=4, placement="pre_ln", mix_fraction=0.25, activation="relu",
                norm="layernorm") -> nn.Module:
    """A tiny transformer encoder for token data: embeddings, depth x (attention, MLP), the last token read out."""
    if data.vocab is None:
        raise ValueError(f"transformer needs token data (modular_addition, majority); {data.name!r} has real-valued "
                         f"inputs: use model='mlp' or 'cnn'")
    if width % heads:
        raise ValueError(f"heads={heads} rejected for transformer: it must divide width={width}")
    name, options = norm_spec(norm)
    if placement == "pre_rmsnorm":
        if name not in ("layernorm", "rmsnorm"):
            raise ValueError(f"placement='pre_rmsnorm' is Pre-LN with RMSNorm; norm={name!r} contradicts it: use "
                             f"placement='pre_ln' with norm={name!r}")
        name, options = "rmsnorm", {}
    info = norms[name].meta
    if 1 not in info.dims or info.weight is not None:
        why = info.why if 1 not in info.dims else "it standardizes the weight before it, and a transformer's norms sit on the residual stream"
        ok = [e.name for e in norms if 1 in e.meta.dims and e.meta.weight is None]
        raise ValueError(f"norm={name!r} rejected for transformer: {why}; allowed here: {', '.join(ok)}")
    post_layers = {"post_ln": depth, "mix_ln": int(mix_fraction * depth)}.get(placement, 0)

    def make_norm():
        return norms.build(name, width, 1, **options)

    layers = [Layer(Attention(width, heads, make_norm(), i < post_layers),
                    FeedForward(width, ACTIVATIONS[activation](), make_norm(), i < post_layers)) for i in range(depth)]
    final = make_norm() if post_layers < depth else nn.Identity()  # Pre-LN's last layer leaves its sum unnormalized
    return Transformer(data.vocab, data.input_shape[0], data.n_out, width, layers, final)


def _real_valued(data: Data, model: str) -> None:
    if data.vocab is not None:
        raise ValueError(f"{model} takes real-valued inputs; {data.name!r} gives integer tokens: use model='transformer'")


def mse(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean squared error; one target per example may come as (N,) against an (N, 1) output."""
    if out.shape != y.shape and out.numel() == y.numel():
        y = y.reshape(out.shape)  # never let (N, 1) - (N,) broadcast to (N, N)
    return nn.functional.mse_loss(out, y)


def default_loss(task: str):
    """Cross-entropy for class labels, mean squared error for real-valued targets."""
    return nn.functional.cross_entropy if task == "classification" else mse


def check_fits(model: nn.Module, loss_fn, data: Data, device: torch.device) -> None:
    """Fail before any step when the model's output cannot be scored against the labels."""
    xb, yb = data.sample(2)
    xb, yb = xb.to(device), yb.to(device)
    try:  # in eval mode: a train-mode forward would move BatchNorm's running statistics
        with torch.no_grad(), eval_mode(model):
            out = model(xb)
    except Exception as e:
        raise ValueError(f"the model cannot take inputs of shape {tuple(xb.shape)}: {e}") from None
    shapes = f"model output shape {tuple(out.shape)}, labels shape {tuple(yb.shape)}"
    if data.task == "classification" and loss_fn is nn.functional.cross_entropy:
        if out.ndim != 2 or out.shape[1] < data.n_out:
            raise ValueError(
                f"model output does not fit the labels: {shapes}; {data.n_out} classes need an output of "
                f"shape (batch, {data.n_out})"
            )
    elif data.task == "regression" and loss_fn is mse and out.numel() != yb.numel():
        raise ValueError(f"model output does not fit the targets: {shapes}; they must be equal")
    try:
        loss = loss_fn(out, yb)
    except Exception as e:
        raise ValueError(f"the loss cannot compare them: {shapes}: {e}") from None
    if not torch.is_tensor(loss) or loss.numel() != 1:
        raise ValueError(f"the loss must return a scalar; it returned shape {tuple(torch.as_tensor(loss).shape)}")
