"""Models by name (an MLP and a small CNN), each with a normalization and an initializer by name."""
from __future__ import annotations

from collections import OrderedDict

import param
import torch
from torch import nn

from .data import Data
from .functional import eval_mode
from .inits import inits
from .norms import norms
from .registry import LogInteger, Registry

models = Registry("model")

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU, "linear": nn.Identity}

_common = dict(
    activation=param.Selector(default="relu", objects=list(ACTIVATIONS), doc="nonlinearity between layers"),
    norm=param.Selector(default="none", objects=norms.names(), doc="normalization after each hidden layer"),
    init=param.Selector(default="default", objects=inits.names(), doc="weight initialization"),
)


@models.register(
    "mlp",
    width=LogInteger(128, bounds=(1, None), softbounds=(2, 1024), doc="units per hidden layer"),
    depth=param.Integer(2, bounds=(0, None), softbounds=(0, 8), doc="number of hidden layers"),
    **_common,
)
def mlp(data: Data, width=128, depth=2, activation="relu", norm="none", init="default") -> nn.Module:
    """A multilayer perceptron: depth x (linear, norm, activation), then a linear read-out."""
    layers: dict[str, nn.Module] = {"flatten": nn.Flatten()}
    fan_in = data.n_features
    for i in range(1, depth + 1):  # named, so per-layer columns read "grad_norm/fc1", not "grad_norm/1"
        layers[f"fc{i}"] = nn.Linear(fan_in, width)
        layers[f"norm{i}"] = norms.build(norm, width, 1)
        layers[f"act{i}"] = ACTIVATIONS[activation]()
        fan_in = width
    layers["out"] = nn.Linear(fan_in, data.n_out)
    model = nn.Sequential(OrderedDict(layers))
    inits.build(init, model, activation)
    return model


@models.register(
    "cnn",
    channels=LogInteger(16, bounds=(1, None), softbounds=(2, 128), doc="channels of the first convolution"),
    **_common,
)
def cnn(data: Data, channels=16, activation="relu", norm="none", init="default") -> nn.Module:
    """Two 3x3 convolutions (c, 2c channels), a 2x2 max-pool and a linear read-out; for image data."""
    if data.image_shape is None:
        raise ValueError(f"cnn needs image data (digits, or a Dataset of images); {data.name!r} has none. Use model='mlp'.")
    c_in, h, w = data.image_shape
    act = ACTIVATIONS[activation]
    model = nn.Sequential(OrderedDict(
        unflatten=nn.Unflatten(1, data.image_shape) if data.X is not None and data.X.ndim == 2 else nn.Identity(),
        conv1=nn.Conv2d(c_in, channels, 3, padding=1), norm1=norms.build(norm, channels, 2), act1=act(),
        conv2=nn.Conv2d(channels, 2 * channels, 3, padding=1), norm2=norms.build(norm, 2 * channels, 2), act2=act(),
        pool=nn.MaxPool2d(2),
        flatten=nn.Flatten(),
        out=nn.Linear(2 * channels * (h // 2) * (w // 2), data.n_out),
    ))
    inits.build(init, model, activation)
    return model


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
