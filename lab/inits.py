"""Weight initializers by name: `build(model, activation, data=None, **options)` sets the weights in place.

Every entry initializes the Linear and convolutional layers (weights and biases); other parameters
(norm gains, embeddings) keep their own. An entry whose `meta.needs_data` is True (LSUV) measures the
model on examples: models built by `trainlab.models` hand it the run's data; called without data it
raises, naming the setting.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import param
import torch
from torch import nn

from .functional import record
from .registry import Registry, parse_spec

inits = Registry("initializer")

# torch.nn.init.calculate_gain has no entry for GELU; ReLU's gain is the usual stand-in.
_GAIN_NAME = {"relu": "relu", "gelu": "relu", "tanh": "tanh", "linear": "linear"}
_WEIGHTED = (nn.Linear, nn.Conv1d, nn.Conv2d)

# The critical (C_W, C_b) of Roberts & Yaida, "The Principles of Deep Learning Theory" (2022), ch. 5: the
# infinite-width variance map K -> C_b + C_W E[σ(z)²] has a fixed point of slope 1 (the scale-invariant
# universality class, ReLU: C_W = 2) or a marginal one at K = 0 (the K* = 0 class, tanh: C_W = 1). GELU
# has no exact criticality at C_b = 0 (§5.4's "semi-criticality"); ReLU's values are used for it.
CRITICAL = {"relu": (2.0, 0.0), "tanh": (1.0, 0.0), "linear": (1.0, 0.0), "gelu": (2.0, 0.0)}


@dataclass(frozen=True)
class InitInfo:
    """What the registry knows of an initializer (an entry's `meta`)."""

    needs_data: bool = False  # measures the model on examples (pass data=)


def _layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, _WEIGHTED)]


