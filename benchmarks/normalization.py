"""What the normalization lab costs: (a) each norm written here against torch's LayerNorm on the same tensor.

(a) Forward + backward (the gradient of the input and of every parameter) of PowerNorm, EvoNorm-B0,
EvoNorm-S0 and RMSNorm2d against `nn.LayerNorm` over the same tensor's (C[, H, W]) axes, in training mode,
for features (N, C) and feature maps (N, C, H, W); the EvoNorms, which replace a norm and its activation,
also against LayerNorm followed by that activation. The weight-standardizing norms (WS + BCN, scaled WS)
act on the layer before them, so theirs is "layer with standardized weight + its norm" against "the
same plain layer + LayerNorm". Each pair runs in alternating chunks in one process (one torch thread),
timed in CPU time of this thread (the machine is shared: wall time also counts other processes' turns)
and taken at the best chunk (interference only ever adds). Shapes: the two of the target, then sizes
typical of the models (MLP widths 64-1024 at batch 64-256, a CNN's maps from 16x16 to 2x2) with `--sizes all`.
Target: <= 1.5x the layers each replaces (LayerNorm; for the EvoNorms, LayerNorm + activation).

(b) μP's coordinate check, six widths 64 … 2048 (`benchmarks/parts/coord_check.py`, also runnable alone),
against `mup.coord_check.get_coord_data(..., cuda=False)` on the same work (a plain loop when `mup` is absent).
Target: <= 3 s.

(c) μ-Transfer's sweep (the `width_lr` preset) on a 2-worker Dask LocalCluster against the same configurations on
one core (`benchmarks/parts/transfer_sweep.py`, also runnable alone), passes interleaved: both times, the speed-up.

    python benchmarks/normalization.py [--parts abc] [--repeats 15] [--chunk 20] [--sizes all]
"""
from __future__ import annotations

import argparse
import time

import torch
from parts import coord_check, transfer_sweep  # parts (b), (c); benchmarks/ is this script's folder, so on sys.path
from torch import nn

from trainlab.norms import follow
from trainlab.normlayers import EvoNormB0, EvoNormS0, PowerNorm, RMSNorm2d

SHAPES = {"features (1024, 256)": (1024, 256), "maps (32, 32, 16, 16)": (32, 32, 16, 16)}
# EvoNorms are normalization-activation layers: a model built with one drops its activation there (norms.py),
# so the work they replace is LayerNorm and that activation: S0's x σ(v x) is SiLU's at v = 1, B0 stands
# for BatchNorm-ReLU (Liu et al. 2020). Its σ alone costs about 0.6x LayerNorm's forward and backward.
ACTIVATION = {"evonorm_s0": nn.SiLU, "evonorm_b0": nn.ReLU}
# (64, 16, 8, 8): the embedded CNN's first norm on digits at batch 64; 3x3 and 2x2: a CNN's last maps
TYPICAL = {"features (64, 64)": (64, 64), "features (1024, 64)": (1024, 64), "features (128, 256)": (128, 256),
           "features (256, 1024)": (256, 1024), "maps (64, 32, 16, 16)": (64, 32, 16, 16),
           "maps (64, 16, 8, 8)": (64, 16, 8, 8), "maps (1024, 64, 3, 3)": (1024, 64, 3, 3),
           "maps (1024, 64, 2, 2)": (1024, 64, 2, 2)}


def _fwd_bwd(module, x, gy):
    def f():
        y = module(x)
        y.backward(gy)
    return f


def _chunked(fns: dict, repeats: int, chunk: int) -> dict[str, float]:
    """CPU seconds per call of each fn at its best chunk, run in alternating chunks (the order rotating)."""
    times = {k: [] for k in fns}
    names = list(fns)
    for f in fns.values():  # warm-up
        f()
    for r in range(repeats):
        for k in names[r % len(names):] + names[: r % len(names)]:
            t = time.thread_time()
            for _ in range(chunk):
                fns[k]()
            times[k].append((time.thread_time() - t) / chunk)
    return {k: min(v) for k, v in times.items()}


