"""Torch threads for small models: 300 steps of the default xor MLP with one thread against torch's
default (one per core), on a quiet machine and on one kept busy by other work.

The busy case starts one busy-looping process per CPU this process may use, as other sessions or
other jobs on a shared server would. `Run(threads="auto")` picks 1 for models this small; the ratio
printed is default / one thread (above 1: one thread is faster). Interleaved pairs, the median.

    python benchmarks/threads.py [--steps 300] [--repeats 5]
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import time

import torch

import trainlab


def _burn(stop) -> None:
    while not stop.is_set():
        sum(i * i for i in range(10_000))


def _time(threads: int, steps: int) -> float:
    run = trainlab.Run(data="xor", threads=threads, seed=0)
    t = time.perf_counter()
    run.step(steps)
    return time.perf_counter() - t


def measure(steps: int, repeats: int, default: int) -> tuple[float, float, float]:
    one, many = [], []
    for r in range(repeats):
        for n in ((1, default) if r % 2 == 0 else (default, 1)):
            (one if n == 1 else many).append(_time(n, steps))
    ratio = statistics.median(b / a for a, b in zip(one, many))
    return statistics.median(one), statistics.median(many), ratio


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    cpus = trainlab.available_cpus()
    default = torch.get_num_threads()
    auto = trainlab.Run(data="xor").threads
    print(f"{cpus} CPUs available to this process; torch's default {default} threads; Run(threads='auto') picks {auto}")
    if default == 1:
        print("torch defaults to one thread here: nothing to compare")
        return
    _time(1, 20)  # warm-up
    one, many, ratio = measure(args.steps, args.repeats, default)
    print(f"quiet: {args.steps} steps on 1 thread {one:.2f} s, on {default} threads {many:.2f} s: "
          f"default / one thread {ratio:.2f}")
    stop = mp.Event()
    burners = [mp.Process(target=_burn, args=(stop,), daemon=True) for _ in range(cpus)]
    for p in burners:
        p.start()
    try:
        one, many, ratio = measure(args.steps, args.repeats, default)
    finally:
        stop.set()
        for p in burners:
            p.join(5)
    print(f"busy ({cpus} other busy processes): 1 thread {one:.2f} s, {default} threads {many:.2f} s: "
          f"default / one thread {ratio:.2f}")


if __name__ == "__main__":
    main()
