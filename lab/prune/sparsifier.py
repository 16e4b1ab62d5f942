"""The Sparsifier: a criterion, an allocation, a mask pattern and a schedule, applied to a model.

    >>> sp = Sparsifier(model, method="magnitude", sparsity=0.9, scope="global", schedule="oneshot")
    >>> sp.step(0)   # prunes: masks as `<p>_keep` buffers, pruned weights zeroed
    >>> sp.masks     # name -> bool mask

`step(t, batch)` is called between training steps (the Run does it); it prunes when the schedule's
planned sparsity at t differs from the one applied. Everything is validated at construction.
"""
from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import torch
from torch import nn

from ..registry import option_values, parse_spec
from .allocations import allocations
from . import decay
from .criteria import criteria
from .masks import masks as _masks
from .masks import prunable, set_mask
from .rescale import rescalings, row_norms_sq
from .schedules import prune_schedules
from .structured import block_scores, check_block, check_nm, expand_blocks, nm_mask

PATTERNS = ("unstructured", "nm", "block")
SCOPES = ("global", "layer")


def _spec(value, what: str, registry) -> tuple[str, dict]:
    parsed = parse_spec(value)
    if parsed is None:
        raise ValueError(f"{what}={value!r} rejected: a name ({', '.join(registry.names())}) or a (name, {{options}}) pair")
    registry[parsed[0]]  # unknown: ValueError listing the valid ones
    return parsed