def _layer(dims: int, c: int) -> nn.Module:
    return nn.Linear(c, c) if dims == 1 else nn.Conv2d(c, c, 3, padding=1)


def part_a(repeats: int, chunk: int, sizes: str = "target") -> dict[str, float]:
    print("\n(a) forward + backward against torch's LayerNorm on the same tensor, training mode (CPU ms per call)")
    ratios, alone = {}, {}
    shapes = SHAPES if sizes == "target" else {**SHAPES, **TYPICAL}
    for label, shape in shapes.items():
        dims, c = (1 if len(shape) == 2 else 2), shape[1]
        g = torch.Generator().manual_seed(0)
        x = torch.randn(shape, generator=g).requires_grad_()
        gy = torch.randn(shape, generator=g)
        ln = nn.LayerNorm(shape[1:])
        ours = {"powernorm": PowerNorm(c), "evonorm_s0": EvoNormS0(c, groups=4)}
        if dims == 2:
            ours.update(evonorm_b0=EvoNormB0(c), rmsnorm2d=RMSNorm2d(c))
        print(f"  {label}: LayerNorm", end="")
        for name, module in ours.items():
            fns = {"ln": _fwd_bwd(ln, x, gy), name: _fwd_bwd(module, x, gy)}
            act = ACTIVATION.get(name)
            if act:
                fns["ln+act"] = _fwd_bwd(nn.Sequential(nn.LayerNorm(shape[1:]), act()), x, gy)
            t = _chunked(fns, repeats, chunk)
            ratios[f"{name} {label}"] = t[name] / t["ln+act" if act else "ln"]
            alone[f"{name} {label}"] = t[name] / t["ln"]
            print(f"\n    {name:12s} {t[name] * 1e3:8.3f} ms   LayerNorm {t['ln'] * 1e3:8.3f} ms   ratio {t[name] / t['ln']:.2f}",
                  end="")
            if act:
                print(f"   LayerNorm+{act.__name__} {t['ln+act'] * 1e3:8.3f} ms   ratio {ratios[f'{name} {label}']:.2f}", end="")
        for name in ("ws_bcn", "scaled_ws"):
            torch.manual_seed(0)
            plain = nn.Sequential(_layer(dims, c), nn.LayerNorm(shape[1:]))
            torch.manual_seed(0)
            layer, norm = follow(name, _layer(dims, c), dims, "relu", "benchmark")
            t = _chunked({"ln": _fwd_bwd(plain, x, gy), name: _fwd_bwd(nn.Sequential(layer, norm), x, gy)}, repeats, chunk)
            ratios[f"{name} {label}"] = t[name] / t["ln"]
            print(f"\n    {name:12s} {t[name] * 1e3:8.3f} ms   layer+LN  {t['ln'] * 1e3:8.3f} ms   ratio {t[name] / t['ln']:.2f}"
                  "  (the layer included)", end="")
        print()
    worst = max(ratios, key=ratios.get)
    print(f"  worst against the layers each replaces: {worst} at {ratios[worst]:.2f}x (target <= 1.5x)")
    worst = max(alone, key=alone.get)
    print(f"  worst against LayerNorm alone: {worst} at {alone[worst]:.2f}x")
    return ratios


PARTS = {"a": part_a, "b": coord_check.part_coord_check, "c": transfer_sweep.part_transfer_sweep}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", default="".join(PARTS), help="which parts to run")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--chunk", type=int, default=20)
    ap.add_argument("--sizes", choices=("target", "all"), default="target",
                    help="part (a)'s shapes: the target's two, or also sizes typical of the models")
    coord_check.add_arguments(ap)
    transfer_sweep.add_arguments(ap)
    args = ap.parse_args()
    torch.set_num_threads(1)
    if "a" in args.parts:
        part_a(args.repeats, args.chunk, args.sizes)
    if "b" in args.parts:
        coord_check.part_coord_check(args)
    if "c" in args.parts:
        transfer_sweep.part_transfer_sweep(args)


if __name__ == "__main__":
    main()
