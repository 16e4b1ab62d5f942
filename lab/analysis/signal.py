"""Signal propagation through depth, against the infinite-width theory, and μP's coordinate check.

`propagation(model, data)`: per layer, the mean and std of its pre-activations on a sample, its weights'
gradient norm, and the theory's std (Roberts & Yaida, "The Principles of Deep Learning Theory", ch. 4-5:
K_{l+1} = C_b + C_W E_{z~N(0,K_l)}[σ(z)²], with each layer's C_W = fan_in·E[W²] and C_b = E[b²] read off
its weights unless given). `coord_check(model_fn, widths)`: each layer's activation scale against width
after a few training steps (Yang et al. 2022, "Tensor Programs V", §D.1): flat under μP, growing under SP.
"""
from __future__ import annotations

import contextlib
import math
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..functional import eval_mode
from ..jobs import Cancelled, Progress, as_progress
from ..parametrizations import input_scale

_WEIGHTED = (nn.Linear, nn.modules.conv._ConvNd)
_ACTIVATIONS = {nn.ReLU: "relu", nn.Tanh: "tanh", nn.GELU: "gelu"}
# modules a plain chain may hold between its layers without leaving the theory's setting
_PASS = (nn.Flatten, nn.Unflatten, nn.Identity, nn.Dropout)
_ACT_FN = {"relu": torch.relu, "tanh": torch.tanh, "gelu": nn.functional.gelu, "linear": lambda z: z}


# ---- the infinite-width variance map ---------------------------------------------------------
def expected_square(activation: str, K: float | np.ndarray) -> np.ndarray:
    """E_{z~N(0,K)}[σ(z)²]: closed form for ReLU (K/2) and linear (K), else by quadrature (`_quadrature`)."""
    K = np.asarray(K, dtype=float)
    if activation == "relu":
        return K / 2
    if activation == "linear":
        return K.copy()
    return _quadrature(activation, K)


def _quadrature(activation: str, K: np.ndarray) -> np.ndarray:
    """∫ σ(√K u)² φ(u) du by the trapezoid rule on u ∈ [-12, 12], spaced so that z = √K u steps at most 1/20:
    exponentially convergent for smooth integrands on the line. (Gauss-Hermite with a fixed degree loses
    accuracy as K grows: 2e-4 relative at K = 10 with 128 nodes, measured against scipy's quad, and its
    node computation overflows past ~500 nodes; this rule stays at 1e-10 there.)"""
    K = np.asarray(K, dtype=float)
    n = int(480 * max(1.0, math.sqrt(float(K.max(initial=0.0))))) + 1
    u = np.linspace(-12.0, 12.0, n)
    z = torch.as_tensor(np.sqrt(K)[..., None] * u, dtype=torch.float64)
    f = _ACT_FN[activation](z).numpy() ** 2 * np.exp(-u**2 / 2) / math.sqrt(2 * math.pi)
    return np.trapezoid(f, u, axis=-1)


def variance_map(K0: float | np.ndarray, activation: str, C_W, C_b, depth: int | None = None,
                 method: str = "auto") -> np.ndarray:
    """K_1 ... K_L of the pre-activations for input second moment K0 = E[x²] (a number, or one per example):
    K_1 = C_b + C_W K0, K_{l+1} = C_b + C_W E_{z~N(0,K_l)}[σ(z)²]. C_W, C_b: numbers or one per layer.
    method "quadrature" integrates numerically even where a closed form exists."""
    C_W, C_b = np.atleast_1d(np.asarray(C_W, float)), np.atleast_1d(np.asarray(C_b, float))
    L = depth or max(len(C_W), len(C_b))
    C_W, C_b = np.broadcast_to(C_W, (L,)) if len(C_W) == 1 else C_W, np.broadcast_to(C_b, (L,)) if len(C_b) == 1 else C_b
    sq = (lambda K: _quadrature(activation, np.asarray(K, float))) if method == "quadrature" else \
        (lambda K: expected_square(activation, K))
    K = C_b[0] + C_W[0] * np.asarray(K0, float)
    out = [K]
    for layer in range(1, L):
        K = C_b[layer] + C_W[layer] * sq(K)
        out.append(K)
    return np.stack(out)


# ---- what the network does -------------------------------------------------------------------
def _chain(model: nn.Module) -> tuple[list[tuple[str, nn.Module]], str | None, int]:
    """The weighted layers in forward order, the activation between them and how many of them (from the
    first) form a plain chain layer -> activation -> layer ..., where the theory holds."""
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, _WEIGHTED)]
    children = list(model.named_children()) if isinstance(model, nn.Sequential) else []
    acts = {_ACTIVATIONS[type(m)] for _, m in children if type(m) in _ACTIVATIONS}
    if not children or len(acts) > 1:
        return layers, None, 0
    activation = acts.pop() if acts else "linear"
    plain = 0
    for _, m in children:
        if isinstance(m, _WEIGHTED):
            plain += 1
        elif not (isinstance(m, _PASS) or type(m) in _ACTIVATIONS):
            break  # a norm, a pool or a residual block: the chain's theory stops here
    return layers, activation, plain


