"""What trainlab's instrumentation costs: 2,000 steps of the digits MLP, bare torch loop vs run.step.

Both loops train the same model (same initial weights) with the same optimizer, batch size and
batching (a fresh random permutation per epoch, indexed on the device), in one process. The Run
adds what the dashboard needs: per-step loss, accuracy and gradient norm (with the divergence
check), the default probes (per-layer gradient norms, update/weight ratios every 10 steps) and a
validation pass every 50 steps. Target: ratio <= 1.15.

    python benchmarks/run_overhead.py [--steps 2000] [--repeats 5]
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torch.nn.functional as F

import trainlab


def bare_loop(model, X, y, steps, batch_size, lr, momentum, seed):
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    gen = torch.Generator().manual_seed(seed)
    n, pos, perm = len(X), len(X), None
    for _ in range(steps):
        if pos + batch_size > n:
            perm, pos = torch.randperm(n, generator=gen), 0
        idx = perm[pos : pos + batch_size]
        pos += batch_size
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(X[idx]), y[idx])
        loss.backward()
        opt.step()
    return loss.item()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    kw = dict(lr=0.05, momentum=0.9, batch_size=64, seed=0)
    template = trainlab.Run(model="mlp", data="digits", optimizer="sgd", device="cpu", **kw)
    X, y = template.data.X, template.data.y
    bare, lab = [], []
    for _ in range(args.repeats):  # interleaved, so drifts in machine load hit both alike
        model = copy.deepcopy(template.model)
        model.load_state_dict(template._initial_state)
        t = time.perf_counter()
        bare_loop(model, X, y, args.steps, kw["batch_size"], kw["lr"], kw["momentum"], kw["seed"])
        bare.append(time.perf_counter() - t)
        template.reset()
        t = time.perf_counter()
        template.step(args.steps)
        lab.append(time.perf_counter() - t)
    # the fastest of the interleaved repeats: on a shared, noisy machine the minimum is the time
    # least inflated by other load (timeit's rule); the medians are printed too
    b, r = min(bare), min(lab)
    print(f"digits MLP {sum(p.numel() for p in template.model.parameters()):,} parameters, {args.steps} steps, "
          f"best of {args.repeats} interleaved repeats, torch threads: {torch.get_num_threads()}")
    print(f"bare torch loop : {b:.3f} s  ({b / args.steps * 1e6:.0f} us/step)")
    print(f"trainlab Run    : {r:.3f} s  ({r / args.steps * 1e6:.0f} us/step, {len(template.history)} history rows)")
    print(f"ratio           : {r / b:.3f}  (target <= 1.15; ratio of medians {statistics.median(lab) / statistics.median(bare):.3f})")


if __name__ == "__main__":
    main()
