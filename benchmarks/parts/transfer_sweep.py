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


def sequential(configs: list[dict]) -> float:
    from trainlab.sweeps import train

    t = time.perf_counter()
    for c in configs:
        row = train(c)
        assert row["status"] in ("finished", "diverged"), row
    return time.perf_counter() - t


def parallel(client, preset: dict, n: int) -> float:
    import trainlab

    t = time.perf_counter()
    sw = trainlab.sweep(**preset, scheduler=client)
    sw.wait()
    elapsed = time.perf_counter() - t
    frame = sw.results()
    assert len(frame) == n and frame["status"].isin(["finished", "diverged"]).all(), frame
    return elapsed


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
                    print(f"  pass {r + 1} one core:  {seq[-1]:.2f} s", flush=True)
                else:
                    par.append(parallel(client, preset, len(configs)))
                    print(f"  pass {r + 1} {args.sweep_workers} workers: {par[-1]:.2f} s", flush=True)
    finally:
        client.close()
        cluster.close()
    s, p = min(seq), min(par)
    print(f"  best: one core {s:.2f} s, {args.sweep_workers} workers {p:.2f} s: speed-up {s / p:.2f}x "
          f"(ideal {args.sweep_workers}x); load average before {load[0]:.2f}, after {os.getloadavg()[0]:.2f} "
          f"on {os.cpu_count()} CPUs")
    return {"sequential": s, "parallel": p, "speedup": s / p}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(ap)
    part_transfer_sweep(ap.parse_args())


if __name__ == "__main__":
    main()
