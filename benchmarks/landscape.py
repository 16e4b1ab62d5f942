"""The same 51x51 filter-normalized loss plane by loss-landscapes, by trainlab, and the floor.

The floor is the same number of plain `loss_fn(model(X), y)` evaluations in a bare loop with no
weight changes. Models: the digits MLP and the small CNN (`Run(model="cnn", data="digits")`), a
few steps trained, on the full training split (1,437 examples), one torch thread. The three are
run in one process, in rotating order, and the ratios are the medians of each round's ratios
(these machines are noisy). Targets: trainlab <= 1.2x the floor and never slower than
loss-landscapes; the first coarse 11x11 picture of the digits MLP in under 0.5 s.

    python benchmarks/landscape.py [--repeats 3] [--steps 51] [--models mlp,cnn]

The CNN's forward pass on the 1,437 digits costs ~25x the MLP's, so its three 51x51 planes take minutes.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

import trainlab
from trainlab.analysis import landscape


def _floor(model, loss_fn, X, y, n):
    with torch.no_grad():
        for _ in range(n):
            loss_fn(model(X), y).item()


def _peer(model, loss_fn, X, y, steps):
    import loss_landscapes
    from loss_landscapes.metrics import Loss

    loss_landscapes.random_plane(model, Loss(loss_fn, X, y), distance=1, steps=steps, normalization="filter",
                                 deepcopy_model=True)


def _ours(model, loss_fn, X, y, steps):
    landscape.plane(model, loss_fn, (X, y), steps=steps, directions="filter", progress=False)


def bench(name: str, spec, repeats: int, steps: int) -> None:
    run = trainlab.Run(model=spec, data="digits", seed=0, probes=[])
    run.step(100)
    model, loss_fn, X, y = run.model.eval(), run.loss_fn, run.data.X, run.data.y
    n_params = sum(p.numel() for p in model.parameters())
    tasks = {"loss-landscapes": lambda: _peer(model, loss_fn, X, y, steps),
             "trainlab": lambda: _ours(model, loss_fn, X, y, steps),
             "floor": lambda: _floor(model, loss_fn, X, y, steps * steps)}
    _ours(model, loss_fn, X, y, 3)  # warm-up: first-call costs out of the timings
    _floor(model, loss_fn, X, y, 20)
    times = {k: [] for k in tasks}
    order = list(tasks)
    for r in range(repeats):
        for k in order[r % 3:] + order[: r % 3]:  # rotate who goes first
            t = time.perf_counter()
            tasks[k]()
            times[k].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    vs_floor = statistics.median(a / b for a, b in zip(times["trainlab"], times["floor"]))
    vs_peer = statistics.median(a / b for a, b in zip(times["trainlab"], times["loss-landscapes"]))
    peer_floor = statistics.median(a / b for a, b in zip(times["loss-landscapes"], times["floor"]))
    print(f"{name} ({n_params:,} parameters, {len(X)} examples, {steps}x{steps} plane, median of {repeats}):")
    print(f"  loss-landscapes {med['loss-landscapes']:6.2f} s   trainlab {med['trainlab']:6.2f} s   "
          f"floor {med['floor']:6.2f} s")
    print(f"  trainlab / floor {vs_floor:.2f} (target <= 1.2)   trainlab / loss-landscapes {vs_peer:.2f} (target <= 1)"
          f"   loss-landscapes / floor {peer_floor:.2f}")


def first_picture(repeats: int = 7) -> None:
    """The panel's first picture: an 11x11 grid on the full data, and on the 512-example preview subset."""
    run = trainlab.Run(model="mlp", data="digits", seed=0, probes=[])
    run.step(100)
    model, loss_fn, X, y = run.model.eval(), run.loss_fn, run.data.X, run.data.y
    times = {"full": [], "preview": [], "floor": []}
    for _ in range(repeats):
        for k in times:
            t = time.perf_counter()
            if k == "floor":
                _floor(model, loss_fn, X, y, 121)
            else:
                landscape.plane(model, loss_fn, (X, y), steps=11, samples=512 if k == "preview" else None, progress=False)
            times[k].append(time.perf_counter() - t)
    ms = {k: statistics.median(v) * 1000 for k, v in times.items()}
    print(f"first coarse 11x11 picture of the digits MLP (median of {repeats}; target < 500 ms): "
          f"full data {ms['full']:.0f} ms (121 bare forwards: {ms['floor']:.0f} ms), "
          f"on the panel's 512-example preview subset {ms['preview']:.0f} ms")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=51)
    ap.add_argument("--models", default="mlp,cnn", help="comma-separated: mlp, cnn")
    args = ap.parse_args()
    torch.set_num_threads(1)
    models = args.models.split(",")
    if "mlp" in models:
        first_picture()
        bench("digits MLP", "mlp", args.repeats, args.steps)
    if "cnn" in models:
        bench("digits CNN", "cnn", args.repeats, args.steps)


if __name__ == "__main__":
    main()
