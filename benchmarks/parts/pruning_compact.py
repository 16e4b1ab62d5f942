"""What compacting buys: CPU latency of a compacted CNN against its dense (masked) self, and what a preview
of the structured-ratio slider costs, with Torch-Pruning's own times beside.

Rows, all in one process on one torch thread (these 2-core machines drift by tens of percent over
seconds, so the two models' forwards alternate and each ratio is the median over the pairs):
- a plain VGG-style CNN with BatchNorm (1.13 M parameters; batch 64 of 32x32x3) at channel ratio 0.5:
  dense (masked) latency, compact latency and their ratio (target <= 0.45), parameters and MACs, the
  largest output difference against the masked model (target <= 1e-5);
- the time to build the channel plan (Torch-Pruning's dependency graph + index lists, once per model)
  and the time of one preview (a compacted copy and its counts) per slider move (target <= 0.5 s);
- Torch-Pruning alone for the same model: DependencyGraph build, MetaPruner step at 0.5, and a slider
  move done its way (copy, build the graph, prune); the same for a CIFAR ResNet-18 (11 M parameters),
  where the graph's cost shows;
- the digits CNN (trainlab.models "cnn", batch 64) at 0.5;
- unstructured: dense matmul against torch.sparse CSR at 90-99 % sparsity (1024x1024 weight, 64 columns).

    python benchmarks/pruning.py --parts c [--compact-repeats 30] [--no-resnet]   (or alone: python benchmarks/parts/pruning_compact.py)
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

import trainlab
import trainlab.prune as P
from trainlab.functional import eval_mode

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
from test_prune_compact import vgg  # noqa: E402  (one VGG-style CNN: the tests' and the benchmark's)

C = sys.modules["trainlab.prune.compact"]  # the module (trainlab.prune.compact is also the function's name)


class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
        self.short = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                      if stride != 1 or cin != cout else nn.Identity())

    def forward(self, x):
        return torch.relu(self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))) + self.short(x))


def resnet18(classes=10):
    """The CIFAR ResNet-18 (3x3 stem, four stages of two basic blocks)."""
    layers, cin = [nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU()], 64
    for cout, stride in [(64, 1), (128, 2), (256, 2), (512, 2)]:
        layers += [Block(cin, cout, stride), Block(cout, cout, 1)]
        cin = cout
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, classes))


def random_bn(model):
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.1)
    return model


def seconds(fn, repeats=5):
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return statistics.median(out), min(out), max(out)


def fmt(t):
    return f"{t[0] * 1e3:.1f} ms (range {t[1] * 1e3:.1f}-{t[2] * 1e3:.1f})"


def plan_build(model, example):
    """A cold plan: Torch-Pruning's graph and our index lists, with the structure cache emptied first."""
    C._PLANS.clear()
    C._plan(model, example)


def tp_graph(model, example):
    import torch_pruning as tp
    with eval_mode(model):
        tp.DependencyGraph().build_dependency(model, example_inputs=example, verbose=False)


def tp_move(model, example, ratio=0.5):
    """A slider move Torch-Pruning's way: copy the model, build its graph, prune at ratio."""
    import torch_pruning as tp
    m = copy.deepcopy(model).eval()
    pr = tp.pruner.MetaPruner(m, example, importance=tp.importance.MagnitudeImportance(p=1), pruning_ratio=ratio,
                              ignored_layers=[m[-1]])
    pr.step()
    return m


def latency_row(name, masked, small, x, repeats):
    with torch.no_grad():
        ref, out = masked.eval()(x), small.eval()(x)
    diff = (out - ref).abs().max().item()
    r = P.report(masked, small, x, repeats=repeats)
    q = statistics.quantiles(r.pairs, n=4)
    print(f"{name}: parameters {r.params_dense:,} -> {r.params:,} ({r.params / r.params_dense:.3f}x), "
          f"MACs/example {r.macs_dense:,} -> {r.macs:,} ({r.macs / r.macs_dense:.3f}x)")
    print(f"  dense (masked) latency {r.latency_dense * 1e3:.2f} ms, compact {r.latency * 1e3:.2f} ms, "
          f"ratio {r.latency_ratio:.3f} (median of {len(r.pairs)} pairs, quartiles {q[0]:.3f}-{q[2]:.3f}); "
          f"max |compact - masked| {diff:.2e} (outputs up to {ref.abs().max().item():.2f})")
    return r


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--compact-repeats", type=int, default=30)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--no-resnet", action="store_true", help="skip the ResNet-18 graph/preview rows")


