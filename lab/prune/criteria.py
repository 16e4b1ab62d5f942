"""Pruning criteria by name: importance scores per prunable weight, higher = kept.

Each entry is `score(model, weights, batch, loss_fn, select, **options) -> {name: scores}` where
`weights` is name -> parameter, `batch` an (x, y) pair (data-driven criteria need one) and `select(scores,
density) -> {name: mask}` the allocation (SynFlow prunes iteratively through it). None of them
changes the model.
"""
from __future__ import annotations

import copy

import param
import torch
from torch import nn

from ..functional import eval_mode
from ..registry import Registry
from .masks import masks as _masks

criteria = Registry("criterion")


def _need(batch, name: str):
    if batch is None:
        raise ValueError(f"criterion {name!r} needs a batch (x, y): Sparsifier.step(step, batch=...)")
    return batch


def _grads(model, weights, batch, loss_fn, create_graph=False):
    x, y = batch
    loss = loss_fn(model(x), y)
    return loss, torch.autograd.grad(loss, list(weights.values()), create_graph=create_graph)


@criteria.register("magnitude")
def magnitude(model, weights, batch=None, loss_fn=None, select=None):
    """|w| (Han et al. 2015; layer-wise or global by the allocation)."""
    return {k: w.detach().abs() for k, w in weights.items()}


@criteria.register("random", seed=param.Integer(0, bounds=(0, None), doc="seed of the random scores"))
def random(model, weights, batch=None, loss_fn=None, select=None, seed=0):
    """Uniform random scores from their own seeded generator (the random-pruning baseline)."""
    g = torch.Generator().manual_seed(seed)
    return {k: torch.rand(w.shape, generator=g).to(w.device) for k, w in weights.items()}


@criteria.register("gradient")
def gradient(model, weights, batch=None, loss_fn=None, select=None):
    """|w ⊙ g| on the batch at the current weights: the first-order Taylor estimate of removing w."""
    _, grads = _grads(model, weights, _need(batch, "gradient"), loss_fn)
    return {k: (w.detach() * g).abs() for (k, w), g in zip(weights.items(), grads)}


@criteria.register("snip")
def snip(model, weights, batch=None, loss_fn=None, select=None):
    """SNIP (Lee et al. 2019): connection sensitivity |g ⊙ w| on a batch, normalized to sum 1 over the model."""
    _, grads = _grads(model, weights, _need(batch, "snip"), loss_fn)
    s = {k: (w.detach() * g).abs() for (k, w), g in zip(weights.items(), grads)}
    total = sum(v.sum() for v in s.values())
    return {k: v / total for k, v in s.items()}


@criteria.register("grasp")
def grasp(model, weights, batch=None, loss_fn=None, select=None):
    """GraSP (Wang et al. 2020): the paper's S = -w ⊙ Hg (Hg a Hessian-vector product); the paper removes
    the largest S, so the importance kept here is w ⊙ Hg = -S."""
    x, y = _need(batch, "grasp")
    params = list(weights.values())
    g = [t.detach() for t in torch.autograd.grad(loss_fn(model(x), y), params)]
    _, grads = _grads(model, weights, (x, y), loss_fn, create_graph=True)
    hg = torch.autograd.grad(sum((a * b).sum() for a, b in zip(grads, g)), params)
    return {k: w.detach() * h for (k, w), h in zip(weights.items(), hg)}


@criteria.register(
    "synflow",
    iterations=param.Integer(100, bounds=(1, None), softbounds=(1, 200), doc="pruning rounds, density^(k/n) after round k"),
)
def synflow(model, weights, batch=None, loss_fn=None, select=None, iterations=100, density=None):
    """SynFlow (Tanaka et al. 2020), data-free: R = 1ᵀ f_|θ|(1), score |θ ⊙ ∂R/∂θ|, pruned over `iterations`
    rounds to density^(k/n) (the paper's exponential schedule), in float64 on a copy with |θ|."""
    work = copy.deepcopy(model).double()
    names = list(weights)
    ps = dict(work.named_parameters())
    kept = {k: v.to(torch.float64) for k, v in _masks(work).items()}
    with torch.no_grad():
        for p in work.parameters():
            p.abs_()
    x = torch.ones((1, *_input_shape(model, batch)), dtype=torch.float64, device=next(model.parameters()).device)
    scores = None
    rounds = iterations if (select is not None and density is not None and density < 1) else 1
    with eval_mode(work):
        for k in range(1, rounds + 1):
            with torch.no_grad():
                for n in names:
                    if n in kept:
                        ps[n].mul_(kept[n])
            r = work(x).sum()
            grads = torch.autograd.grad(r, [ps[n] for n in names])
            scores = {n: (ps[n].detach() * g).abs() for n, g in zip(names, grads)}
            if k < rounds:
                kept = {n: m.to(torch.float64) for n, m in select(scores, density ** (k / rounds)).items()}
    return {n: s.to(weights[n].dtype) for n, s in scores.items()}


def _input_shape(model: nn.Module, batch) -> tuple[int, ...]:
    if batch is not None:
        return tuple(batch[0].shape[1:])
    first = next(m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)))
    if isinstance(first, nn.Linear):
        return (first.in_features,)
    raise ValueError("synflow on a convolutional model needs a batch for the input shape (its values are not used)")
