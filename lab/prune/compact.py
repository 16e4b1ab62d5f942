"""Structured pruning that makes the model smaller: channel masks by weight norm, a compacted copy that
computes the same function, and what it saves (parameters, MACs, measured CPU latency).

Masks follow the pruning contract: a pruned parameter `<module>.<p>` has a bool buffer `<p>_keep` on its
module (True = kept) and its pruned entries are exactly 0.

Which channels are coupled comes from Torch-Pruning's dependency graph (`torch_pruning.DependencyGraph`):
it follows BatchNorm, Flatten into a Linear (one channel -> H*W features) and residual additions. It is
built once per model structure and kept as a plan of plain index lists (`_Plan`); the masks, the cut
(`_remove`, an index_select per layer that also cuts our `*_keep` buffers) and the counts are our own.
Why not Torch-Pruning's pruners: they choose channels by their own group importance and prune in place,
and a graph belongs to one model instance (`copy.deepcopy` of it fails: "cannot pickle 'module'
object"), so removing exactly the masked channels of a copy would need a new graph per copy.
Measured (benchmarks/pruning.py part (c), one thread, three runs on 2026-12-01): a 1.13 M-parameter
VGG-style CNN with BatchNorm on 32x32 inputs, Torch-Pruning's graph 7-12 ms and a slider move its way
(copy, graph, MetaPruner step at 0.5) 15-23 ms, ours 12-15 ms once and 13-26 ms per preview; a CIFAR
ResNet-18, its move 84-121 ms, ours 46-80 ms once and 81-140 ms per preview (which includes an output
check); RECIPES.md's 1.3-3.0 s graph for a ResNet-18 did not show here. So speed did not decide it:
exactness did (the masked channels, nothing else) and the graph built once.

Supported: models whose layers are Linear, Conv1d/Conv2d (groups=1), BatchNorm1d/2d (affine), activations
with f(0) = 0 (ReLU, LeakyReLU, ReLU6, Tanh, GELU, SiLU, ELU, Hardtanh, Hardswish, Mish, Softsign), pooling,
Dropout, Flatten/Unflatten and Identity, in nn.Sequential or any module whose forward chains them
(residual additions are coupled by the graph). Never pruned: the model's input and its final layer.
Every compaction checks its output against the masked model and raises if they differ.
"""
from __future__ import annotations

import copy
import numbers
import statistics
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import torch
from torch import nn

from ..functional import eval_mode

PRODUCERS = (nn.Linear, nn.Conv1d, nn.Conv2d)
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)
PASS = (nn.ReLU, nn.LeakyReLU, nn.ReLU6, nn.Tanh, nn.GELU, nn.SiLU, nn.ELU, nn.Hardtanh, nn.Hardswish, nn.Mish,
        nn.Softsign, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Flatten, nn.Unflatten,
        nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
        nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d)
SUPPORTED = ("Linear, Conv1d/Conv2d (groups=1), BatchNorm1d/2d (affine), activations with f(0)=0 (ReLU, LeakyReLU, "
             "ReLU6, Tanh, GELU, SiLU, ELU, Hardtanh, Hardswish, Mish, Softsign), max/avg pooling, Dropout, "
             "Flatten/Unflatten, Identity")
CRITERIA = ("l1", "l2")
TOL = 1e-5  # compacted vs masked outputs, relative to the outputs' scale


def _check_ratio(ratio, allow_none: bool = False) -> None:
    if ratio is None and allow_none:
        return
    if isinstance(ratio, bool) or not isinstance(ratio, numbers.Real) or not 0 <= ratio < 1:
        raise ValueError(f"ratio must be a number in [0, 1) (the fraction of each layer's channels removed)"
                         f"{' or None (remove the channels already masked)' if allow_none else ''}; got {ratio!r}")


def _keep_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """name -> bool mask from the `<p>_keep` buffers (stands in for the core's trainlab.prune.masks)."""
    out = {}
    for mn, m in model.named_modules():
        for bn, b in m.named_buffers(recurse=False):
            if bn.endswith("_keep") and b.dtype == torch.bool:
                out[f"{mn}.{bn[:-5]}" if mn else bn[:-5]] = b
    return out


