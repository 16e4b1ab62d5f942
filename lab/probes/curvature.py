"""Curvature while the run trains: sharpness at the edge of stability, and the losses of labelled groups."""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from trainlab.analysis.hessian import HessianOperator, lanczos, preconditioner, stability_threshold
from trainlab.functional import eval_mode, trainable
from trainlab.jobs import Progress

from .base import Columns, Probe

if TYPE_CHECKING:
    from trainlab.run import Run


class Sharpness(Probe):
    """λ_max of the loss's Hessian every k steps, warm-started from the previous top `block` Ritz vectors.

    Measured after the step, on a fixed probe batch (`run.data.fixed_sample(max_examples)`: the whole
    training set up to `max_examples`, else a fixed subset), so under full-batch GD it is the sharpness of the very
    objective being trained. Columns:
    - `sharpness`: λ_max(H), within `tol` relative (the solve stops once ||Hx - θx|| <= tol·θ);
    - `sharpness_threshold`: the optimizer's stability threshold (2/lr for plain GD; (2+2β)/lr with
      momentum β; 38/lr for Adam with β1 = 0.9, which bounds the preconditioned sharpness);
    - `preconditioned_sharpness` (adaptive optimizers): λ_max(P⁻¹H) = λ_max(P^-1/2 H P^-1/2), with the
      per-layer lr multipliers M (μP's) folded in: λ_max(M P⁻¹ H);
    - `scaled_sharpness` (plain steps whose param groups carry lr multipliers M ≠ 1, μP's): λ_max(M^1/2 H M^1/2),
      the curvature the step η·M·g sees, against the same threshold (raw λ_max(H) is not: under μP with SGD
      the input and read-out layers step M = width/base_width times faster);
    - `sharpness_hvps`: Hessian-vector products this measurement cost.
    Each solve is block Lanczos from the previous solve's top `block` (>= 2) Ritz vectors, stopped
    once ||Hx - θx|| <= tol·θ for the top pair. At the edge of stability the top eigenvalues come
    close and swap: a start from the top eigenvector alone then follows the one that became second
    (and stops on it, since it is an eigenvector), while a block holding both finds whichever is now
    larger, and its block iterations keep refining both. An eigenvalue that climbs past the top
    `block` between two measurements is found only if the iterations pick it up (in a model made of
    independent parts they may never): raise `block`, or measure more often, when several crowd there.
    """

    name = "sharpness"

    def __init__(self, every: int = 10, tol: float = 1e-3, block: int = 2, max_examples: int = 2048,
                 max_hvps: int = 400):
        super().__init__(every)
        if not tol > 0:
            raise ValueError(f"tol must be > 0, got {tol!r}")
        if isinstance(block, bool) or not isinstance(block, int) or block < 2:
            raise ValueError(f"block must be a whole number >= 2 (a one-vector warm start follows the second "
                             f"eigenvector when the top two cross), got {block!r}")
        self.tol, self.block, self.max_examples, self.max_hvps = tol, block, int(max_examples), int(max_hvps)
        self._batch = None
        self._vectors: dict[str, torch.Tensor | None] = {"hessian": None, "preconditioned": None, "scaled": None}
        self._gen = torch.Generator().manual_seed(0)

    def _top(self, op: HessianOperator, key: str) -> float:
        values, vectors, _ = lanczos(op, 1, self.tol, self.block, self.max_hvps, self._vectors.get(key), self._gen,
                                     Progress(), keep=self.block)
        self._vectors[key] = vectors.clone()
        return float(values[0])

    def state(self) -> dict:
        return {"generator": self._gen.get_state(), "vectors": dict(self._vectors)}  # the warm start

    def load_state(self, state: dict, run: Run) -> None:
        self._gen.set_state(state["generator"])
        self._vectors = {k: None if v is None else v.to(run.device) for k, v in state["vectors"].items()}

    def columns(self, run: Run) -> Columns:
        names = {"sharpness": "sharpness", "sharpness_threshold": "threshold",
                 "preconditioned_sharpness": "preconditioned", "sharpness_hvps": "hvps"}
        if lr_multipliers(run) is not None:
            names["scaled_sharpness"] = "scaled"
        return Columns(names)

    def measure(self, run: Run) -> dict[str, float]:
        if self._batch is None:
            self._batch = run.data.fixed_sample(self.max_examples, device=run.device)
        op = HessianOperator(run.model, run.loss_fn, self._batch)
        out = {"sharpness": self._top(op, "hessian")}
        hvps = op.hvps
        threshold, kind = stability_threshold(run.torch_optimizer)
        out["sharpness_threshold"] = threshold
        M = lr_multipliers(run)
        if kind == "preconditioned":
            P = preconditioner(run.torch_optimizer, [p for _, p in trainable(run.model, "a Hessian")])
            if P is not None:
                scale = P.rsqrt() if M is None else (M.to(P) / P).sqrt()
                pop = HessianOperator(run.model, run.loss_fn, self._batch, scale=scale)
                out["preconditioned_sharpness"] = self._top(pop, "preconditioned")
                hvps += pop.hvps
        elif M is not None:
            sop = HessianOperator(run.model, run.loss_fn, self._batch, scale=M.sqrt())
            out["scaled_sharpness"] = self._top(sop, "scaled")
            hvps += sop.hvps
        out["sharpness_hvps"] = hvps
        return out


def lr_multipliers(run: Run) -> torch.Tensor | None:
    """The flat vector of each trainable parameter's lr multiplier (its param group's `lr_mult`, μP's per-layer
    lrs), in `trainable`'s order, or None when every one is 1."""
    mult = {id(p): float(g.get("lr_mult", 1.0)) for g in run.torch_optimizer.param_groups for p in g["params"]}
    if all(m == 1.0 for m in mult.values()):
        return None
    return torch.cat([torch.full((p.numel(),), mult.get(id(p), 1.0), dtype=p.dtype, device=p.device) for _, p in trainable(run.model, "a Hessian")])


class GroupLoss(Probe):
    """The mean training loss of each labelled group of examples, in columns `loss/<group>`.

    For data sets that mark groups (the "opposing" set marks `group_a`, `group_b` and `bulk` in
    `data.info["groups"]`): watch the two outlier groups' losses swing in antiphase once the run
    reaches the edge of stability. Measured after the step, in eval mode.
    """

    name = "group_loss"

    def __init__(self, every: int = 1):
        super().__init__(every)

    def columns(self, run: Run) -> Columns:
        return Columns({f"loss/{g}": g for g in run.data.info.get("groups", {})})

    def measure(self, run: Run) -> dict[str, float]:
        groups = run.data.info.get("groups")
        if not groups:
            return {}
        out = {}
        with torch.no_grad(), eval_mode(run.model):
            for name, idx in groups.items():
                idx = idx.to(run.data.X.device)
                out[f"loss/{name}"] = float(run.loss_fn(run.model(run.data.X[idx]), run.data.y[idx]))
        return out
