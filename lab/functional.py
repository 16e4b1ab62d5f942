"""A model as a function of one flat parameter vector, and the train/eval mode held for a block.

The analyses (Hessian-vector products, per-example gradients, subspace training) all call a model at
weights other than its own through `torch.func.functional_call`; `Functional` is that one way.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn
from torch.func import functional_call


def trainable(model: nn.Module, what: str = "gradients") -> list[tuple[str, torch.Tensor]]:
    """The trainable parameters, after checking that every parameter is floating point (`what` needs them)."""
    everything = list(model.named_parameters())
    bad = [(n, p.dtype) for n, p in everything if not p.dtype.is_floating_point]
    if bad:
        raise ValueError(f"parameters must be floating point for {what}; {bad[0][0]} is {bad[0][1]}"
                         f"{f' (and {len(bad) - 1} more)' if len(bad) > 1 else ''}: use a floating-point model")
    named = [(n, p) for n, p in everything if p.requires_grad]
    if not named:
        raise ValueError(f"the model has no trainable parameters (requires_grad=True): no {what}")
    return named


class Functional:
    """`model`'s trainable parameters as one flat vector `theta`, and the model called at any such vector.

    Frozen parameters and buffers stay the model's own (BatchNorm in train mode updates its running
    statistics in place, as a plain forward would).
    """

    def __init__(self, model: nn.Module, what: str = "gradients"):
        named = trainable(model, what)
        self.model = model
        self.names = [n for n, _ in named]
        self.shapes = [p.shape for _, p in named]
        self.sizes = [p.numel() for _, p in named]
        self.dtype, self.device = named[0][1].dtype, named[0][1].device
        self.theta = torch.cat([p.detach().reshape(-1).to(self.dtype) for _, p in named])
        self.n = self.theta.numel()
        self.frozen = {n: p.detach() for n, p in model.named_parameters() if not p.requires_grad}

    def split(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        """{name: view} of a flat vector, in `model.named_parameters()` order."""
        return {n: t.view(s) for n, t, s in zip(self.names, torch.split(theta, self.sizes), self.shapes)}

    def detached(self) -> dict[str, torch.Tensor]:
        """The trainable parameters as detached tensors, by name (for torch.func transforms)."""
        return self.split(self.theta)

    def __call__(self, params: torch.Tensor | dict[str, torch.Tensor], *inputs):
        """The model's output on `inputs` at `params`: a flat vector, or {name: tensor} of trainable parameters."""
        ps = self.split(params) if torch.is_tensor(params) else params
        return functional_call(self.model, {**self.frozen, **ps}, inputs)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Every module in eval mode for the block (BatchNorm's running statistics, no dropout), then each
    module's own flag back."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, was in flags:
            m.training = was


@contextlib.contextmanager
def train_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Every module in train mode for the block (batch statistics), leaving no trace: the flags and the
    buffers (running statistics the forward passes moved) are put back afterwards."""
    flags = [(m, m.training) for m in model.modules()]
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    model.train()
    try:
        yield model
    finally:
        for m, was in flags:
            m.training = was
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)


def record(model: nn.Module, x: torch.Tensor, pick: Callable[[str, nn.Module], bool],
           what: Callable[[nn.Module, tuple, Any], Any]) -> dict[str, Any]:
    """One forward of x in eval mode without gradients, keeping what(module, inputs, output) for every named
    module that pick(name, module) chooses: {name: value}."""
    out, handles = {}, []
    for name, m in model.named_modules():
        if pick(name, m):
            handles.append(m.register_forward_hook(
                lambda mod, inp, o, name=name: out.__setitem__(name, what(mod, inp, o))))
    try:
        with torch.no_grad(), eval_mode(model):
            model(x)
    finally:
        for h in handles:
            h.remove()
    return out