def _check_supported(model: nn.Module) -> None:
    for name, m in model.named_modules():
        if len(m._modules):  # a container: its forward is checked by the output comparison
            continue
        ok = isinstance(m, PRODUCERS + NORMS + PASS)
        if isinstance(m, (nn.Conv1d, nn.Conv2d)) and m.groups != 1:
            ok = False
        if isinstance(m, NORMS) and not m.affine:  # without gamma and beta, a zero channel normalizes to -mean/std
            ok = False
        if not ok:
            what = f"{type(m).__name__}" + (f"(groups={m.groups})" if hasattr(m, "groups") else "") + (
                "(affine=False)" if isinstance(m, NORMS) else "")
            raise ValueError(f"compact cannot remove channels through layer {name or 'model'!r} ({what}); "
                             f"supported layers: {SUPPORTED}. (A channel of zeros must stay zero through every "
                             f"layer: LayerNorm/GroupNorm mix channels, sigmoid(0) != 0.)")


def _example(model: nn.Module, example) -> torch.Tensor:
    """One input (batch 1): the one given, or guessed from the first layer (an MLP's in_features, an
    Unflatten's shape, a convnet tried at square sizes)."""
    if example is not None:
        return example[:1]
    p = next(model.parameters(), None)
    dev, dt = (p.device, p.dtype) if p is not None else ("cpu", torch.float32)
    leaves = [m for m in model.modules() if not len(m._modules)]
    for m in leaves:
        if isinstance(m, nn.Unflatten):
            size = 1
            for s in m.unflattened_size:
                size *= s
            return torch.zeros(1, size, device=dev, dtype=dt)
        if isinstance(m, nn.Linear):
            return torch.zeros(1, m.in_features, device=dev, dtype=dt)
        if isinstance(m, (nn.Conv1d, nn.Conv2d)):
            conv2 = isinstance(m, nn.Conv2d)
            for s in (32, 28, 8, 16, 64, 224):
                x = torch.zeros((1, m.in_channels) + ((s, s) if conv2 else (s,)), device=dev, dtype=dt)
                try:
                    with torch.no_grad(), eval_mode(model):
                        model(x)
                    return x
                except Exception:
                    continue
            break
    raise ValueError("cannot guess the model's input shape: pass example=<an input batch>")


@dataclass
class _Item:
    module: str
    out: bool  # True: output channels (rows of a weight, a BatchNorm's features); False: a weight's inputs
    idx: list  # idx[r]: the plain indices of this item for the root's channel r
    index: torch.Tensor | None = None  # the same as an (n, k) tensor when every channel has k indices

    def __post_init__(self):
        k = {len(v) for v in self.idx}
        if len(k) == 1 and k != {0}:
            self.index = torch.tensor(self.idx, dtype=torch.long)

    def rows(self, roots: torch.Tensor) -> torch.Tensor:
        """This item's indices of the root channels `roots`, sorted."""
        if self.index is not None:
            return self.index[roots].flatten().unique()
        return torch.tensor(sorted({i for r in roots.tolist() for i in self.idx[r]}), dtype=torch.long)

    def gather(self, per_index: torch.Tensor, reduce: str) -> torch.Tensor:
        """Per root channel: the sum ("sum") or the all() ("all") of per_index over its indices."""
        if self.index is not None:
            v = per_index[self.index]
            return v.sum(1) if reduce == "sum" else v.all(1)
        f = (lambda t: t.sum()) if reduce == "sum" else (lambda t: t.all())
        return torch.stack([f(per_index[torch.tensor(ii, dtype=torch.long)]) for ii in self.idx])


@dataclass
class _Group:
    root: str
    n: int
    items: list


@dataclass
class _Plan:
    groups: list
    final: str
    seconds: float  # time to build it (the dependency graph and the index lists)


_PLANS: OrderedDict = OrderedDict()  # structure signature -> _Plan (a few, most recent last)


