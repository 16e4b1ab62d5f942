"""What pruning costs: (a) a masked training step against the dense step and torch.nn.utils.prune's hooks;
(b) the time to compute masks for a ~10 M-parameter model against torch's own tools.

(a) Runs on the digits MLP (and the digits CNN) train in one process with the same initial weights,
optimizer (SGD + momentum) and batches: dense; trainlab's masks (gradients masked before the optimizer
step, weights after it, the dense forward) for each mask kind (unstructured per layer, global, 2:4,
block); and the same masks as `torch.nn.utils.prune.custom_from_mask` hooks (weight = weight_orig * mask
recomputed in a forward pre-hook). Each variant's chunk runs back to back with a chunk of the dense run
(which goes first alternates; the variants' order rotates), and each ratio is the median over those
pairs. Probes off in all (the SparsityProbe measures, it does not mask).
Target: masked <= 1.10x dense for every kind.

(b) Global magnitude masks at 90 % (trainlab's Sparsifier against `prune.global_unstructured` with
L1Unstructured) and 2:4 masks (the Numba kernel `nm_mask`, a vectorized torch topk over groups, and
`torch.ao.pruning.WeightNormSparsifier`), median of interleaved repeats. On CPU no N:M speed-up exists
for the forward itself: PyTorch's semi-structured kernels are CUDA-only.

(c) Compaction (`benchmarks/parts/pruning_compact.py`, also runnable alone): the compacted model's measured
latency against the masked one, the preview time per move of the ratio slider, the digits CNN, and
unstructured sparsity's honest no-speed-up beside a CSR matmul.

    python benchmarks/pruning.py [--steps 1500] [--chunk 100] [--repeats 5] [--models mlp,cnn] [--parts abc]
                                 [--compact-repeats 30] [--batch 64] [--ratio 0.5] [--no-resnet]
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from torch import nn
from torch.ao.pruning import WeightNormSparsifier
from torch.nn.utils import prune as torch_prune

import trainlab
import trainlab.prune as P
from trainlab.prune.structured import nm_mask_torch

from parts import pruning_compact as compact  # part (c); benchmarks/ is this script's folder, so on sys.path

KINDS = {
    "layer": dict(method="magnitude", sparsity=0.9, scope="layer"),
    "global": dict(method="magnitude", sparsity=0.9, scope="global"),
    "2:4": dict(method="magnitude", pattern="nm", n=2, m=4, scope="layer"),
    "block 2x4": dict(method="magnitude", sparsity=0.75, pattern="block", block=(2, 4), scope="layer"),
}


def _valid(model, spec):
    """The prunable weights this mask kind fits (a conv of 9 inputs takes no 2:4 groups)."""
    out = []
    for k in P.prunable(model):
        try:
            P.Sparsifier(model, weights=[k], **spec)
            out.append(k)
        except ValueError:
            pass
    return out


def _run(model_name, **kw):
    run = trainlab.Run(model=model_name, data="digits", device="cpu", optimizer="sgd", lr=0.05, momentum=0.9,
                       batch_size=64, seed=0, probes=[], eval_every=10**9, threads=1, **kw)
    for p in list(run.probes):
        run.remove_probe(p)
    return run


def _hooked(model_name, masks):
    """The dense model with the same masks as torch.nn.utils.prune hooks, trained by the same Run."""
    base = _run(model_name)
    model = copy.deepcopy(base.model)
    for name, keep in masks.items():
        mod_name = name.rsplit(".", 1)[0]
        torch_prune.custom_from_mask(model.get_submodule(mod_name), "weight", keep)
    return _run(model)


def part_a(model_name, steps, chunk):
    dense = _run(model_name)
    runs = {"dense": dense}
    for kind, spec in KINDS.items():
        weights = _valid(dense.model, spec)
        runs[kind] = _run(model_name, pruning={**spec, "weights": weights})
        for p in list(runs[kind].probes):
            runs[kind].remove_probe(p)
        runs[f"torch.prune {kind}"] = _hooked(model_name, P.masks(runs[kind].model))
    names = list(runs)
    times = {n: [] for n in names}
    ratios = {n: [] for n in names[1:]}
    for i in range(steps // chunk):
        for j, n in enumerate(names[1:][i % (len(names) - 1):] + names[1:][: i % (len(names) - 1)]):
            pair = {}
            for m in ((n, "dense") if (i + j) % 2 else ("dense", n)):  # back to back: the same drift
                t = time.perf_counter()
                runs[m].step(chunk)
                pair[m] = (time.perf_counter() - t) / chunk
                times[m].append(pair[m])
            ratios[n].append(pair[n] / pair["dense"])
    for n in names[1:]:  # pruned weights still exactly zero after training
        if not n.startswith("torch"):
            ms = P.masks(runs[n].model)
            params = dict(runs[n].model.named_parameters())
            assert all((params[k].detach()[~m] == 0).all() for k, m in ms.items()), n
    d = statistics.median(times["dense"])
    nparams = sum(p.numel() for p in dense.model.parameters())
    print(f"\n(a) {model_name} ({nparams:,} parameters), {steps} steps in chunks of {chunk}, SGD+momentum, batch 64")
    print(f"    {'dense':24s} {d * 1e6:7.0f} us/step")
    for n in names[1:]:
        r = statistics.median(ratios[n])
        s = P.sparsity(runs[n].model)["global"] if not n.startswith("torch") else float("nan")
        extra = f"  (sparsity from the weights {s:.3f})" if s == s else ""
        print(f"    {n:24s} {statistics.median(times[n]) * 1e6:7.0f} us/step  ratio {r:.3f}{extra}")


def _big():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(1024, 2048), nn.ReLU(), nn.Linear(2048, 2048), nn.ReLU(),
                         nn.Linear(2048, 1024), nn.ReLU(), nn.Linear(1024, 1024))


def _time(fn, prepare=None):
    model = prepare() if prepare else None
    t = time.perf_counter()
    fn(model)
    return time.perf_counter() - t


def part_b(repeats):
    base = _big()
    n = sum(p.numel() for p in base.parameters())

    def ours_global(m):
        P.Sparsifier(m, method="magnitude", sparsity=0.9, scope="global").apply()

    def torch_global(m):
        params = [(mod, "weight") for mod in m if isinstance(mod, nn.Linear)]
        torch_prune.global_unstructured(params, pruning_method=torch_prune.L1Unstructured, amount=0.9)

    def ours_nm(m):
        for mod in m:
            if isinstance(mod, nn.Linear):
                P.nm_mask(mod.weight, 2, 4)

    def torch_nm(m):
        for mod in m:
            if isinstance(mod, nn.Linear):
                nm_mask_torch(mod.weight, 2, 4)

    def ao_nm(m):
        sp = WeightNormSparsifier(sparsity_level=1.0, sparse_block_shape=(1, 4), zeros_per_block=2)
        sp.prepare(m, [{"tensor_fqn": f"{i}.weight"} for i, mod in enumerate(m) if isinstance(mod, nn.Linear)])
        sp.step()

    ours_nm(copy.deepcopy(base))  # JIT compile (cached on disk after the first run)
    cases = {"global magnitude 90 %": [("trainlab Sparsifier", ours_global), ("prune.global_unstructured", torch_global)],
             "2:4 masks": [("trainlab nm_mask (Numba)", ours_nm), ("torch topk over groups", torch_nm),
                           ("WeightNormSparsifier", ao_nm)]}
    print(f"\n(b) masks for a {n / 1e6:.1f} M-parameter MLP (1024-2048-2048-1024-1024), median of {repeats}")
    for case, fns in cases.items():
        times = {name: [] for name, _ in fns}
        for r in range(repeats):
            for name, fn in (fns if r % 2 == 0 else fns[::-1]):
                times[name].append(_time(fn, lambda: copy.deepcopy(base)))
        first = statistics.median(times[fns[0][0]])
        for name, _ in fns:
            t = statistics.median(times[name])
            print(f"    {case:22s} {name:28s} {t * 1e3:8.1f} ms  ({t / first:.2f}x trainlab)")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--chunk", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--models", default="mlp,cnn")
    ap.add_argument("--parts", default="abc", help="which parts to run")
    compact.add_arguments(ap)
    args = ap.parse_args()
    torch.set_num_threads(1)
    if "a" in args.parts:
        for m in args.models.split(","):
            part_a(m, args.steps if m == "mlp" else args.steps // 2, args.chunk if m == "mlp" else args.chunk // 2)
    if "b" in args.parts:
        part_b(args.repeats)
    if "c" in args.parts:
        compact.part_c(args)


if __name__ == "__main__":
    main()