def _sparsity(value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise ValueError(f"sparsity={value!r} rejected: a number in [0, 1)")
    value = float(value)
    if not 0 <= value < 1:
        raise ValueError(f"sparsity={value!r} rejected: allowed [0, 1) (1 would prune every weight)")
    return value


class Sparsifier:
    """Prunes `model`'s prunable weights (every Linear/Conv weight, or `weights=[names]`) on a schedule."""

    def __init__(self, model: nn.Module, method: Any = "magnitude", sparsity: float = 0.9, scope: str | None = None,
                 allocation: str | None = None, schedule: Any = "oneshot", pattern: str = "unstructured",
                 n: int = 2, m: int = 4, block: tuple[int, int] = (1, 4), weights: list[str] | None = None,
                 rescale: Any = False):
        self.model = model
        self.rescale = _rescale(rescale)  # None or (name, options) of `rescalings`
        if self.rescale is not None and self.rescale[1].get("activation") == "auto":
            from .eoc import model_activation
            model_activation(model)  # a model with no single activation is refused now, not at the pruning
        self.sparsity = _sparsity(sparsity)
        self.method, self.method_options = _spec(method, "method", criteria)
        criteria[self.method].options(**self.method_options)
        if scope is not None and scope not in SCOPES:
            raise ValueError(f"scope={scope!r} rejected: one of {', '.join(map(repr, SCOPES))}")
        if allocation is None:
            allocation = "uniform" if scope == "layer" else "global"
        if scope == "layer" and allocation in ("global", "lamp", "adaptive"):
            raise ValueError(f"allocation={allocation!r} is global: it does not go with scope='layer'")
        if scope == "global" and allocation in ("uniform", "er", "erk"):
            raise ValueError(f"allocation={allocation!r} sets each layer's sparsity: it goes with scope='layer' "
                             f"(or no scope), not scope='global'")
        allocations[allocation]
        self.scope, self.allocation = scope or ("layer" if allocation in ("uniform", "er", "erk") else "global"), allocation
        self.schedule_name, opts = _spec(schedule, "schedule", prune_schedules)
        self.schedule_options = option_values(prune_schedules[self.schedule_name].options(**opts))
        self.plan = prune_schedules[self.schedule_name].build(**self.schedule_options)  # cross-field checks
        if pattern not in PATTERNS:
            raise ValueError(f"pattern={pattern!r} rejected: one of {', '.join(map(repr, PATTERNS))}")
        if pattern == "block" and allocation == "adaptive":
            raise ValueError("allocation='adaptive' measures weight masks: it does not go with pattern='block'")
        self.pattern, self.n, self.m = pattern, n, m
        self.block = tuple(block) if isinstance(block, (tuple, list)) else block
        every = prunable(model)
        if isinstance(weights, str):
            weights = [weights]
        if weights is not None:
            unknown = [w for w in weights if w not in every]
            if unknown:
                raise ValueError(f"weights={unknown!r} rejected: not prunable; prunable: {', '.join(every)}")
            every = {k: every[k] for k in weights}
        if not every:
            raise ValueError(f"the model ({type(model).__name__}) has no prunable layer: pruning needs an nn.Linear "
                             f"or nn.Conv*d weight")
        self.weights, self._chosen = every, None if weights is None else list(weights)
        for k, w in every.items():
            if pattern == "nm":
                check_nm(n, m, w.shape, k)
            elif pattern == "block":
                check_block(self.block, w.shape, k)
        if pattern == "nm":
            self.sparsity = 1 - n / m
            first = getattr(self.plan, "first_n", None)
            if first is not None and not n <= first <= m:
                raise ValueError(f"first_n={first} rejected for schedule 'nm_decay': between n={n} and m={m}")
        elif hasattr(self.plan, "n_at") or getattr(self.plan, "decay", False):
            raise ValueError(f"schedule {self.schedule_name!r} goes with pattern='nm', not pattern={pattern!r}")
        if getattr(self.plan, "decay", False) and self.method != "magnitude":
            raise ValueError(f"method={self.method!r} rejected for schedule 'mask_decay': it recomputes the masks "
                             f"from the dense weights' magnitudes (method='magnitude')")

        self.start = 0          # the run's step the schedule counts from
        self.applied = 0.0      # the sparsity last pruned to
        self.updates = 0
        self.beta: float | None = None  # a mask decay's factor on pruned weights (None: not begun, 0: done)
        self._rewind_state: dict[str, torch.Tensor] | None = None

    # ---- the plan ---------------------------------------------------------------------------
    def planned(self, t: int) -> float:
        """The sparsity the schedule plans after t steps since it began."""
        f = self.plan(max(t, 0))
        if self.pattern == "nm":
            if hasattr(self.plan, "n_at"):  # structure decay: N shrinks stage by stage
                n = self.plan.n_at(max(t, 0), self.n)
                return 1 - n / self.m if n else 0.0
            return self.sparsity if f > 0 else 0.0
        if getattr(self.plan, "geometric", False):
            return 1 - (1 - self.sparsity) ** f
        return self.sparsity * f

    def preview(self, steps: int = 2000, points: int = 400) -> dict[str, np.ndarray]:
        """{"step": step numbers, "sparsity": the sparsity each trains at}, drawn ahead from the schedule's start.

        As for the lr preview, the step number is steps taken + 1: pruning at t steps taken shapes step t + 1."""
        t = np.unique(np.linspace(0, steps - 1, min(points, steps)).round().astype(int))
        out = {"step": t + 1 + self.start, "sparsity": np.array([self.planned(int(k)) for k in t])}
        if getattr(self.plan, "decay", False):  # the weights' own sparsity follows β: 0 until β reaches 0
            out["beta"] = np.array([self.planned_beta(int(k)) for k in t])
        return out

    def planned_beta(self, t: int) -> float:
        """A mask decay's β after t steps since the schedule began (NaN before its masks exist), held between
        two recomputations."""
        f = self.plan
        if t < f.at:
            return float("nan")
        if t >= f.end:
            return 0.0
        return decay.beta(f.shape, ((t - f.at) // f.every * f.every) / (f.end - f.at))

    @property
    def spec(self) -> dict[str, Any]:
        """What `Run(pruning=...)` takes to build this Sparsifier again (saved with a run)."""
        out = dict(method=[self.method, dict(self.method_options)], sparsity=self.sparsity, scope=self.scope,
                   allocation=self.allocation, schedule=[self.schedule_name, dict(self.schedule_options)],
                   pattern=self.pattern)
        if self.pattern == "nm":
            out.update(n=self.n, m=self.m)
        if self.pattern == "block":
            out["block"] = list(self.block)
        if self.rescale is not None:
            name, opts = self.rescale
            out["rescale"] = True if name == "norm" else [name, dict(opts)]
        if self._chosen is not None:
            out["weights"] = list(self._chosen)
        return out

    # ---- pruning ----------------------------------------------------------------------------
    @property
    def masks(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in _masks(self.model).items() if k in self.weights}

    def step(self, t: int, batch=None, loss_fn=None) -> str | None:
        """Between training steps: prune if the plan at run step t asks for a new sparsity; what was done, or None."""
        if self._regrow_due(t - self.start):
            return self.drop_and_regrow(t - self.start, batch, loss_fn)
        if self._decay_due(t - self.start):
            return self.decay_step(t - self.start)
        target = self.due(t)
        if target is None:
            return None
        self.prune(target, batch, loss_fn)
        pattern = "" if self.pattern == "unstructured" else f", {self.pattern}"
        note = f"pruned to {target:.3g} ({self.method}, {self.allocation}{pattern})"
        if getattr(self.plan, "geometric", False) and self._rewind_state is not None:
            self.rewind()
            note += f"; rewound to step {self.start + self.plan.rewind}"
        return note

    def due(self, t: int) -> float | None:
        """The sparsity to prune to before run step t + 1, or None (nothing to do: about 1 us)."""
        rel = t - self.start
        if self._regrow_due(rel):
            return self.applied
        if self._decay_due(rel):
            return self.sparsity
        if getattr(self.plan, "geometric", False) and rel == self.plan.rewind and self._rewind_state is None:
            self._rewind_state = copy.deepcopy({k: v.detach() for k, v in self.model.state_dict().items()})
        target = self.planned(rel)
        if abs(target - self.applied) < 1e-12 and (self.updates or target == 0):
            return None
        return target

    def collapsed(self, below: float = 0.01) -> dict[str, float]:
        """Layers keeping less than `below` of their weights (layer collapse, Tanaka et al. 2020): name -> kept."""
        kept = {k: float(m.float().mean()) for k, m in self.masks.items()}
        return {k: v for k, v in kept.items() if v < below}

    def reshapes(self, t: int) -> bool:
        """The update due before run step t + 1 changes which weights are kept at the same sparsity (SET/RigL,
        a mask decay), rather than pruning to a new sparsity."""
        return self._regrow_due(t - self.start) or self._decay_due(t - self.start)

    def _decay_due(self, rel: int) -> bool:
        """A mask decay's recomputation is due: from `at` on, every `every` steps, and once more at `end` (β = 0)."""
        f = self.plan
        if not getattr(f, "decay", False) or self.beta == 0.0 or rel < f.at:
            return False
        return self.beta is None or rel >= f.end or (rel - f.at) % f.every == 0

    def decay_step(self, rel: int) -> str:
        """New N:M masks from the dense weights, the pruned ones written at the new β (`decay.recompute`)."""
        f = self.plan
        b = decay.beta(f.shape, (rel - f.at) / (f.end - f.at))
        old = None if self.beta is None else self.masks
        changed = decay.recompute(self.model, self.weights, old, self.beta or 1.0, b, self.n, self.m)
        self.beta, self.applied, self.updates = b, self.sparsity, self.updates + 1
        what = "pruned weights now exactly 0, masks fixed" if b == 0 else f"{changed} mask entries changed"
        return f"mask decay {self.n}:{self.m}: β {b:.3g}, {what}"

    def _regrow_due(self, rel: int) -> bool:
        """A SET/RigL update is due at this step: pruned already, on the ΔT grid, before T_end."""
        f = self.plan
        return (getattr(f, "dynamic", False) and self.updates > 0 and f.at < rel < f.end
                and (rel - f.at) % f.every == 0)

    def drop_and_regrow(self, rel: int, batch=None, loss_fn=None) -> str:
        """Each layer drops its k smallest kept |w| (k = α/2 (1 + cos(π t / T_end)) of its kept weights) and
        regrows k among the rest (after the drop, as RigL), at random (SET) or by |dense gradient| (RigL);
        regrown weights start at 0. Each layer's sparsity stays as it was."""
        f = self.plan
        alpha = f.drop_fraction / 2 * (1 + math.cos(math.pi * rel / f.end))
        if f.regrow == "gradient":
            if callable(batch):
                batch = batch()
            if batch is None:
                raise ValueError("schedule 'rigl' needs a batch to regrow by gradient: Sparsifier.step(step, batch=...)")
            x, y = batch
            with torch.enable_grad():
                loss = (loss_fn or nn.functional.cross_entropy)(self.model(x), y)
                grads = torch.autograd.grad(loss, list(self.weights.values()))
            grow = {k: g.abs() for k, g in zip(self.weights, grads)}
        else:
            g = torch.Generator().manual_seed(self.updates)  # from the saved state: a loaded run regrows the same
            grow = {k: torch.rand(w.shape, generator=g).to(w.device) for k, w in self.weights.items()}
        changed = 0
        for k, keep in self.masks.items():
            w = self.weights[k].detach()
            n = int(round(alpha * int(keep.sum())))
            if n == 0:
                continue
            flat = keep.reshape(-1).clone()
            mag = torch.where(flat, w.reshape(-1).abs(), torch.full_like(w.reshape(-1), float("inf")))
            flat[torch.topk(mag, n, largest=False).indices] = False  # drop the n smallest kept
            score = torch.where(flat, torch.full_like(mag, -float("inf")), grow[k].reshape(-1).to(mag.dtype))
            flat[torch.topk(score, n).indices] = True  # regrow n among the inactive (at 0)
            changed += int((flat != keep.reshape(-1)).sum())
            set_mask(self.model, k, flat.reshape(keep.shape))
        self.updates += 1
        return f"{'rigl' if f.regrow == 'gradient' else 'set'}: {changed} mask entries changed (drop fraction {alpha:.3g})"

    def apply(self, batch=None, loss_fn=None) -> dict[str, torch.Tensor]:
        """Prune to the final sparsity now, whatever the schedule; returns the masks."""
        self.prune(self.sparsity, batch, loss_fn)
        return self.masks

    def prune(self, target: float, batch=None, loss_fn=None) -> None:
        """Masks at sparsity `target` from the criterion's scores and the allocation, set on the model."""
        entry = criteria[self.method]
        if callable(batch):
            wanted = self.method in ("gradient", "snip", "grasp", "synflow") or self.allocation == "adaptive"
            batch = batch() if wanted else None
        loss_fn = loss_fn or nn.functional.cross_entropy
        shapes = {k: tuple(w.shape) for k, w in self.weights.items()}
        with torch.enable_grad():
            scores = entry.build(self.model, self.weights, batch, loss_fn, select=self._select(shapes),
                                 **self.method_options, **({"density": 1 - target} if self.method == "synflow" else {}))
        context = {"model": self.model, "weights": self.weights, "batch": batch}
        new = self._select(shapes, context)(scores, 1 - target)
        dense = {k: row_norms_sq(self.weights[k]) for k in new} if self.rescale is not None else {}
        for k, keep in new.items():
            set_mask(self.model, k, keep)
        if self.rescale is not None:  # the kept weights rescaled per unit (`rescale.py`, Hayou et al. 2021)
            name, opts = self.rescale
            rescalings[name].build(self.model, {k: self.weights[k] for k in new}, dense, **opts)
        self.applied, self.updates = target, self.updates + 1

    def _select(self, shapes, context=None):
        alloc = allocations[self.allocation].build
        if self.allocation == "adaptive" and context is None:  # SynFlow's rounds: its scores, globally
            alloc = allocations["global"].build

        def select(scores: dict, density: float) -> dict:
            if self.pattern == "nm":
                n = self.m - int(round((1 - density) * self.m))  # the stage's N (decay) or the final one
                return {k: nm_mask(self.weights[k], n, self.m, scores=s) for k, s in scores.items()}
            if self.pattern == "block":
                kept = alloc({k: block_scores(s, self.block) for k, s in scores.items()}, 1 - density, shapes,
                             context=context)
                return {k: expand_blocks(v, self.block, shapes[k]) for k, v in kept.items()}
            return alloc(scores, 1 - density, shapes, context=context)

        return select

    def rewind(self) -> None:
        """The weights back to the rewind point, times the masks (lottery-ticket rewinding)."""
        state = {k: v for k, v in self._rewind_state.items() if not k.endswith("_keep")}
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for k, v in state.items():
                if k in params:
                    params[k].copy_(v)
        from .masks import apply_masks
        apply_masks(self.model)

    # ---- persistence ------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {"start": self.start, "applied": self.applied, "updates": self.updates, "beta": self.beta,
                "rewind_state": self._rewind_state}

    def load(self, state: dict[str, Any]) -> None:
        self.start, self.applied, self.updates = state["start"], state["applied"], state["updates"]
        self.beta = state.get("beta")
        self._rewind_state = state.get("rewind_state")

    def __repr__(self) -> str:
        return f"Sparsifier({self.spec})"


def _rescale(value) -> tuple[str, dict] | None:
    """`rescale=`: False/None (off), True (= "norm"), or a name or (name, {options}) of `rescalings`, validated."""
    if value is None or value is False:
        return None
    if value is True:
        return ("norm", {})
    parsed = parse_spec(value)
    if parsed is None:
        raise ValueError(f"rescale={value!r} rejected: False, True (= 'norm') or a rescaling's name "
                         f"({', '.join(rescalings.names())}) or (name, {{options}}) pair")
    name, opts = parsed
    return name, option_values(rescalings[name].options(**opts))


def as_sparsifier(model: nn.Module, spec: Any) -> Sparsifier | None:
    """A Sparsifier from a Run's `pruning=`: None/"off", a method name, (method, {options}) or a dict of
    Sparsifier arguments."""
    if spec is None or spec == "off":
        return None
    if isinstance(spec, dict):
        return Sparsifier(model, **spec)
    parsed = parse_spec(spec)
    if parsed is None:
        raise ValueError(f"pruning={spec!r} rejected: None, a method name ({', '.join(criteria.names())}), a "
                         f"(method, {{Sparsifier options}}) pair or a dict of Sparsifier options")
    return Sparsifier(model, method=parsed[0], **parsed[1])