def _signature(model: nn.Module, example: torch.Tensor) -> tuple:
    return (tuple(example.shape[1:]),) + tuple(
        (n, type(m).__name__, tuple(tuple(p.shape) for p in m.parameters(recurse=False)))
        for n, m in model.named_modules())


def _plan(model: nn.Module, example) -> _Plan:
    """The channel groups of this model structure, from Torch-Pruning's dependency graph, built once."""
    import torch_pruning as tp

    _check_supported(model)
    example = _example(model, example)
    key = _signature(model, example)
    if key in _PLANS:
        _PLANS.move_to_end(key)
        return _PLANS[key]
    t = time.perf_counter()
    names = {m: n for n, m in model.named_modules()}
    order = []  # producers in the order the forward calls them; the last one is the output layer
    hooks = [m.register_forward_hook(lambda m, i, o: order.append(m)) for m in model.modules()
             if isinstance(m, PRODUCERS)]
    try:
        with eval_mode(model), torch.enable_grad():  # eval: tracing must not move BatchNorm's statistics
            model(example)
            dg = tp.DependencyGraph().build_dependency(model, example_inputs=example, verbose=False)
    finally:
        for h in hooks:
            h.remove()
    if not order:
        raise ValueError(f"nothing to compact: the model has no Linear or Conv layer (supported: {SUPPORTED})")
    order = list(dict.fromkeys(order))
    final = order[-1]
    groups, seen = [], {final}
    for m in order[:-1]:
        if m in seen:
            continue
        n = m.out_features if isinstance(m, nn.Linear) else m.out_channels
        pruner = dg.get_pruner_of_module(m)
        group = dg.get_pruning_group(m, pruner.prune_out_channels, list(range(n)))
        items: dict[tuple, list] = {}
        coupled_to_output = False
        for gi in group.items:  # merged by Torch-Pruning: plain indices, and the root channel of each
            dep = gi.dep
            t_mod = dep.target.module
            if not isinstance(t_mod, nn.Module) or t_mod not in names:
                continue  # an element-wise op, a reshape: nothing to cut
            out = dep.handler.__name__ == "prune_out_channels" or isinstance(t_mod, NORMS)
            if out and t_mod is final:
                coupled_to_output = True
            per_root = items.setdefault((names[t_mod], out), [[] for _ in range(n)])
            for i, r in zip(gi.idxs, gi.root_idxs):
                per_root[r].append(i)
            if out and isinstance(t_mod, PRODUCERS):
                seen.add(t_mod)
        if coupled_to_output:  # e.g. a residual sum into the output: its channels are the model's outputs
            continue
        groups.append(_Group(names[m], n, [_Item(k[0], k[1], [sorted(set(v)) for v in per_root])
                                            for k, per_root in items.items()]))
    plan = _Plan(groups, names[final], time.perf_counter() - t)
    _PLANS[key] = plan
    while len(_PLANS) > 8:
        _PLANS.popitem(last=False)
    return plan


def _zero_rows(m: nn.Module) -> torch.Tensor:
    """Per output channel (or BatchNorm feature): True when it can only output zeros."""
    w = m.weight.detach()
    if isinstance(m, NORMS):  # gamma = beta = 0 gives 0 in train and eval mode
        return (w == 0) & (m.bias.detach() == 0)
    z = (w.reshape(w.shape[0], -1) == 0).all(1)
    return z & (m.bias.detach() == 0) if m.bias is not None else z


def _removable(model: nn.Module, plan: _Plan) -> list[torch.Tensor]:
    """Per group: the root channels that are zero in every layer producing them (safe to remove)."""
    mods = dict(model.named_modules())
    out = []
    for g in plan.groups:
        ok = torch.ones(g.n, dtype=torch.bool)
        for it in g.items:
            if not it.out:
                continue
            ok &= it.gather(_zero_rows(mods[it.module]).cpu(), "all")
        out.append(ok.nonzero().flatten())
    return out


