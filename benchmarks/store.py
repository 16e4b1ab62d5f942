"""The run store at scale: a store of 100 runs listed, and their histories loaded into one frame.

Targets: `Store.list()` <= 1 s and `Store.history(all 100)` <= 1 s. The runs are a digits MLP trained
--steps steps with the default probes, saved under 100 names with different settings (lr, seed), so
each holds real weights, optimizer state and a --steps-row history.

Peers, on the same 100 runs in the same process: one `torch.save` file per run (the dict of
`trainlab.checkpoint.state`, trainlab's former format), read back with `torch.load(weights_only=True)`,
and pandas pickles (a settings pickle and a history pickle per run). "List" builds the same table
(name, settings, last metrics); "history" the same tidy frame. Each measurement is repeated
--repeats times, trainlab and the peers interleaved, and the median is printed with the ratios.

Periodic checkpoints (`--part checkpoints`): the training step of the same digits MLP untracked, recorded
live (`store.track`), and recorded with a checkpoint every --every steps; blocks of --block steps, the three
interleaved (order alternating), --repeats blocks each; the median step time and the ratios are printed, with
the training thread's share of a checkpoint (the copy `Run.checkpoint(history=False)` taken between steps).

    python benchmarks/store.py [--part all|list|checkpoints] [--runs 100] [--steps 1000] [--repeats 3]
                               [--every 100] [--block 500]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

import trainlab
from trainlab import checkpoint
from trainlab.store import Store


def peer_torch_list(folder: Path) -> pd.DataFrame:
    rows = []
    for path in sorted(folder.glob("*.pt")):
        ck = torch.load(path, weights_only=True)
        hist = pd.DataFrame(ck["history"])
        last = {c: hist[c].dropna().iloc[-1] for c in hist.columns if c not in ("step", "epoch", "time", "event")
                and hist[c].notna().any()}
        rows.append({"name": path.stem, "step": ck["step"], **ck["settings"], **ck["optimizer_hparams"], **last})
    return pd.DataFrame(rows)


def peer_torch_history(folder: Path) -> pd.DataFrame:
    frames = []
    for path in sorted(folder.glob("*.pt")):
        df = pd.DataFrame(torch.load(path, weights_only=True)["history"])
        df.insert(0, "run", path.stem)
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


def peer_pickle_list(folder: Path) -> pd.DataFrame:
    return pd.DataFrame([pd.read_pickle(p) for p in sorted(folder.glob("*.settings.pkl"))])


def peer_pickle_history(folder: Path) -> pd.DataFrame:
    frames = []
    for path in sorted(folder.glob("*.history.pkl")):
        df = pd.read_pickle(path)
        df.insert(0, "run", path.name.split(".")[0])
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


def timed(fn, *args):
    t = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - t, out


def checkpoint_overhead(args) -> None:
    """Step time untracked / recorded live / recorded with periodic checkpoints, interleaved."""
    runs = {mode: trainlab.Run(model="mlp", data="digits", device="cpu", threads=1) for mode in
            ("plain", "tracked", "checkpoints")}
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(tmp)
        tracked = {"tracked": store.track(runs["tracked"], "tracked"),
                   "checkpoints": store.track(runs["checkpoints"], "checkpoints", every=args.every, keep=20)}
        for run in runs.values():
            run.step(50)  # warm: allocations, the first evaluation
        times = {mode: [] for mode in runs}
        order = list(runs)
        for rep in range(args.repeats):
            for mode in order if rep % 2 == 0 else order[::-1]:
                t, _ = timed(runs[mode].step, args.block)
                times[mode].append(t / args.block)
        copy = []
        for _ in range(20):
            t, _ = timed(runs["plain"].checkpoint, None, False)
            copy.append(t)
        points = tracked["checkpoints"].points
        for t in tracked.values():
            t.close()
        written, skipped, kept = points.written, points.skipped, len(store.checkpoints("checkpoints"))
    plain = statistics.median(times["plain"])
    n = sum(p.numel() for p in runs["plain"].model.parameters())
    print(f"periodic checkpoints: digits MLP ({n:,} parameters), blocks of {args.block} steps, median of "
          f"{args.repeats}, interleaved; a checkpoint every {args.every} steps ({written} written, {skipped} "
          f"skipped, {kept} kept with step 0 and the last)")
    print(f"  untracked            {plain * 1e3:.3f} ms/step")
    for mode, label in (("tracked", "recorded live"), ("checkpoints", f"+ checkpoints/{args.every}")):
        m = statistics.median(times[mode])
        print(f"  {label:20s} {m * 1e3:.3f} ms/step  ratio {mode}/untracked {m / plain:.3f}")
    live, ck = statistics.median(times["tracked"]), statistics.median(times["checkpoints"])
    print(f"  {'':20s} ratio checkpoints/recorded live {ck / live:.3f}")
    c = statistics.median(copy)
    print(f"  the training thread's copy per checkpoint {c * 1e3:.2f} ms (= {c / plain:.1f} steps; "
          f"{c / plain / args.every:.1%} of the steps between two checkpoints)")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=("all", "list", "checkpoints"), default="all")
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--every", type=int, default=100)
    ap.add_argument("--block", type=int, default=500)
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.part in ("all", "checkpoints"):
        checkpoint_overhead(args)
    if args.part == "checkpoints":
        return
    run = trainlab.Run(model="mlp", data="digits", device="cpu", threads=1)
    run.step(args.steps)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        store, peers = Store(tmp / "runs"), tmp / "peers"
        peers.mkdir()
        t0 = time.perf_counter()
        for i in range(args.runs):
            run.set(lr=0.01 + 0.001 * i)
            run.step(1)  # each run's own settings and last row
            name = store.save(run, f"run{i:03d}")
            ck = checkpoint.state(run)
            torch.save(ck, peers / f"{name}.pt")
            hist = run.history.frame()
            last = {c: hist[c].dropna().iloc[-1] for c in hist.columns if c not in ("step", "epoch", "time", "event")
                    and hist[c].notna().any()}
            pd.to_pickle({"name": name, "step": run.steps, **run.settings(), **last}, peers / f"{name}.settings.pkl")
            hist.to_pickle(peers / f"{name}.history.pkl")
        saving = time.perf_counter() - t0
        work = {"list": (store.list, (), peer_torch_list, peer_pickle_list),
                "history": (store.history, (), peer_torch_history, peer_pickle_history)}
        times = {(w, who): [] for w in work for who in ("trainlab", "torch", "pickle")}
        shapes = {}
        for rep in range(args.repeats):
            for w, (lab, lab_args, torch_peer, pickle_peer) in work.items():
                order = [("trainlab", lab, lab_args), ("torch", torch_peer, (peers,)), ("pickle", pickle_peer, (peers,))]
                for who, fn, a in order if rep % 2 == 0 else order[::-1]:
                    t, out = timed(fn, *a)
                    times[(w, who)].append(t)
                    shapes[(w, who)] = out.shape
        size = sum(p.stat().st_size for p in (tmp / "runs").rglob("*") if p.is_file())
        print(f"{args.runs} runs of a digits MLP ({sum(p.numel() for p in run.model.parameters()):,} parameters), "
              f"{len(run.history)} history rows each; store {size / 1e6:.1f} MB, saved in {saving:.1f} s "
              f"(with the peers' files); median of {args.repeats} repeats, interleaved")
        for w, target in (("list", 1.0), ("history", 1.0)):
            lab = statistics.median(times[(w, "trainlab")])
            tp, pp = statistics.median(times[(w, "torch")]), statistics.median(times[(w, "pickle")])
            print(f"{w:8s} trainlab.store {lab:.3f} s {shapes[(w, 'trainlab')]}  (target <= {target:.0f} s: "
                  f"{'met' if lab <= target else 'MISSED'})")
            print(f"{'':8s} torch.load     {tp:.3f} s {shapes[(w, 'torch')]}  ratio trainlab/torch  {lab / tp:.3f}")
            print(f"{'':8s} pandas pickles {pp:.3f} s {shapes[(w, 'pickle')]}  ratio trainlab/pickle {lab / pp:.2f}")


if __name__ == "__main__":
    main()
