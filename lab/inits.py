"""Weight initializers by name. The initialization lab adds entries here."""
from __future__ import annotations

from torch import nn

from .registry import Registry

inits = Registry("initializer")

# torch.nn.init.calculate_gain has no entry for GELU; ReLU's gain is the usual stand-in.
_GAIN_NAME = {"relu": "relu", "gelu": "relu", "tanh": "tanh", "linear": "linear"}


def _layers(model: nn.Module):
    return [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))]


@inits.register("default")
def _default(model: nn.Module, activation: str) -> None:
    """PyTorch's own initialization (Kaiming-uniform with a=sqrt(5)), left as it is."""


@inits.register("kaiming")
def _kaiming(model: nn.Module, activation: str) -> None:
    """He et al. 2015: normal weights with variance gain^2/fan_in; zero biases."""
    for m in _layers(model):
        nn.init.kaiming_normal_(m.weight, nonlinearity=_GAIN_NAME[activation])
        if m.bias is not None:
            nn.init.zeros_(m.bias)


@inits.register("xavier")
def _xavier(model: nn.Module, activation: str) -> None:
    """Glorot & Bengio 2010: normal weights with variance gain^2 * 2/(fan_in+fan_out); zero biases."""
    gain = nn.init.calculate_gain(_GAIN_NAME[activation])
    for m in _layers(model):
        nn.init.xavier_normal_(m.weight, gain=gain)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


@inits.register("orthogonal")
def _orthogonal(model: nn.Module, activation: str) -> None:
    """Saxe et al. 2014: (semi-)orthogonal weights scaled by the activation's gain; zero biases."""
    gain = nn.init.calculate_gain(_GAIN_NAME[activation])
    for m in _layers(model):
        nn.init.orthogonal_(m.weight, gain=gain)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
