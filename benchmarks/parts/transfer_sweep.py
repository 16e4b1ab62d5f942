"""μ-Transfer's sweep (width × lr × parametrization: the `width_lr` preset) on a 2-worker Dask LocalCluster, one
thread each, against the same configurations trained one after another in this process (one torch thread).

The same function trains each configuration both ways (`trainlab.sweeps.train`); the parallel time runs from
`trainlab.sweep(**preset)` (its checks included) to the last result, on a cluster started and warmed beforehand
(its start-up printed apart). The passes alternate (sequential first, then parallel first); the best of each is
compared, and the load average printed: on a machine shared with other work two workers do not get two cores.

    python benchmarks/normalization.py --parts c   (or alone: python benchmarks/parts/transfer_sweep.py)
"""
from __future__ import annotations

import argparse
import os
import time


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--sweep-steps", type=int, default=60, help="steps per run of the μ-Transfer sweep")
    ap.add_argument("--sweep-repeats", type=int, default=2, help="passes each way")
    ap.add_argument("--sweep-workers", type=int, default=2)


def _preset(steps: int) -> dict:
    from trainlab.sweeps import presets

    return presets.build("width_lr", steps=steps)


def _cpu(pids=()) -> float:
    import psutil

    return sum(sum(psutil.Process(p).cpu_times()[:2]) for p in (os.getpid(), *pids))


def sequential(configs: list[dict]) -> tuple[float, float]:
    """(wall, CPU) seconds."""
    from trainlab.sweeps import train

    t, c = time.perf_counter(), _cpu()
    for config in configs:
        row = train(config)
        assert row["status"] in ("finished", "diverged"), row
    return time.perf_counter() - t, _cpu() - c


def parallel(client, preset: dict, n: int) -> tuple[float, float]:
    """(wall, CPU of the workers and this process) seconds."""
    import trainlab

    pids = list(client.run(os.getpid).values())
    t, c = time.perf_counter(), _cpu(pids)
    sw = trainlab.sweep(**preset, scheduler=client)
    sw.wait()
    elapsed, cpu = time.perf_counter() - t, _cpu(pids) - c
    frame = sw.results()
    assert len(frame) == n and frame["status"].isin(["finished", "diverged"]).all(), frame
    return elapsed, cpu


def part_transfer_sweep(args) -> dict[str, float]:
    import torch

    from trainlab.sweeps.cluster import check_workers, connect
    from trainlab.sweeps.config import expand

    torch.set_num_threads(1)  # this process trains as each worker does
    preset = _preset(args.sweep_steps)
    configs = [c for c, _ in expand({**preset["base"], "steps": preset["steps"]}, preset["grid"], None)[0]]
    print(f"\n(c) μ-Transfer sweep (width_lr preset: {len(configs)} runs of {args.sweep_steps} steps), "
          f"{args.sweep_workers}-worker LocalCluster against one core")
    load = os.getloadavg()
    t = time.perf_counter()
    client, cluster, _ = connect(None, args.sweep_workers)
    check_workers(client, [])  # the workers import trainlab and torch before the clock starts
    print(f"  cluster started and warmed in {time.perf_counter() - t:.1f} s")
    sequential(configs[:2])  # warm-up: the first data set and step of this process
    seq, par = [], []
    try:
        for r in range(args.sweep_repeats):
            for which in (("seq", "par") if r % 2 == 0 else ("par", "seq")):
                if which == "seq":
                    seq.append(sequential(configs))
                    print(f"  pass {r + 1} one core:  {seq[-1][0]:.2f} s (CPU {seq[-1][1]:.2f} s)", flush=True)
                else:
                    par.append(parallel(client, preset, len(configs)))
                    print(f"  pass {r + 1} {args.sweep_workers} workers: {par[-1][0]:.2f} s (CPU, all processes "
                          f"{par[-1][1]:.2f} s)", flush=True)
    finally:
        client.close()
        cluster.close()
    s, p = min(w for w, _ in seq), min(w for w, _ in par)
    cs, cp = min(c for _, c in seq), min(c for _, c in par)
    print(f"  best: one core {s:.2f} s, {args.sweep_workers} workers {p:.2f} s: speed-up {s / p:.2f}x "
          f"(ideal {args.sweep_workers}x); CPU seconds {cs:.2f} against {cp:.2f} ({cp / cs:.2f}x the work); load "
          f"average before {load[0]:.2f}, after {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs. Where the "
          f"kernel's autogroup is on (/proc/sys/kernel/sched_autogroup_enabled), this session's processes share "
          f"one slice against other sessions': on a loaded machine two workers then do not get more CPU than one")
    return {"sequential": s, "parallel": p, "speedup": s / p}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(ap)
    part_transfer_sweep(ap.parse_args())


if __name__ == "__main__":
    main()