def _sample(data: Any, n: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    if hasattr(data, "fixed_sample"):
        x, y = data.fixed_sample(n, seed=0)
    else:
        x, y = data[0][:n], data[1][:n]
    return x.to(device), y.to(device)


def propagation(model: nn.Module, data: Any, loss_fn: Callable | None = None, n: int = 256,
                activation: str | None = None, C_W: float | None = None, C_b: float | None = None) -> pd.DataFrame:
    """One row per Linear/conv layer in forward order: `mean` and `std` of its outputs (pre-activations) on
    `n` examples of `data` (a trainlab Data or an (X, y) pair), `grad_norm` of the loss's gradient in its
    weights, and `theory_std`, the infinite-width prediction sqrt(E_x K_l(x)) from its effective C_W and C_b
    (read off the weights, input multipliers of NTK/μP included, unless given); NaN past the point where
    the model stops being a plain chain of layers and one elementwise activation (a norm, pool or residual)."""
    p0 = next(model.parameters())
    x, y = _sample(data, n, p0.device)
    if loss_fn is None:
        loss_fn = nn.functional.cross_entropy if not y.dtype.is_floating_point else nn.functional.mse_loss
    layers, act, plain = _chain(model)
    if not layers:
        raise ValueError("propagation needs a model with Linear or convolutional layers")
    outs: dict[str, torch.Tensor] = {}
    hooks = [m.register_forward_hook(lambda mod, i, o, name=name: outs.__setitem__(name, o)) for name, m in layers]
    try:
        with eval_mode(model):  # BatchNorm's running statistics stay as they are
            loss = loss_fn(model(x.to(p0.dtype) if x.dtype.is_floating_point else x), y)
    finally:
        for h in hooks:
            h.remove()
    grads = torch.autograd.grad(loss, [m.weight for _, m in layers], allow_unused=True)
    rows = []
    for (name, m), g in zip(layers, grads):
        z = outs[name].detach()
        w = m.weight.detach() * input_scale(m)  # the effective weight
        rows.append(dict(layer=name, depth=len(rows) + 1, mean=float(z.mean()), std=float(z.std()),
                         grad_norm=float(g.norm()) if g is not None else 0.0,
                         C_W=float(w[0].numel() * w.pow(2).mean()),
                         C_b=float(m.bias.detach().pow(2).mean()) if m.bias is not None else 0.0))
    frame = pd.DataFrame(rows)
    frame["theory_std"] = np.nan
    activation = activation or act
    if plain and activation is not None:
        cw = frame["C_W"].to_numpy()[:plain] if C_W is None else C_W
        cb = frame["C_b"].to_numpy()[:plain] if C_b is None else C_b
        K0 = x.reshape(len(x), -1).double().pow(2).mean(1).cpu().numpy()  # one K0 per example
        K = variance_map(K0, activation, cw, cb, depth=plain)  # (layers, examples)
        frame.loc[: plain - 1, "theory_std"] = np.sqrt(K.mean(1))
    return frame


# ---- μP's coordinate check -------------------------------------------------------------------
@contextlib.contextmanager
def _threads(n: int):
    was = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(was)


def coord_check(model_fn: Callable[[int], Any], widths, data: Any = "digits", steps: int = 3,
                optimizer: str = "sgd", lr: float | None = None, batch_size: int = 64, seed: int = 0,
                threads: int = 1, progress: bool | Progress = True) -> pd.DataFrame:
    """Train the model of each width `steps` steps on one fixed batch and record, at every step's forward,
    the mean |x| of each Linear/conv layer's output: a tidy frame of width, module, t (1 = at init), l1.

    `model_fn(width)` returns an nn.Module or a model spec such as ("mlp", {"width": width, "parametrization":
    "mup", "base_width": 64}); the optimizer is built as Run builds it (μP's per-layer lrs included), with
    `lr` (default: the optimizer's usual one) and its default settings. Under μP every curve is flat in width;
    under SP the later layers' grow with it. The same work as `mup.coord_check.get_coord_data` (its l1, its t).
    A tqdm bar by default, a unit per width; cancelling `progress` stops it between widths with Cancelled.
    """
    from ..data import as_data
    from ..models import default_loss, models
    from ..optimizers import build_grouped, optimizers
    from ..parametrizations import multipliers

    data = as_data(data)
    entry = optimizers[optimizer]
    lr = entry.meta.usual_lr if lr is None else lr
    x, y = data.fixed_sample(batch_size, seed=seed)
    loss_fn = default_loss(data.task)
    records = []  # (width, module, t, l1 tensor): one sync at the end
    p = as_progress(progress, len(widths), "coordinate check (widths)")
    with _threads(threads), torch.random.fork_rng(devices=[]):
        for width in widths:
            if p.cancelled:
                p.close()
                raise Cancelled("the coordinate check was cancelled")
            torch.manual_seed(seed)
            model = model_fn(width)
            if not isinstance(model, nn.Module):
                name, options = model
                model = models.build(name, data, **options)
            named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
            opt = build_grouped(optimizer, named, multipliers(model, optimizer), lr, entry.defaults())
            layers = [(n, m) for n, m in model.named_modules() if isinstance(m, _WEIGHTED)]
            model.train()
            for t in range(1, steps + 1):
                outs: list[tuple[str, torch.Tensor]] = []
                hooks = [m.register_forward_hook(lambda mod, i, o, name=name: outs.append((name, o.detach())))
                         for name, m in layers]
                try:
                    with torch.set_grad_enabled(t < steps):  # the last forward is only measured
                        loss = loss_fn(model(x), y)
                finally:
                    for h in hooks:
                        h.remove()
                records += [(width, name, t, o.abs().mean()) for name, o in outs]
                if t == steps:
                    break  # the last update would change nothing recorded (mup's check takes it anyway)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            p.update()
    p.close()
    l1 = torch.stack([r[3] for r in records]).tolist() if records else []
    return pd.DataFrame({"width": [r[0] for r in records], "module": [r[1] for r in records],
                         "t": [r[2] for r in records], "l1": l1})