def _set_keep(m: nn.Module, pname: str, keep: torch.Tensor) -> None:
    """AND a kept-entries mask into `<pname>_keep` (made if absent) and zero the pruned entries."""
    p = getattr(m, pname)
    buf = m._buffers.get(pname + "_keep")
    if buf is None:
        m.register_buffer(pname + "_keep", keep)  # the caller's fresh tensor
    else:
        buf &= keep
        keep = buf
    p.mul_(keep)


@torch.no_grad()
def _write_masks(model: nn.Module, plan: _Plan, drop: list[torch.Tensor]) -> None:
    mods = dict(model.named_modules())
    for g, rm in zip(plan.groups, drop):
        if not len(rm):
            continue
        for it in g.items:
            if not it.out:
                continue  # the consumers' input columns multiply zeros; compact removes them
            m = mods[it.module]
            rows = it.rows(rm)
            for pname in ("weight", "bias"):
                p = getattr(m, pname, None)
                if p is None:
                    continue
                keep = torch.ones_like(p, dtype=torch.bool)
                keep[rows] = False
                _set_keep(m, pname, keep)


def _scores(model: nn.Module, g: _Group, criterion: str) -> torch.Tensor:
    """Per root channel: the L1 (or L2) norm of its weights, summed over the layers that produce it."""
    mods = dict(model.named_modules())
    s = torch.zeros(g.n)
    for it in g.items:
        m = mods[it.module]
        if not it.out or not isinstance(m, PRODUCERS):
            continue
        w = m.weight.detach().reshape(m.weight.shape[0], -1)
        row = w.abs().sum(1) if criterion == "l1" else w.pow(2).sum(1).sqrt()
        s += it.gather(row.cpu(), "sum")
    return s


def channel_masks(model: nn.Module, ratio: float = 0.5, criterion: str = "l1", *, example=None) -> dict:
    """Mask `ratio` of the output channels/neurons of every hidden Linear/Conv (never the input, never the
    final layer) with the smallest L1 (or L2) weight norm, in place, per the mask contract: whole rows of
    the weight and the bias entries, and the following BatchNorm's weight and bias, zeroed with their
    `*_keep` buffers. Returns name -> mask."""
    _check_ratio(ratio)
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {CRITERIA}; got {criterion!r}")
    plan = _plan(model, example)
    drop = []
    for g in plan.groups:
        k = int(ratio * g.n)
        s = _scores(model, g, criterion)
        drop.append(torch.argsort(s, stable=True)[:k].sort().values)
    _write_masks(model, plan, drop)
    return _keep_masks(model)


def _cut(m: nn.Module, pname: str, dim: int, keep: torch.Tensor) -> None:
    p = getattr(m, pname, None)
    if p is None:
        return
    if isinstance(p, nn.Parameter):
        setattr(m, pname, nn.Parameter(p.detach().index_select(dim, keep).clone(), requires_grad=p.requires_grad))
    else:
        m._buffers[pname] = p.index_select(dim, keep).clone()
    buf = m._buffers.get(pname + "_keep")
    if buf is not None:
        m._buffers[pname + "_keep"] = buf.index_select(dim, keep).clone()


def _remove(m: nn.Module, idx: torch.Tensor, out: bool) -> None:
    """Remove output (out=True) or input channels `idx` of one layer, with its `*_keep` buffers."""
    n = m.weight.shape[0 if out or isinstance(m, NORMS) else 1]
    keep_t = torch.ones(n, dtype=torch.bool)
    keep_t[idx] = False
    keep = keep_t.nonzero().flatten().to(m.weight.device)
    if isinstance(m, NORMS):
        for pname in ("weight", "bias", "running_mean", "running_var"):
            _cut(m, pname, 0, keep)
        m.num_features = len(keep)
    elif out:
        _cut(m, "weight", 0, keep)
        _cut(m, "bias", 0, keep)
        setattr(m, "out_features" if isinstance(m, nn.Linear) else "out_channels", len(keep))
    else:
        _cut(m, "weight", 1, keep)
        setattr(m, "in_features" if isinstance(m, nn.Linear) else "in_channels", len(keep))


