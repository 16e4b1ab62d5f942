"""A sweep of 100 small runs on a 2-worker LocalCluster against the same runs one after another in this process.

The same function trains each configuration both ways (`trainlab.sweeps.train`, one torch thread); the
parallel time runs from `trainlab.sweep(...)` (its checks included) to the last result, on a cluster
started and warmed beforehand (its start-up is printed apart). Sequential and parallel passes are
interleaved; the best of each is compared. Efficiency = (sequential / workers) / parallel; the target is
parallel <= 1.15 x sequential / 2, an efficiency >= 0.87. The load average is printed: on a machine shared
with other work, two workers do not get two whole cores. So the CPU seconds are printed too (this process's,
and the workers' from psutil): the work the sweep adds, whatever the load.

    python benchmarks/sweep.py [--runs 100] [--steps 200] [--repeats 3]
"""
from __future__ import annotations

import argparse
import os
import resource
import time

BASE = {"model": ("mlp", {"width": 16, "depth": 1}), "data": "moons", "optimizer": "sgd", "eval_every": 50}


def grid(runs: int) -> tuple[dict, list[int]]:
    """10 learning rates x runs / 10 seeds (fewer rates for fewer runs)."""
    lrs = [round(0.01 * (i + 1), 3) for i in range(min(runs, 10))]
    return {"lr": lrs}, list(range(max(1, runs // len(lrs))))


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)  # every thread of this process: the scheduler and client too
    return r.ru_utime + r.ru_stime


def _workers_cpu(pids: list[int]) -> float:
    import psutil

    return sum(sum(psutil.Process(p).cpu_times()[:2]) for p in pids)


def sequential(configs: list[dict]) -> tuple[float, float]:
    """(wall, CPU) seconds."""
    from trainlab.sweeps import train

    t, c0 = time.perf_counter(), _cpu()
    for c in configs:
        row = train(c)
        assert row["status"] == "finished", row
    return time.perf_counter() - t, _cpu() - c0


def parallel(client, steps: int, runs: int) -> tuple[float, float, float]:
    """(wall, workers' CPU, this process's CPU) seconds."""
    import trainlab

    pids = list(client.run(os.getpid).values())
    g, seeds = grid(runs)
    t, c0, w0 = time.perf_counter(), _cpu(), _workers_cpu(pids)
    sw = trainlab.sweep(BASE, grid=g, seeds=seeds, steps=steps, scheduler=client)
    sw.wait()
    elapsed, here, there = time.perf_counter() - t, _cpu() - c0, _workers_cpu(pids) - w0
    frame = sw.results()
    assert (frame["status"] == "finished").all() and len(frame) == len(g["lr"]) * len(seeds), frame
    return elapsed, there, here


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)  # this process trains as each worker does (the nanny sets their OMP_NUM_THREADS=1)
    from trainlab.sweeps.cluster import check_workers, connect
    from trainlab.sweeps.config import expand

    load = os.getloadavg()
    t = time.perf_counter()
    client, cluster, _ = connect(None, args.workers)
    check_workers(client, [])  # the workers import trainlab and torch before the clock starts
    print(f"{args.workers}-worker LocalCluster started and warmed in {time.perf_counter() - t:.1f} s")
    g, seeds = grid(args.runs)
    configs = [c for c, _ in expand({**BASE, "steps": args.steps}, g, seeds)[0]]
    sequential(configs[:2])  # warm-up, both ways: each process builds its first data set and steps once
    parallel(client, args.steps, 2 * args.workers)
    seq, par = [], []
    try:
        for r in range(args.repeats):
            for which in (("seq", "par") if r % 2 == 0 else ("par", "seq")):
                if which == "seq":
                    seq.append(sequential(configs))
                    print(f"  pass {r + 1} sequential: {seq[-1][0]:.2f} s (CPU {seq[-1][1]:.2f} s)", flush=True)
                else:
                    par.append(parallel(client, args.steps, args.runs))
                    wall, there, here = par[-1]
                    print(f"  pass {r + 1} parallel: {wall:.2f} s (CPU: workers {there:.2f} s, scheduler and client "
                          f"{here:.2f} s)", flush=True)
    finally:
        client.close()
        cluster.close()
    s, p = min(w for w, _ in seq), min(w for w, _, _ in par)
    ideal = s / args.workers
    print(f"{len(configs)} runs of {args.steps} steps: sequential {s:.2f} s, parallel on {args.workers} workers "
          f"{p:.2f} s (ideal {ideal:.2f} s): parallel / ideal {p / ideal:.2f}, efficiency {ideal / p:.2f} "
          f"(target: parallel / ideal <= 1.15)")
    cpu_seq, cpu_par = min(c for _, c in seq), min(a + b for _, a, b in par)
    print(f"CPU seconds, whatever the load: sequential {cpu_seq:.2f}, parallel {cpu_par:.2f} (all processes): "
          f"{cpu_par / cpu_seq:.2f}x the work; on {args.workers} otherwise idle cores this bounds parallel / ideal "
          f"from below")
    print(f"load average before {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} (1, 5, 15 min), after "
          f"{' / '.join(f'{x:.2f}' for x in os.getloadavg())}, on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