def _each_layer(model: nn.Module, init_weight) -> None:
    """init_weight on every linear and convolutional weight; biases start at zero."""
    for m in _layers(model):
        init_weight(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def _gain(activation: str) -> float:
    return nn.init.calculate_gain(_GAIN_NAME[activation])


@inits.register("default")
def _default(model: nn.Module, activation: str) -> None:
    """PyTorch's own initialization (Kaiming-uniform with a=sqrt(5)), left as it is."""


@inits.register("kaiming")
def _kaiming(model: nn.Module, activation: str) -> None:
    """He et al. 2015: normal weights with variance gain^2/fan_in; zero biases."""
    _each_layer(model, lambda w: nn.init.kaiming_normal_(w, nonlinearity=_GAIN_NAME[activation]))


@inits.register("kaiming_uniform")
def _kaiming_uniform(model: nn.Module, activation: str) -> None:
    """He et al. 2015, uniform: U(±gain·sqrt(3/fan_in)), variance gain^2/fan_in; zero biases."""
    _each_layer(model, lambda w: nn.init.kaiming_uniform_(w, nonlinearity=_GAIN_NAME[activation]))


@inits.register("xavier")
def _xavier(model: nn.Module, activation: str) -> None:
    """Glorot & Bengio 2010: normal weights with variance gain^2 * 2/(fan_in+fan_out); zero biases."""
    gain = _gain(activation)
    _each_layer(model, lambda w: nn.init.xavier_normal_(w, gain=gain))


@inits.register("xavier_uniform")
def _xavier_uniform(model: nn.Module, activation: str) -> None:
    """Glorot & Bengio 2010, uniform: U(±gain·sqrt(6/(fan_in+fan_out))); zero biases."""
    gain = _gain(activation)
    _each_layer(model, lambda w: nn.init.xavier_uniform_(w, gain=gain))


@inits.register("orthogonal")
def _orthogonal(model: nn.Module, activation: str) -> None:
    """Saxe et al. 2014: (semi-)orthogonal weights scaled by the activation's gain; zero biases."""
    gain = _gain(activation)
    _each_layer(model, lambda w: nn.init.orthogonal_(w, gain=gain))


def zero_matrix(rows: int, cols: int) -> torch.Tensor:
    """ZerO's deterministic matrix (Zhao et al. 2022, Algorithm 1): the identity when square, the partial
    identity I* (ones on the diagonal) when it narrows, and c·I*·H_m·I* when it widens, where H_m is the
    2^m Hadamard matrix, m = ceil(log2 rows) and c = 2^(-(m-1)/2) (the paper's constant; the authors'
    code uses 2^(-m/2), an orthonormal H)."""
    if rows <= cols:
        return torch.eye(rows, cols)
    from scipy.linalg import hadamard  # Sylvester's construction, from a well-kept library

    m = math.ceil(math.log2(rows))
    H = torch.as_tensor(hadamard(2**m), dtype=torch.float32)
    return 2.0 ** (-(m - 1) / 2) * H[:rows, :cols]


@inits.register("zero")
def _zero(model: nn.Module, activation: str) -> None:
    """ZerO (Zhao et al. 2022): identity / Hadamard-based weights with only zeros and ± one values, no
    randomness; convolutions get the matrix at the kernel's centre tap; zero biases."""
    with torch.no_grad():
        for m in _layers(model):
            w = m.weight
            W = zero_matrix(w.shape[0], w.shape[1]).to(w)
            w.zero_()
            if w.ndim == 2:
                w.copy_(W)
            else:
                w[(slice(None), slice(None), *(k // 2 for k in w.shape[2:]))] = W
            if m.bias is not None:
                m.bias.zero_()


def _inputs(data, n: int, model: nn.Module, setting: str) -> torch.Tensor:
    """Up to n input examples from a trainlab Data, an (X, y) pair or a tensor X, on the model's device."""
    if data is None:
        raise ValueError(f"init={setting!r} needs data: it measures the model on examples. Build the model through "
                         f"trainlab.models / Run (which pass the run's data), or call trainlab.inits.apply({setting!r}, "
                         f"model, activation, data=X)")
    if hasattr(data, "fixed_sample"):
        x = data.fixed_sample(n, seed=0)[0]
    elif isinstance(data, (tuple, list)):
        x = data[0][:n]
    elif torch.is_tensor(data):
        x = data[:n]
    else:
        raise ValueError(f"init={setting!r}: data must be a trainlab Data, an (X, y) pair or a tensor; got "
                         f"{type(data).__name__}")
    p = next(model.parameters())
    return x.to(device=p.device, dtype=p.dtype if x.dtype.is_floating_point else x.dtype)  # tokens stay integers


@inits.register(
    "lsuv",
    meta=InitInfo(needs_data=True),
    tol=param.Number(0.05, bounds=(0, 1), inclusive_bounds=(False, False), softbounds=(0.01, 0.5), step=0.01,
                     doc="stop scaling a layer once |Var(output) - 1| is below this"),
    max_iter=param.Integer(10, bounds=(1, None), softbounds=(1, 50), doc="scalings per layer at most"),
    samples=param.Integer(256, bounds=(2, None), softbounds=(16, 2048), doc="examples the variances are measured on"),
)
def _lsuv(model: nn.Module, activation: str, data=None, tol: float = 0.05, max_iter: int = 10,
          samples: int = 256) -> None:
    """LSUV (Mishkin & Matas 2016): orthogonal weights, then each layer in turn (in forward order) is
    divided by the std of its output on a batch until that output has unit variance."""
    x = _inputs(data, samples, model, "lsuv")
    _orthogonal(model, activation)
    with torch.no_grad():
        for layer in _layers(model):
            for _ in range(max_iter):
                var = record(model, x, lambda n, m: m is layer, lambda m, i, o: o.var())
                if not var:
                    break  # a layer the forward never reaches has nothing to measure
                v = float(next(iter(var.values())))
                if not math.isfinite(v) or v <= 0 or abs(v - 1.0) < tol:
                    break
                layer.weight.div_(math.sqrt(v))


def critical_values(activation: str) -> tuple[float, float]:
    """(C_W, C_b) at criticality for the activation (see CRITICAL)."""
    return CRITICAL[activation]


@inits.register(
    "critical",
    C_W=param.Number(None, allow_None=True, bounds=(0, None), softbounds=(0.5, 4.0), step=0.05,
                     doc="weight variance times fan-in (None: the activation's critical value: ReLU 2, tanh 1)"),
    C_b=param.Number(None, allow_None=True, bounds=(0, None), softbounds=(0.0, 1.0), step=0.01,
                     doc="bias variance (None: the critical value, 0 for ReLU and tanh)"),
)
def _critical(model: nn.Module, activation: str, C_W: float | None = None, C_b: float | None = None) -> None:
    """Roberts & Yaida's initialization: W ~ N(0, C_W/fan_in), b ~ N(0, C_b), by default at the activation's
    critical values (ReLU: C_W = 2, C_b = 0; tanh: C_W = 1, C_b = 0), where the variance neither explodes
    nor vanishes with depth."""
    cw, cb = critical_values(activation)
    cw, cb = (cw if C_W is None else C_W), (cb if C_b is None else C_b)
    with torch.no_grad():
        for m in _layers(model):
            fan_in = m.weight[0].numel()
            m.weight.normal_(0.0, math.sqrt(cw / fan_in))
            if m.bias is not None:
                m.bias.normal_(0.0, math.sqrt(cb))


def apply(spec, model: nn.Module, activation: str, data=None) -> None:
    """Initialize `model` by `spec` (a name or a (name, {options}) pair); `data` goes to entries that need it."""
    name, options = parse_spec(spec, "init")
    entry = inits[name]
    if isinstance(entry.meta, InitInfo) and entry.meta.needs_data:
        inits.build(name, model, activation, data, **options)
    else:
        inits.build(name, model, activation, **options)