def _apply(model: nn.Module, plan: _Plan, drop: list[torch.Tensor]) -> None:
    mods = dict(model.named_modules())
    for g, rm in zip(plan.groups, drop):
        if len(rm):
            for it in g.items:
                _remove(mods[it.module], it.rows(rm), it.out)


class Compactor:
    """One model's channel groups (Torch-Pruning's dependency graph, built once); `compact(ratio)` and
    `preview(ratio)` then cost a copy and an index_select per layer, whatever the ratio."""

    def __init__(self, model: nn.Module, example: torch.Tensor | None = None):
        self.model = model
        self.example = _example(model, example)
        self.plan = _plan(model, self.example)
        if not self.plan.groups:
            raise ValueError(f"nothing to compact: the model has no hidden Linear or Conv layer whose channels can "
                             f"go (only its output layer {self.plan.final!r}, whose outputs are the model's, and "
                             f"its input are never pruned)")
        self.positions = _positions(model, self.example)  # MACs = sum of positions * weight.numel()
        self.dense_counts = _counts(model, self.positions)

    def compact(self, ratio: float | None = None, criterion: str = "l1", check: bool = True) -> nn.Module:
        """A smaller copy: with `ratio`, `channel_masks(copy, ratio)` first; with None, the channels already
        masked (zero weights, bias and BatchNorm weight and bias) are removed."""
        _check_ratio(ratio, allow_none=True)
        small = copy.deepcopy(self.model)
        if ratio is not None:
            channel_masks(small, ratio, criterion, example=self.example)
        drop = _removable(small, self.plan)
        if ratio is None and not any(len(d) for d in drop):
            raise ValueError("nothing to compact: no channel of a hidden layer is fully masked (all its weights, "
                             "its bias and its BatchNorm weight and bias zero); give ratio= in [0, 1), or mask "
                             "channels first with trainlab.prune.channel_masks(model, ratio)")
        if check:
            x = torch.randn((1,) + tuple(self.example.shape[1:]), device=self.example.device,
                            dtype=self.example.dtype)
            with torch.no_grad(), eval_mode(small):
                ref = small(x)
        _apply(small, self.plan, drop)
        if check:
            with torch.no_grad(), eval_mode(small):
                diff = (small(x) - ref).abs().max().item()
            if diff > TOL * (1 + ref.abs().max().item()):
                raise ValueError(f"compact does not support this architecture: the compacted model's outputs differ "
                                 f"from the masked model's by {diff:.3g} (supported layers: {SUPPORTED})")
        return small

    def preview(self, ratio: float, criterion: str = "l1") -> "Preview":
        """The compacted copy at `ratio` and its parameter and MAC counts beside the dense model's."""
        small = self.compact(ratio, criterion)
        p0, m0 = self.dense_counts
        p1, m1 = _counts(small, self.positions)  # channels change, positions do not: no forward needed
        return Preview(small, ratio, p1, p0, m1, m0)


def compact(model: nn.Module, ratio: float | None = None, *, criterion: str = "l1", example=None,
            check: bool = True) -> nn.Module:
    """A structurally smaller copy of `model` that gives the masked model's outputs (to 1e-5).

    ratio=None removes the channels already masked per the contract; ratio in [0, 1) first masks that
    fraction of every hidden layer's channels by L1/L2 norm (`channel_masks` on the copy). The model
    itself is never changed. Raises ValueError for an unsupported architecture (see `SUPPORTED`)."""
    _check_ratio(ratio, allow_none=True)
    return Compactor(model, example).compact(ratio, criterion, check)


@dataclass
class Preview:
    model: nn.Module
    ratio: float
    params: int
    params_dense: int
    macs: int  # multiply-accumulates per example (Linear and Conv)
    macs_dense: int


