"""Models by name (an MLP, a residual MLP and a small CNN), each with a normalization, an initializer and a
parametrization by name.

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
from .parametrizations import apply as apply_parametrization
from .parametrizations import parametrizations
from .norms import norms
from .registry import Choice, LogInteger, Registry, option_values


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
    norm=param.Selector(default="none", objects=norms.names(), doc="normalization after each hidden layer"),
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
    layers: dict[str, nn.Module] = {"flatten": nn.Flatten()}
    fan_in = data.n_features
    for i in range(1, depth + 1):  # named, so per-layer columns read "grad_norm/fc1", not "grad_norm/1"
        layers[f"fc{i}"] = nn.Linear(fan_in, width)
        layers[f"norm{i}"] = norms.build(norm, width, 1)
        layers[f"act{i}"] = ACTIVATIONS[activation]()
        fan_in = width
    layers["out"] = nn.Linear(fan_in, data.n_out)
    return nn.Sequential(OrderedDict(layers))


_BRANCH = {"1": lambda L: 1.0, "1/sqrt(L)": lambda L: L**-0.5, "1/L": lambda L: 1.0 / L}


class Residual(nn.Module):
    """x + branch_scale * fc(act(norm(x))): a pre-activation residual branch (Bordelon et al. 2023's form)."""

    def __init__(self, width: int, norm: str, activation: str, branch_scale: float):
        super().__init__()
        self.norm = norms.build(norm, width, 1)
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
    **_common,
)
def resmlp(data: Data, width=128, depth=4, branch="1", activation="relu", norm="none") -> nn.Module:
    """A residual MLP: a linear embedding, L blocks x + s·W act(norm(x)) with s = branch(L), a linear read-out."""
    scale = _BRANCH[branch](depth)
    layers: dict[str, nn.Module] = {"flatten": nn.Flatten(), "inp": nn.Linear(data.n_features, width)}
    for i in range(1, depth + 1):
        layers[f"block{i}"] = Residual(width, norm, activation, scale)
    layers["act"] = ACTIVATIONS[activation]()
    layers["out"] = nn.Linear(width, data.n_out)
    return nn.Sequential(OrderedDict(layers))


@models.register(
    "cnn",
    channels=LogInteger(16, bounds=(1, None), softbounds=(2, 128), doc="channels of the first convolution"),
    **_common,
)
def cnn(data: Data, channels=16, activation="relu", norm="none") -> nn.Module:
    """Two 3x3 convolutions (c, 2c channels), a 2x2 max-pool and a linear read-out; for image data."""
    if data.image_shape is None:
        raise ValueError(f"cnn needs image data (digits, or a Dataset of images); {data.name!r} has none. Use model='mlp'.")
    c_in, h, w = data.image_shape
    act = ACTIVATIONS[activation]
    return nn.Sequential(OrderedDict(
        unflatten=nn.Unflatten(1, data.image_shape) if data.X is not None and data.X.ndim == 2 else nn.Identity(),
        conv1=nn.Conv2d(c_in, channels, 3, padding=1), norm1=norms.build(norm, channels, 2), act1=act(),
        conv2=nn.Conv2d(channels, 2 * channels, 3, padding=1), norm2=norms.build(norm, 2 * channels, 2), act2=act(),
        pool=nn.MaxPool2d(2),
        flatten=nn.Flatten(),
        out=nn.Linear(2 * channels * (h // 2) * (w // 2), data.n_out),
    ))


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