def part_c(args) -> None:
    """(c) compact latency, preview time, the digits CNN, unstructured sparsity (the options of add_arguments)."""
    args.repeats = args.compact_repeats
    torch.manual_seed(0)
    print(f"(c) compact: torch {torch.__version__}, threads {torch.get_num_threads()}, ratio {args.ratio}, "
          f"batch {args.batch}")

    # 1. the ~1 M-parameter CNN on 32x32x3
    model = random_bn(vgg(32))
    x1, x = torch.randn(1, 3, 32, 32), torch.randn(args.batch, 3, 32, 32)
    masked = copy.deepcopy(model)
    P.channel_masks(masked, args.ratio, example=x1)
    small = P.compact(masked, example=x1)
    r = latency_row(f"VGG-style CNN + BN, batch {args.batch} of 32x32x3", masked, small, x, args.repeats)
    print(f"  target: ratio <= 0.45 -> {'met' if r.latency_ratio <= 0.45 else 'NOT met'}")

    build = seconds(lambda: plan_build(model, x1))
    comp = P.Compactor(model, x1)
    ratios = [0.1, 0.3, 0.5, 0.7, 0.9] * 2
    prev = []
    for rt in ratios:
        t = time.perf_counter()
        comp.preview(rt)
        prev.append(time.perf_counter() - t)
    prev_t = (statistics.median(prev), min(prev), max(prev))
    print(f"  channel plan (Torch-Pruning's graph + index lists), once per model: {fmt(build)}")
    print(f"  preview per slider move (copy, masks, cut, output check, counts) over ratios 0.1-0.9: {fmt(prev_t)} "
          f"-> {'met' if prev_t[2] <= 0.5 else 'NOT met'} (<= 0.5 s)")
    tg = seconds(lambda: tp_graph(copy.deepcopy(model), x1))
    tm = seconds(lambda: tp_move(model, x1, args.ratio))
    print(f"  Torch-Pruning alone: DependencyGraph build {fmt(tg)}; a slider move its way (copy, graph, MetaPruner "
          f"step at {args.ratio}) {fmt(tm)}")
    import torch_pruning as tp
    macs_tp, params_tp = tp.utils.count_ops_and_params(tp_move(model, x1, args.ratio), x1)
    print(f"  Torch-Pruning's pruned model: {int(params_tp):,} parameters, {int(macs_tp):,} MACs (its counter) "
          f"against ours {r.params:,}, {r.macs:,} (its channels are chosen by group importance, ours by each "
          f"layer's L1 norm)")

    if not args.no_resnet:  # where a graph costs seconds
        rn = random_bn(resnet18())
        build = seconds(lambda: plan_build(rn, x1), repeats=3)
        comp = P.Compactor(rn, x1)
        prev = seconds(lambda: comp.preview(args.ratio), repeats=3)
        tm = seconds(lambda: tp_move(rn, x1, args.ratio), repeats=3)
        pv = comp.preview(args.ratio)
        print(f"CIFAR ResNet-18 ({pv.params_dense:,} parameters) at {args.ratio}: channel plan {fmt(build)} once; "
              f"preview {fmt(prev)} ({pv.params:,} parameters, {pv.macs / pv.macs_dense:.3f}x MACs); Torch-Pruning's "
              f"slider move (copy, graph, prune) {fmt(tm)}")

    # 2. the digits CNN
    for spec in ("cnn", ("cnn", {"norm": "batchnorm"})):
        dm = trainlab.Run(model=spec, data="digits", device="cpu").model
        xd = torch.randn(args.batch, 64)
        masked = copy.deepcopy(dm)
        P.channel_masks(masked, args.ratio)
        latency_row(f"digits CNN {spec if isinstance(spec, str) else 'cnn, batchnorm'}, batch {args.batch} of 8x8",
                    masked, P.compact(masked), xd, args.repeats * 4)

    # 3. unstructured: the zeros are counted, and a dense kernel multiplies them anyway
    rep = P.unstructured_report(masked)
    print(f"unstructured_report of the masked digits CNN: {rep.zeros:,} of {rep.params:,} weights zero "
          f"({rep.sparsity:.1%}), speed-up {rep.speedup:.1f} (dense kernels)")
    W, X = torch.randn(1024, 1024), torch.randn(1024, 64)
    for sp in (0.9, 0.95, 0.99):
        Ws = W * (torch.rand_like(W) >= sp)
        csr = Ws.to_sparse_csr()
        err = (csr @ X - Ws @ X).abs().max().item()
        td, ts, pairs = [], [], []
        for i in range(args.repeats):
            order = ("d", "s") if i % 2 == 0 else ("s", "d")
            t = {}
            for k in order:
                t0 = time.perf_counter()
                (Ws @ X) if k == "d" else (csr @ X)
                t[k] = time.perf_counter() - t0
            td.append(t["d"]), ts.append(t["s"]), pairs.append(t["s"] / t["d"])
        print(f"  matmul 1024x1024 ({sp:.0%} zeros) @ 1024x64: dense {statistics.median(td) * 1e3:.2f} ms, "
              f"torch.sparse CSR {statistics.median(ts) * 1e3:.2f} ms, ratio {statistics.median(pairs):.2f} "
              f"(max diff {err:.1e})")




def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(ap)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    part_c(args)


if __name__ == "__main__":
    main()