def _positions(model: nn.Module, example: torch.Tensor) -> dict[str, int]:
    """Per Linear/Conv: how many times per example its weight is applied (output positions); a layer
    then costs positions * weight.numel() multiply-accumulates (Linear: in*out, conv: out*in/groups*k*k)."""
    names = {m: n for n, m in model.named_modules()}
    pos: dict[str, int] = {}

    def hook(m, i, o):
        per = o[0].numel() // (m.out_features if isinstance(m, nn.Linear) else m.out_channels)
        pos[names[m]] = pos.get(names[m], 0) + per
    hooks = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, PRODUCERS)]
    try:
        with torch.no_grad(), eval_mode(model):
            model(example[:1])
    finally:
        for h in hooks:
            h.remove()
    return pos


def _counts(model: nn.Module, positions: dict[str, int]) -> tuple[int, int]:
    mods = dict(model.named_modules())
    macs = sum(n * mods[name].weight.numel() for name, n in positions.items())
    return sum(p.numel() for p in model.parameters()), macs


def count(model: nn.Module, example: torch.Tensor | None = None) -> tuple[int, int]:
    """(parameters, multiply-accumulates per example of the Linear and Conv layers)."""
    example = _example(model, example)
    return _counts(model, _positions(model, example))


def _forward_seconds(model, x) -> float:
    t = time.perf_counter()
    model(x)
    return time.perf_counter() - t


def measure(model: nn.Module, example: torch.Tensor, repeats: int = 20) -> float:
    """Median CPU seconds of one forward pass on `example` (eval mode, inference mode, 2 warm-ups)."""
    with torch.inference_mode(), eval_mode(model):
        for _ in range(2):
            model(example)
        return statistics.median(_forward_seconds(model, example) for _ in range(repeats))


@dataclass
class CompactReport:
    params: int
    params_dense: int
    macs: int
    macs_dense: int
    latency: float  # median seconds per forward of the example batch
    latency_dense: float
    latency_ratio: float  # median over interleaved pairs of compact / dense
    pairs: list = field(default_factory=list, repr=False)


def report(dense: nn.Module, small: nn.Module, example: torch.Tensor, repeats: int = 20) -> CompactReport:
    """Parameters, MACs and measured latency of `small` against `dense`, their forwards interleaved (which
    goes first alternates) so both see the same drift of the machine; the ratio is the median of pairs."""
    p0, m0 = count(dense, example)
    p1, m1 = count(small, example)
    td, ts, pairs = [], [], []
    with torch.inference_mode(), eval_mode(dense), eval_mode(small):
        for _ in range(2):
            dense(example), small(example)
        for i in range(repeats):
            if i % 2:
                b, a = _forward_seconds(small, example), _forward_seconds(dense, example)
            else:
                a, b = _forward_seconds(dense, example), _forward_seconds(small, example)
            td.append(a), ts.append(b), pairs.append(b / a)
    return CompactReport(p1, p0, m1, m0, statistics.median(ts), statistics.median(td), statistics.median(pairs),
                         pairs)


@dataclass
class UnstructuredReport:
    params: int  # weights of the Linear and Conv layers
    zeros: int
    sparsity: float
    per_layer: dict  # name -> (weights, zeros)
    removable_channels: int  # whole output channels that are zero: all compact() could remove
    speedup: float = 1.0  # dense kernels multiply the zeros too: no faster, no smaller in memory
    note: str = ("unstructured zeros are counted, not skipped: the dense forward costs the same; only whole "
                 "channels (compact) make the model smaller and faster on CPU")


def unstructured_report(model: nn.Module) -> UnstructuredReport:
    """The honest count of zero weights (from the weights themselves, not the masks) and no speed-up."""
    per, total, zeros, chans = {}, 0, 0, 0
    for name, m in model.named_modules():
        if isinstance(m, PRODUCERS):
            w = m.weight.detach()
            z = int((w == 0).sum())
            per[name] = (w.numel(), z)
            total, zeros = total + w.numel(), zeros + z
            chans += int(_zero_rows(m).sum())
    if not per:
        raise ValueError(f"the model has no Linear or Conv layer to count (supported: {SUPPORTED})")
    return UnstructuredReport(total, zeros, zeros / total, per, chans)
