"""Weight initializers by name. The initialization lab adds entries here."""
from __future__ import annotations

from torch import nn

from .registry import Registry

inits = Registry("initializer")

# torch.nn.init.calculate_gain has no entry for GELU; ReLU's gain is the usual stand-in.
_GAIN_NAME = {"relu": "relu", "gelu": "relu", "tanh": "tanh", "linear": "linear"}


def _each_layer(model: nn.Module, init_weight) -> None:
    """init_weight on every linear and convolutional weight; biases start at zero."""
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            init_weight(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


@inits.register("default")
def _default(model: nn.Module, activation: str) -> None:
    """PyTorch's own initialization (Kaiming-uniform with a=sqrt(5)), left as it is."""


@inits.register("kaiming")
def _kaiming(model: nn.Module, activation: str) -> None:
    """He et al. 2015: normal weights with variance gain^2/fan_in; zero biases."""
    _each_layer(model, lambda w: nn.init.kaiming_normal_(w, nonlinearity=_GAIN_NAME[activation]))


@inits.register("xavier")
def _xavier(model: nn.Module, activation: str) -> None:
    """Glorot & Bengio 2010: normal weights with variance gain^2 * 2/(fan_in+fan_out); zero biases."""
    gain = nn.init.calculate_gain(_GAIN_NAME[activation])
    _each_layer(model, lambda w: nn.init.xavier_normal_(w, gain=gain))


@inits.register("orthogonal")
def _orthogonal(model: nn.Module, activation: str) -> None:
    """Saxe et al. 2014: (semi-)orthogonal weights scaled by the activation's gain; zero biases."""
    gain = nn.init.calculate_gain(_GAIN_NAME[activation])
    _each_layer(model, lambda w: nn.init.orthogonal_(w, gain=gain))
