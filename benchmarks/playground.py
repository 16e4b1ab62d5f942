"""The 2-D playground's recompute: 8 optimizers x 1,000 steps on Rosenbrock, Numba kernel vs torch loop.

A slider move in Playground2D recomputes every trajectory; target: under 16 ms (one frame at 60 Hz)
and at least 50x faster than the same trajectories from the torch optimizers (one tensor and one
optimizer per trajectory, 1,000 steps of zero_grad / forward / backward / step each, one thread).
The torch loop's paths are checked against the kernel's first.

Both are timed in one process, alternating: each round times the recompute many times (median) and
the torch loop once, and the ratio is the median over rounds, since this machine's speed drifts.
Also timed: the bare kernel call, Playground2D's whole redraw after a slider move (no browser), and
the fair race (8 optimizers x 16 lrs x 1,000 steps in one batched kernel call).

    python benchmarks/playground.py [--steps 1000] [--rounds 5] [--repeats 200]
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import pytorch_optimizer
import torch

from trainlab import playground as pg
from trainlab.kernels import playground as K

OPTIMIZERS = ["sgd", "momentum", "nesterov", "adam", "rmsprop", "adagrad", "lion", "adan"]


def torch_optimizer(name: str, p: torch.Tensor, hp: dict) -> torch.optim.Optimizer:
    if name in ("sgd", "momentum", "nesterov"):
        return torch.optim.SGD([p], lr=hp["lr"], momentum=hp.get("momentum", 0.0), dampening=hp.get("dampening", 0.0),
                               nesterov=name == "nesterov", weight_decay=hp["weight_decay"])
    if name == "adam":
        return torch.optim.Adam([p], lr=hp["lr"], betas=(hp["beta1"], hp["beta2"]), eps=hp["eps"])
    if name == "rmsprop":
        return torch.optim.RMSprop([p], lr=hp["lr"], alpha=hp["alpha"], eps=hp["eps"], momentum=hp["momentum"])
    if name == "adagrad":
        return torch.optim.Adagrad([p], lr=hp["lr"], eps=hp["eps"])
    if name == "lion":
        return pytorch_optimizer.Lion([p], lr=hp["lr"], betas=(hp["beta1"], hp["beta2"]))
    if name == "adan":
        return pytorch_optimizer.Adan([p], lr=hp["lr"], betas=(hp["beta1"], hp["beta2"], hp["beta3"]), eps=hp["eps"])
    raise KeyError(name)


def rosenbrock(p: torch.Tensor, a: float = 1.0, b: float = 100.0) -> torch.Tensor:
    return (a - p[0]) ** 2 + b * (p[1] - p[0] ** 2) ** 2


def torch_loop(paths: list[pg.Trajectory], steps: int) -> list[np.ndarray]:
    out = []
    for t in paths:
        p = torch.tensor(t.start, dtype=torch.float64, requires_grad=True)
        opt = torch_optimizer(t.optimizer, p, t.hyperparameters)
        xy = np.empty((steps + 1, 2))
        xy[0] = t.start
        for i in range(steps):
            opt.zero_grad()
            rosenbrock(p).backward()
            opt.step()
            xy[i + 1] = p.detach().numpy()
        out.append(xy)
    return out


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=200)
    args = ap.parse_args()
    torch.set_num_threads(1)

    recompute = lambda: pg.trajectories("rosenbrock", OPTIMIZERS, steps=args.steps)  # noqa: E731
    paths = recompute()  # JIT warm-up (compiled code is cached on disk after the first run)
    print(f"8 optimizers x {args.steps} steps on Rosenbrock from {paths[0].start}, default hyperparameters:")
    ref = torch_loop(paths, args.steps)
    # largest distance between the paths, relative to the path's size; where a path keeps bouncing
    # (rmsprop and adan here) roundoff grows along it: tests/test_playground.py holds bounded ones to 1e-8
    for t, r in zip(paths, ref):
        print(f"  {t.optimizer:9s} lr {t.lr:<6g} final loss {t.final_loss:.2e}, kernel vs torch path: "
              f"{np.abs(t.xy - r).max() / np.abs(r).max():.1e}")

    f = pg.as_function("rosenbrock")  # the bare kernel call, without the lab's validation around it
    codes = np.array([pg.rules[t.optimizer].meta.code for t in paths])
    hps = np.stack([pg.rules[t.optimizer].build(**t.hyperparameters) for t in paths])
    starts = np.array([t.start for t in paths])
    bare = lambda: K.trajectories(f.code, np.array(f.fp), codes, hps, starts, args.steps, 1e3)  # noqa: E731
    bare()

    race = lambda: pg.fair_race("rosenbrock", OPTIMIZERS, steps=args.steps, lrs=pg.lr_grid(1e-5, 1.0, 16))  # noqa: E731
    race()
    from trainlab.widgets.playground import Playground2D  # a slider move in the widget: the same + Bokeh sources

    widget = Playground2D(optimizers=OPTIMIZERS, steps=args.steps)
    kernel, loop, ratios, races, bares, redraws = [], [], [], [], [], []
    for r in range(args.rounds):
        k = median_time(recompute, args.repeats)
        t0 = time.perf_counter()
        torch_loop(paths, args.steps)
        t = time.perf_counter() - t0
        races.append(median_time(race, max(3, args.repeats // 20)))
        bares.append(median_time(bare, args.repeats))
        redraws.append(median_time(widget._recompute, max(3, args.repeats // 4)))
        kernel.append(k), loop.append(t), ratios.append(t / k)
        print(f"round {r + 1}: recompute {k * 1e3:.3f} ms, torch loop {t * 1e3:.0f} ms, ratio {t / k:.0f}x, "
              f"fair race {races[-1] * 1e3:.1f} ms, bare kernel {bares[-1] * 1e3:.3f} ms, "
              f"Playground2D redraw {redraws[-1] * 1e3:.1f} ms")
    k, t, ratio = statistics.median(kernel), statistics.median(loop), statistics.median(ratios)
    print(f"recompute (trainlab.playground.trajectories, 8 x {args.steps} steps): {k * 1e3:.3f} ms "
          f"(target < 16 ms: {'ok' if k < 0.016 else 'MISSED'})")
    print(f"  of which the kernel call: {statistics.median(bares) * 1e3:.3f} ms (the rest is validation and slicing)")
    print(f"  Playground2D's whole redraw (paths, Bokeh sources, legend, table): "
          f"{statistics.median(redraws) * 1e3:.1f} ms")
    print(f"torch optimizers, same paths: {t * 1e3:.0f} ms; ratio {ratio:.0f}x (target >= 50x: "
          f"{'ok' if ratio >= 50 else 'MISSED'})")
    print(f"fair race (8 optimizers x 16 lrs x {args.steps} steps, one batched call): "
          f"{statistics.median(races) * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
