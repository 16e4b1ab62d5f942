"""What trainlab's instrumentation costs: 2,000 steps of the digits MLP, bare torch loop vs run.step.

Both loops train the same model (same initial weights) with the same optimizer, batch size and
batching (a fresh random permutation per epoch, indexed on the device), in one process. The Run
adds what the dashboard needs: per-step loss, accuracy and gradient norm (with the divergence
check), the default probes (per-layer gradient norms, update/weight ratios every 10 steps) and a
validation pass every 50 steps. Target: ratio <= 1.15.

The 2,000 steps go in chunks, the two loops alternating chunk by chunk (which one goes first
alternates too), and the ratio is the median over chunk pairs: this machine's speed drifts by
tens of percent over seconds, and a pair run back to back sees the same drift.

    python benchmarks/run_overhead.py [--steps 2000] [--chunk 250] [--repeats 3]
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torch.nn.functional as F

import trainlab


class BareLoop:
    """The plain torch training loop, resumable chunk by chunk."""

    def __init__(self, model, X, y, batch_size, lr, momentum, seed):
        self.model, self.X, self.y, self.bs = model, X, y, batch_size
        self.opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
        self.gen = torch.Generator().manual_seed(seed)
        self.pos, self.perm = len(X), None

    def step(self, n: int) -> None:
        X, y, bs, N = self.X, self.y, self.bs, len(self.X)
        for _ in range(n):
            if self.pos + bs > N:
                self.perm, self.pos = torch.randperm(N, generator=self.gen), 0
            idx = self.perm[self.pos : self.pos + bs]
            self.pos += bs
            self.opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(self.model(X[idx]), y[idx])
            loss.backward()
            self.opt.step()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--chunk", type=int, default=250)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (small models: 1 is fastest)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    kw = dict(lr=0.05, momentum=0.9, batch_size=64, seed=0)
    run = trainlab.Run(model="mlp", data="digits", optimizer="sgd", device="cpu", **kw)
    ratios, bare_totals, lab_totals = [], [], []
    for rep in range(args.repeats):
        model = copy.deepcopy(run.model)
        model.load_state_dict(run.initial_state)
        bare = BareLoop(model, run.data.X, run.data.y, kw["batch_size"], kw["lr"], kw["momentum"], kw["seed"])
        run.reset()
        tb = tl = 0.0
        for i, start in enumerate(range(0, args.steps, args.chunk)):
            n = min(args.chunk, args.steps - start)
            times = {}
            for name in (("bare", "lab") if i % 2 == 0 else ("lab", "bare")):
                t = time.perf_counter()
                bare.step(n) if name == "bare" else run.step(n)
                times[name] = time.perf_counter() - t
            ratios.append(times["lab"] / times["bare"])
            tb, tl = tb + times["bare"], tl + times["lab"]
        bare_totals.append(tb)
        lab_totals.append(tl)
    b, r = statistics.median(bare_totals), statistics.median(lab_totals)
    print(f"digits MLP {sum(p.numel() for p in run.model.parameters()):,} parameters, {args.steps} steps in chunks "
          f"of {args.chunk}, {args.repeats} repeats, torch threads: {torch.get_num_threads()}")
    print(f"bare torch loop : {b:.3f} s  ({b / args.steps * 1e6:.0f} us/step)")
    print(f"trainlab Run    : {r:.3f} s  ({r / args.steps * 1e6:.0f} us/step, {len(run.history)} history rows)")
    q = statistics.quantiles(ratios, n=4)
    print(f"ratio           : {statistics.median(ratios):.3f}  (median of {len(ratios)} chunk pairs, quartiles "
          f"{q[0]:.3f}-{q[2]:.3f}; ratio of totals {r / b:.3f}; target <= 1.15)")


if __name__ == "__main__":
    main()
