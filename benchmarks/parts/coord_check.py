"""The coordinate check's time: six widths (64 ... 2048) of a μP MLP, trained 3 Adam steps each on one digits
batch, by `trainlab.analysis.signal.coord_check` against `mup.coord_check.get_coord_data` (cuda=False) on the
same work, or, without the `mup` package, against a straightforward loop of it (hooks recording each
module's mean |x| with a `.item()` per module and step, as mup does). Target: trainlab <= 3 s.

The same models for both: the registry's "mlp" (2 hidden ReLU layers) at each width; for mup the SP model
with its read-out swapped for a `MuReadout` holding the same weights and `set_base_shapes` against width 64,
with `MuAdam`, which is what trainlab's parametrization="mup", base_width=64 builds (tested equal in
tests/test_parametrizations.py). mup records every module (the container and activations too): its own
coordinate check. One torch thread for both, the two interleaved, median of the repeats and of their ratios.

    python benchmarks/normalization.py --parts coord_check   (or alone: python benchmarks/parts/coord_check.py)
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from torch import nn

from trainlab import as_data, models
from trainlab.analysis.signal import coord_check
from trainlab.optimizers import build_grouped, optimizers
from trainlab.parametrizations import multipliers

WIDTHS = (64, 128, 256, 512, 1024, 2048)


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--coord-repeats", type=int, default=5, help="interleaved repeats of the coordinate check")
    ap.add_argument("--coord-steps", type=int, default=3)
    ap.add_argument("--coord-batch", type=int, default=64)


def _ours(data, steps, batch):
    return coord_check(lambda w: ("mlp", {"width": w, "parametrization": "mup", "base_width": 64}), WIDTHS, data=data,
                       steps=steps, optimizer="adam", lr=1e-2, batch_size=batch)


def _mup_models(data, mup):
    def readout(model):
        twin = copy.deepcopy(model)
        out = mup.MuReadout(model.out.in_features, model.out.out_features)
        out.load_state_dict(model.out.state_dict())
        twin.out = out
        return twin

    def make(w):
        def build():
            model = readout(models.build("mlp", data, width=w))
            return mup.set_base_shapes(model, readout(models.build("mlp", data, width=64)))
        return build

    return {w: make(w) for w in WIDTHS}


def _peer(data, steps, batch):
    """mup's own coordinate check when installed, else the straightforward loop; (name, function)."""
    x, y = data.fixed_sample(batch, seed=0)
    try:
        import mup
        from mup.coord_check import get_coord_data
    except ImportError:
        return "a straightforward loop", lambda: _loop(data, x, y, steps)
    lazy = _mup_models(data, mup)
    return "mup.get_coord_data", lambda: get_coord_data(lazy, [(x, y)], optimizer="adam", lr=1e-2, nsteps=steps,
                                                         cuda=False, show_progress=False)


def _loop(data, x, y, steps):
    rows = []
    for w in WIDTHS:
        torch.manual_seed(0)
        run_model = models.build("mlp", data, width=w, parametrization="mup", base_width=64)
        opt = build_grouped("adam", list(run_model.named_parameters()), multipliers(run_model, "adam"), 1e-2,
                            optimizers["adam"].defaults())
        for t in range(1, steps + 1):
            hooks = [m.register_forward_hook(lambda mod, i, o, n=n: rows.append((w, n, t, o.abs().mean().item())))
                     for n, m in run_model.named_modules() if isinstance(m, nn.Linear)]
            loss = nn.functional.cross_entropy(run_model(x), y)
            for h in hooks:
                h.remove()
            opt.zero_grad()
            loss.backward()
            opt.step()
    return rows


def part_coord_check(args) -> None:
    data = as_data("digits")
    name, peer = _peer(data, args.coord_steps, args.coord_batch)
    ours = lambda: _ours(data, args.coord_steps, args.coord_batch)  # noqa: E731
    ours(), peer()  # warm-up: imports, first allocations
    t_ours, t_peer, ratios = [], [], []
    for i in range(args.coord_repeats):
        times = {}
        for k in (("ours", "peer") if i % 2 == 0 else ("peer", "ours")):
            t0 = time.perf_counter()
            (ours if k == "ours" else peer)()
            times[k] = time.perf_counter() - t0
        t_ours.append(times["ours"]), t_peer.append(times["peer"]), ratios.append(times["ours"] / times["peer"])
    frame = ours()
    print(f"coordinate check, widths {WIDTHS[0]}..{WIDTHS[-1]} (6), {args.coord_steps} Adam steps, batch "
          f"{args.coord_batch}, μP MLP on digits ({len(frame)} rows):")
    print(f"  trainlab coord_check : {statistics.median(t_ours):.3f} s  (target <= 3 s)")
    print(f"  {name:<21}: {statistics.median(t_peer):.3f} s")
    print(f"  ratio                : {statistics.median(ratios):.3f}  (trainlab / peer, median of "
          f"{len(ratios)} interleaved pairs)")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(ap)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    part_coord_check(args)


if __name__ == "__main__":
    main()
