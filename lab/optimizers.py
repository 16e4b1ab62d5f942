"""Every optimizer of torch.optim and pytorch_optimizer by name, its hyperparameters read from its signature.

Names: torch.optim classes by their lowercased class name (`sgd`, `adamw`, `lbfgs`); pytorch_optimizer's
by its own registry name (`lion`, `adan`, `lamb`). Where both define a name (adadelta, adafactor, adamax,
asgd, muon, radam), torch keeps the plain name and pytorch_optimizer's class is `<name>_po`; where
pytorch_optimizer's name IS torch's class (adam, adamw, sgd, nadam, rmsprop, lbfgs) there is one entry.
Optimizers written here (zeroth-order SGD, AdaGrad-Norm) are registered the same way.

Hyperparameters are discovered from the constructor (`inspect.signature`): floats, ints, bools and
Literal choices become `param` Parameters; tuples of floats (`betas`) become one Parameter per element
(`beta1`, `beta2`, `beta3`), which `to_group` puts back together. Bounds, soft bounds, log scale and
docs come from one table keyed by the argument's NAME (lr, eps, weight_decay, beta*, momentum, ...),
kept only where the optimizer's own default satisfies them. Arguments that cannot be typed (None,
callables, free strings, dtypes, enums, infinite defaults) stay at the optimizer's default.
Optimizers that cannot train a generic model are not registered; `refused` says why.
"""
from __future__ import annotations

import copy
import enum
import inspect
import math
import re
import typing
from dataclasses import dataclass, field
from typing import Any, Callable

import param
import torch

from .adagrad_norm import AdaGradNorm
from .registry import LogNumber, Registry
from .zeroth_order import ZerothOrderSGD

optimizers = Registry("optimizer")

# Optimizers left out, and why: Run shows the reason when asked for one of these names.
refused: dict[str, str] = {
    "sparseadam": "torch.optim.SparseAdam only accepts sparse gradients (nn.Embedding(sparse=True)); "
                  "the run's models produce dense ones: use adam",
    "muon": "torch.optim.Muon only updates 2-D weight matrices and refuses biases and norm gains; "
            "use muon_po, which sends 2-D weights to Muon and every other parameter to AdamW",
    "spectralsphere": "SpectralSphere only updates 2-D weight matrices and refuses biases and norm gains; "
                      "use muon_po (2-D weights orthogonalized, the rest AdamW)",
    "lomo": "LOMO fuses the backward pass with the update (optimizer.fused_backward(loss, lr)) and frees each "
            "gradient as soon as it is used, so the run has no gradients for its divergence check and probes",
    "adalomo": "AdaLOMO fuses the backward pass with the update (optimizer.fused_backward(loss, lr)) and frees "
               "each gradient as soon as it is used, so the run has no gradients for its divergence check and probes",
    "distributedmuon": "DistributedMuon needs a torch.distributed process group (multi-process training); "
                       "use muon_po, the same update in one process",
    "demo": "DeMo needs the einops package, which trainlab does not install, and is built for distributed "
            "data-parallel training",
    **{w: f"{w} wraps another optimizer (pytorch_optimizer.{c}); the registry holds stand-alone optimizers, "
          "as pytorch_optimizer's own get_supported_optimizers() does"
       for w, c in [("lookahead", "Lookahead"), ("sam", "SAM"), ("gsam", "GSAM"), ("wsam", "WSAM"),
                    ("looksam", "LookSAM"), ("friendlysam", "FriendlySAM"), ("trac", "TRAC"),
                    ("orthograd", "OrthoGrad"), ("pcgrad", "PCGrad"), ("schedulefreewrapper", "ScheduleFreeWrapper"),
                    ("safefp16optimizer", "SafeFP16Optimizer")]},
}

# How the run drives an optimizer other than by backward() then step() (trainlab.stepping has one
# step function per kind):
ZEROTH = {"zosgd"}                    # "zeroth_order": step(closure), the closure only evaluates the loss
CLOSURE = {"lbfgs", "alig", "bsam"}   # "closure": the closure recomputes loss and gradients on the same batch
HESSIAN = {"adahessian", "sophiah"}   # "second_order": Hutchinson curvature needs backward(create_graph=True)
MUON_FAMILY = {"adago", "adamuon", "muon_po", "muonclip", "normuon"}  # need use_muon groups

# Constructor-only switches that are not training hyperparameters.
_SKIP = {"foreach", "fused", "capturable", "differentiable", "maximize", "process_group", "model_sharding",
         "compress_state_dict", "check_numerics", "master_weight_bits"}
# Required arguments without a default, and the value used (with why).
_REQUIRED = {
    "num_iterations": (10_000, "steps planned: the length of Ranger21's built-in warm-up/warm-down schedule"),
    "num_data": (1_000, "training-set size: bSAM's prior precision scales with it"),
}
_CHOICES = {"line_search_fn": [None, "strong_wolfe"]}  # free-string arguments whose choices are documented
_USUAL_LR = {"sgd": 0.05}  # where the signature's default lr is not what this lab's models train well with
_LR_KEY = {"alig": "max_lr", "a2grad": None}  # which argument the run's lr sets (None: the optimizer has no lr)

_DOCS = {
    "momentum": "momentum coefficient",
    "dampening": "dampening of the momentum",
    "nesterov": "Nesterov momentum (needs momentum > 0)",
    "weight_decay": "weight decay (L2 penalty; decoupled where the optimizer decouples it)",
    "weight_decouple": "decouple weight decay from the gradient (AdamW-style)",
    "eps": "added to the denominator for numerical stability",
    "beta1": "decay rate of the first moment",
    "beta2": "decay rate of the second moment",
    "beta3": "decay rate of the third average (the optimizer's own meaning)",
    "alpha": "smoothing constant",
    "amsgrad": "keep the maximum of past second moments (AMSGrad)",
    "ams_bound": "keep the maximum of past second moments (AMSGrad)",
    "centered": "normalize by the centered second moment",
    "rho": "decay rate (or radius, for SAM-like optimizers)",
    "trust_coefficient": "LARS trust coefficient: the layer's lr scales with it times ‖w‖/‖g‖",
    "line_search_fn": "line search (None: fixed step lr)",
    "b0": "initial value of AdaGrad-Norm's accumulator b (b² grows by ‖g‖² each step)",
}
_LR_LIKE = re.compile(r"^(lr|.*_lr|lr_\d.*|max_lr)$")
_EPS_LIKE = re.compile(r"^(.*_)?eps(\d|_\d)?$|^(xi|d0|ps)$|_eps$")
_DECAY_LIKE = re.compile(r"^(weight_decay.*|adamw_wd|lambda_\d|extra_l2|norm_loss_factor)$")
_UNIT_LIKE = re.compile(r"^(.*_)?(beta\d*|momentum|dampening|alpha|rho|nu\d*|ema|ema_rate|theta|tau\d)(_1d)?$")
_POSITIVE_INTS = {"update_period", "k", "ns_steps", "num_samples", "history_size", "max_iter", "keep_num",
                  "precondition_frequency", "block_size", "num_iterations", "num_data", "inverse_steps",
                  "newton_steps", "power_iteration_steps", "msign_steps", "update_interval", "rank",
                  "preconditioning_compute_steps", "statistics_compute_steps", "grad_accu_steps", "update_proj_gap"}


def _float_param(name: str, d: float, doc: str) -> param.Parameter | None:
    """A float hyperparameter: bounds and scale by its name, where its default agrees with them."""
    if not math.isfinite(d):
        return None  # inf means "off" to the optimizer; a slider cannot hold it: left at the default
    if _LR_LIKE.match(name) and d > 0:
        return LogNumber(d, bounds=(0, None), inclusive_bounds=(False, True), softbounds=(d / 1e3, min(d * 1e2, 10.0)),
                         doc=doc)
    if _EPS_LIKE.match(name) and d > 0:
        return LogNumber(d, bounds=(0, None), inclusive_bounds=(False, True), softbounds=(d / 1e4, max(min(d * 1e4, 1.0), d * 10)),
                         doc=doc)
    if _DECAY_LIKE.match(name) and d >= 0:
        # linear, not log: 0 (off) must stay reachable and a log slider cannot show 0
        return param.Number(d, bounds=(0, None), softbounds=(0, max(0.1, 2 * d)), step=1e-4, doc=doc)
    if (_UNIT_LIKE.match(name) or name in ("wd_ratio",)) and 0 <= d < 1:
        return param.Number(d, bounds=(0, 1), inclusive_bounds=(True, False), softbounds=(0, 0.9999), step=0.001,
                            doc=doc)
    if _EPS_LIKE.match(name) or _LR_LIKE.match(name):
        return param.Number(d, bounds=(0, None), doc=doc)  # eps=0 (D-Adaptation's default) stays allowed
    soft = (min(0.0, 2 * d), max(0.0, 2 * d)) if d else None
    return param.Number(d, softbounds=soft, doc=doc)


def _is_float(annotation: Any) -> bool:
    text = str(annotation)
    return "float" in text and "int" not in text.replace("Tensor", "")


def _tuple_names(name: str, n: int) -> list[str]:
    """betas -> beta1, beta2; adamw_betas -> adamw_beta1, ...; betas_1d -> beta1_1d, ...; nus -> nu1, nu2."""
    if "betas" in name:
        return [name.replace("betas", f"beta{i + 1}") for i in range(n)]
    stem = name[:-1] if name.endswith("s") else name + "_"
    return [f"{stem}{i + 1}" for i in range(n)]


def discover(cls: type, name: str) -> tuple[dict[str, param.Parameter], dict[str, list[str]], str | None, Any]:
    """(params, tuples, lr key, default lr) from a constructor's signature.

    `tuples` maps a tuple argument (betas) to the names of its elements (beta1, beta2).
    """
    params: dict[str, param.Parameter] = {}
    tuples: dict[str, list[str]] = {}
    sig = inspect.signature(cls.__init__)
    lr_key = _LR_KEY.get(name, "lr")
    skip = {"lr"} if lr_key is None else {lr_key}
    args = [a for a in list(sig.parameters.values())[2:]
            if a.kind not in (a.VAR_KEYWORD, a.VAR_POSITIONAL) and a.name not in _SKIP]
    lr_default = sig.parameters[lr_key].default if lr_key in sig.parameters else None
    for a in args:
        if a.name in skip:
            continue
        d, doc = a.default, _DOCS.get(a.name, f"{a.name} of {cls.__name__} (default {a.default!r})")
        if d is inspect.Parameter.empty:
            if a.name not in _REQUIRED:
                raise TypeError(f"{cls.__name__} needs {a.name!r}, which has no default")
            d, doc = _REQUIRED[a.name]
        if isinstance(d, (enum.Enum, torch.dtype)) or callable(d):
            continue
        if a.name in _CHOICES:
            params[a.name] = param.Selector(default=d, objects=_CHOICES[a.name], doc=doc)
        elif typing.get_origin(a.annotation) is typing.Literal and isinstance(d, str):
            params[a.name] = param.Selector(default=d, objects=list(typing.get_args(a.annotation)), doc=doc)
        elif isinstance(d, bool):
            params[a.name] = param.Boolean(d, doc=doc)
        elif isinstance(d, int) and not _is_float(a.annotation):
            lo = 1 if a.name in _POSITIVE_INTS and d >= 1 else (0 if d >= 0 else None)
            params[a.name] = param.Integer(d, bounds=(lo, None), doc=doc)
        elif isinstance(d, (int, float)):
            p = _float_param(a.name, float(d), doc)
            if p is not None:
                params[a.name] = p
        elif (isinstance(d, tuple) and d and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in d)
              and any(isinstance(x, float) for x in d)):
            names = _tuple_names(a.name, len(d))
            if any(n in params or n in sig.parameters for n in names):
                continue  # an element name already taken: the tuple stays at its default
            elems = [_float_param(n, float(x), _DOCS.get(n, f"{a.name}[{i}] of {cls.__name__}"))
                     for i, (n, x) in enumerate(zip(names, d))]
            if all(e is not None for e in elems):
                params.update(zip(names, elems))
                tuples[a.name] = names
    return params, tuples, lr_key, lr_default


def _muon_groups(parameters) -> list[dict]:
    """Muon orthogonalizes 2-D weight matrices; every other parameter goes to its AdamW groups."""
    ps = list(parameters)
    groups = [{"params": [p for p in ps if p.ndim == 2], "use_muon": True},
              {"params": [p for p in ps if p.ndim != 2], "use_muon": False}]
    return [g for g in groups if g["params"]]


_ADAMW_KEYS = {"adamw_lr": "lr", "adamw_betas": "betas", "adamw_eps": "eps", "adamw_wd": "weight_decay"}


def _dummy_params() -> list[torch.Tensor]:
    """A 2-D and a 1-D tensor: enough for every optimizer's constructor (Muon's 2-D group included)."""
    return [torch.zeros(2, 2, requires_grad=True), torch.zeros(2, requires_grad=True)]


@dataclass(frozen=True)
class OptimizerInfo:
    """What the registry knows of an optimizer beyond its settings (an entry's `meta`)."""

    cls: type                      # the torch.optim.Optimizer subclass
    source: str                    # "torch.optim", "pytorch_optimizer" or "trainlab"
    usual_lr: float                # the lr a run starts with when none is given
    lr_key: str | None             # the constructor argument the run's lr sets (None: the optimizer has none)
    step: str                      # "plain", "closure", "second_order" or "zeroth_order"
    takes_model: bool              # the constructor takes the model, not its parameters
    tuples: dict[str, list[str]] = field(default_factory=dict)  # betas -> [beta1, beta2]

    def to_group(self, hp: dict) -> dict:
        """Declared hyperparameters -> constructor/param-group keys (beta1, beta2 -> betas)."""
        hp = dict(hp)
        for key, names in self.tuples.items():
            if names[0] in hp:
                hp[key] = tuple(hp.pop(n) for n in names)
        return hp

    def split(self, values: dict, optimizer: str) -> dict:
        """Settings given under the constructor's own names (betas=(0.9, 0.99)) as the declared split names.

        A tuple of the wrong length, or given beside its split names, is refused naming both.
        """
        out = dict(values)
        for key, names in self.tuples.items():
            if key not in out:
                continue
            value = out.pop(key)
            if torch.is_tensor(value) or not isinstance(value, (tuple, list)) or len(value) != len(names):
                raise ValueError(f"{key}={value!r} rejected for {optimizer}: a tuple of {len(names)} numbers "
                                 f"({', '.join(names)})")
            both = [n for n in names if n in out]
            if both:
                raise ValueError(f"give {key} or {', '.join(names)}, not both (got {key} and {both[0]})")
            out.update(zip(names, value))
        return out


def _register(name: str, cls: type, source: str) -> None:
    params, tuples, lr_key, lr_default = discover(cls, name)
    takes_model = list(inspect.signature(cls.__init__).parameters)[1] == "model"
    usual = _USUAL_LR.get(name, lr_default if isinstance(lr_default, (int, float)) and lr_default else 1e-3)
    step = ("zeroth_order" if name in ZEROTH else "closure" if name in CLOSURE
            else "second_order" if name in HESSIAN else "plain")
    info = OptimizerInfo(cls, source, float(usual), lr_key, step, takes_model, tuples)
    defaults = {k: p.default for k, p in params.items()}

    def build(parameters, lr: float, **hp) -> torch.optim.Optimizer:
        hp = info.to_group({**defaults, **hp})  # settings not given take the declared defaults (num_data included)
        kw = {lr_key: lr, **hp} if lr_key else hp
        if name in MUON_FAMILY:
            parameters = _muon_groups(parameters)
        elif takes_model and not isinstance(parameters, torch.nn.Module):
            parameters = torch.nn.ParameterList(parameters)  # a bare list of tensors, as a module
        return cls(parameters, **kw)

    doc = ((cls.__doc__ or name).strip().splitlines() or [name])[0]
    optimizers.register(name, doc=f"{doc} ({source}.{cls.__name__})", meta=info, **params)(build)


def _torch_classes() -> dict[str, type]:
    out = {}
    for attr in dir(torch.optim):
        c = getattr(torch.optim, attr)
        if isinstance(c, type) and issubclass(c, torch.optim.Optimizer) and c is not torch.optim.Optimizer:
            out[attr.lower()] = c
    return out


def _populate() -> None:
    import pytorch_optimizer

    torch_classes = _torch_classes()
    found: dict[str, tuple[type, str]] = {n: (c, "torch.optim") for n, c in torch_classes.items()}
    for n in pytorch_optimizer.get_supported_optimizers():
        c = pytorch_optimizer.load_optimizer(n)
        if c in torch_classes.values():
            continue  # pytorch_optimizer re-exports torch's class under torch's name: one entry
        found[f"{n}_po" if n in torch_classes else n] = (c, "pytorch_optimizer")
    found.update(adagradnorm=(AdaGradNorm, "trainlab"), zosgd=(ZerothOrderSGD, "trainlab"))
    for n in sorted(found):
        if n not in refused:
            _register(n, *found[n])


_populate()


def entry(name: Any):
    """The registry entry for `name`; a refused name raises its reason, an unknown one lists the valid names."""
    if isinstance(name, str) and name in refused:
        raise ValueError(f"optimizer {name!r} is not offered: {refused[name]}")
    return optimizers[name]


def unknown_setting(optimizer: str, key: str, valid: list[str]) -> ValueError:
    """The refusal of a setting the optimizer does not offer, saying why when the reason is known."""
    entry = optimizers[optimizer]
    if key in _SKIP:
        return ValueError(f"{key!r} is a switch of the optimizer's implementation, not a training setting: trainlab "
                          f"builds {optimizer} with its default; valid settings: {', '.join(valid)}")
    if key in inspect.signature(entry.meta.cls.__init__).parameters:
        return ValueError(f"{key!r} of {optimizer} cannot be set from trainlab (it is not a number, flag or choice); "
                          f"it keeps the optimizer's default; valid settings: {', '.join(valid)}")
    return ValueError(f"unknown setting {key!r}; valid settings (for {optimizer}): {', '.join(valid)}")


def check_hparams(name: str, lr: float, hp: dict) -> None:
    """Cross-field rules (Nesterov needs momentum, ...) checked by the optimizer's own constructor on a dummy."""
    try:
        optimizers[name].build(_dummy_params(), lr=lr, **hp)
    except (ValueError, TypeError, RuntimeError) as e:
        raise ValueError(f"{name} rejects these settings: {type(e).__name__}: {e}") from None


def write_groups(opt: torch.optim.Optimizer, name: str, lr: float, hp: dict) -> set[str]:
    """Apply hyperparameters to every param group (read afresh at each step).

    The values written are those the optimizer's own constructor derives from the settings (built on
    a dummy), so a constructor that transforms one (GrokFastAdamW divides lr by 1 + lamb; Muon's AdamW
    groups take adamw_lr as lr) gets the same value live as at construction. Returns the keys no group
    holds: the optimizer reads them only in its constructor, so changing one needs a rebuild.
    """
    entry = optimizers[name]
    ref_opt = entry.build(_dummy_params(), lr=lr, **hp)
    keys = set(entry.meta.to_group(hp)) | ({entry.meta.lr_key} if entry.meta.lr_key else set())
    refs = {g.get("use_muon"): g for g in ref_opt.param_groups}
    missing = set()
    for group in opt.param_groups:
        ref = refs.get(group.get("use_muon"), ref_opt.param_groups[0])
        if name in MUON_FAMILY and not group.get("use_muon", True):
            wanted = {_ADAMW_KEYS[k] for k in keys if k in _ADAMW_KEYS} | {"weight_decouple"}
        else:
            wanted = keys - set(_ADAMW_KEYS)
        for k in wanted:
            if k in group and k in ref:
                group[k] = ref[k] * group[_MULT_OF[k]] if _MULT_OF.get(k) in group else ref[k]
            elif k not in group:
                missing.add(k)
    return missing


# A param group's multipliers (μP's per-layer lrs, trainlab.parametrizations): the group's lr is the run's lr
# times "lr_mult" and its weight decay the setting times "wd_mult", whatever writes them (construction,
# write_groups, then schedules scale the groups' base lrs).
_MULT_OF = {"lr": "lr_mult", "weight_decay": "wd_mult"}


def grouped(named: list[tuple[str, torch.Tensor]], mults: dict[str, tuple[float, float]] | None):
    """The parameters as a list (no multipliers), or as param groups of equal (lr, weight-decay) multipliers,
    in the order the parameters come: {"params": [...], "lr_mult": m, "wd_mult": w}."""
    if mults is None:
        return [p for _, p in named]
    groups: dict[tuple[float, float], list[torch.Tensor]] = {}
    for n, p in named:
        groups.setdefault(mults.get(n, (1.0, 1.0)), []).append(p)
    return [{"params": ps, "lr_mult": lm, "wd_mult": wm} for (lm, wm), ps in groups.items()]


def build_grouped(name: str, named: list[tuple[str, torch.Tensor]], mults: dict | None, lr: float,
                  hp: dict) -> torch.optim.Optimizer:
    """Optimizer `name` over the named parameters, each group's lr and decay times its multipliers (the values
    the constructor derives from the settings, then multiplied, as write_groups does)."""
    entry = optimizers[name]
    opt = entry.build(grouped(named, mults), lr=lr, **hp)
    if mults is not None:
        for group in opt.param_groups:
            for k, m in _MULT_OF.items():
                if m in group and k in group:
                    group[k] = group[k] * group[m]
    return opt


def _dry_step(build: Callable, params: list[torch.Tensor], zero: bool) -> list[dict[str, Any]]:
    """The per-parameter state a fresh optimizer holds after one step on copies of `params`: with zero
    gradients (the state as its first step creates it) or small random ones (to see every key)."""
    clones = [p.detach().clone().requires_grad_(True) for p in params]
    opt = build(clones)
    # the optimizer may hold its own Parameter objects over the clones' storage (a model-taking one): match by storage
    held = {q.data_ptr(): q for g in opt.param_groups for q in g["params"]}
    gen = torch.Generator(device="cpu").manual_seed(0)
    for c in clones:
        q = held.get(c.data_ptr(), c)
        g = torch.randn(c.shape, generator=gen, dtype=c.dtype).to(c.device) * 1e-3
        q.grad = torch.zeros_like(g) if zero else g
    zero_loss = torch.zeros((), dtype=clones[0].dtype, device=clones[0].device)
    try:
        opt.step()
    except (TypeError, RuntimeError, ValueError):  # an optimizer that steps with a closure
        opt.step(lambda: zero_loss)
    return [opt.state.get(held.get(c.data_ptr(), c), {}) for c in clones]


def _state_shapes(build: Callable, params: list[torch.Tensor]) -> list[dict[str, Any]]:
    """The per-parameter state a fresh optimizer creates in one step: key -> (shape, dtype) (None if not a tensor)."""
    return [{k: (tuple(v.shape), v.dtype) if torch.is_tensor(v) else None for k, v in st.items()}
            for st in _dry_step(build, params, zero=False)]


def _step_zero(opt: torch.optim.Optimizer) -> None:
    """One step of `opt` with zero gradients (a closure returning 0 where the optimizer wants one)."""
    for g in opt.param_groups:
        for p in g["params"]:
            p.grad = torch.zeros_like(p)
    first = opt.param_groups[0]["params"][0]
    try:
        opt.step()
    except (TypeError, RuntimeError, ValueError):
        opt.step(lambda: torch.zeros((), dtype=first.dtype, device=first.device))


def _fails(build: Callable, params: list[torch.Tensor], state: dict | None = None) -> str | None:
    """Why one step fails of a new optimizer over copies of `params`, loaded with `state` (an optimizer's
    state_dict) if given, or None. (A deepcopy of an optimizer would lose the attributes that
    pytorch_optimizer's keep outside its state: torch pickles only defaults, state and groups.)"""
    try:
        opt = build([p.detach().clone().requires_grad_(True) for p in params])
        if state is not None:
            opt.load_state_dict(copy.deepcopy(state))
        _step_zero(opt)
    except Exception as e:  # noqa: BLE001 - any failure means the state does not fit
        return f"{type(e).__name__}: {e}"
    return None


def _fill(have: dict, fresh: dict, created: set, prefix: str = "") -> None:
    """Add to `have` the entries of `fresh` it lacks, inside nested dicts too (AggMo keys buffers by beta)."""
    for k, v in fresh.items():
        if k not in have or (have[k] is None and v is not None):  # some keep None for "off"
            have[k] = v.detach().clone() if torch.is_tensor(v) else copy.deepcopy(v)
            created.add(f"{prefix}{k}")
        elif isinstance(v, dict) and isinstance(have[k], dict):
            _fill(have[k], v, created, f"{prefix}{k}[")


def flipped(now: dict, before: dict) -> list[str]:
    """Settings that changed in kind, not only in size: a flag, a choice, or a number leaving or reaching 0.
    These are the changes that can alter which state an optimizer keeps or whether it can step at all."""
    return [k for k, v in now.items() if k in before and v != before[k] and (
        isinstance(v, (bool, str)) or v is None or before[k] is None or (v == 0) != (before[k] == 0))]


def check_step(name: str, lr: float, hp: dict, before: dict, params: list[torch.Tensor]) -> None:
    """Refuse (ValueError) flipped settings with which a new optimizer cannot take one step on these
    parameters, while it can with the settings before (Rose's wd_schedule=True needs a torch scheduler's
    initial_lr; SOAP's merge_dims fails on 1-D parameters)."""
    changed = flipped(hp, before)
    if not changed:
        return
    entry = optimizers[name]
    if entry.meta.takes_model:
        return  # a model-taking optimizer would step the live model itself: not tried on copies

    def build(settings):
        return lambda ps: entry.build(ps, lr=lr, **settings)

    problem = _fails(build(hp), params)
    if problem is not None and _fails(build(before), params) is None:
        raise ValueError(f"{name} cannot take a step on this model with {', '.join(f'{k}={hp[k]!r}' for k in changed)}: "
                         f"{problem.splitlines()[0][:200]}")


def reconcile_state(opt: torch.optim.Optimizer, build: Callable, params: list[torch.Tensor]) -> str | None:
    """After a live change of settings, give the optimizer's state what it now needs.

    Turning on a flag that keeps more state (Adam's amsgrad: max_exp_avg_sq; RMSprop's momentum or
    centered) makes torch's optimizers read state their first steps did not create: the next step would
    raise KeyError and the run would be stuck. Missing entries are created as a fresh optimizer's first
    step creates them (one step with zero gradients on copies: zeros for running maxima, buffers and
    averages). Then a copy of the optimizer takes one step; if that fails (a preconditioner whose shapes
    the flag changes, as SOAP's merge_dims), the state is reset, as a new optimizer's would be. Returns
    what was done, for the run's `event` column, or None when nothing needed doing.
    """
    if not opt.state:
        return None  # not stepped yet: its first step creates what it needs
    try:
        fresh = _dry_step(build, params, zero=True)
    except Exception:  # noqa: BLE001 - an optimizer that cannot step on copies: leave it as it is
        return None
    created: set[str] = set()
    for p, new in zip(params, fresh):
        if opt.state.get(p):
            _fill(opt.state[p], new, created)
    # a step that fails fresh (Hessian-vector optimizers need a graph) says nothing about the state
    problem = _fails(build, params, opt.state_dict()) if _fails(build, params) is None else None
    if problem is not None:
        opt.state.clear()
        return f"state reset (the state kept so far does not fit: {problem.splitlines()[0][:120]})"
    return f"created {', '.join(sorted(created))} as its first step does" if created else None


def carry_state(old: torch.optim.Optimizer, new: torch.optim.Optimizer, build: Callable,
                params: list[torch.Tensor]) -> str:
    """Copy into `new` the per-parameter state of `old` whose keys and shapes it needs; says what was kept.

    A parameter keeps its state only if `old` has every entry the new optimizer would create (same key,
    shape and dtype): a partial state would mix fresh and carried moments.
    """
    try:
        wanted = _state_shapes(build, params)
    except Exception as e:  # noqa: BLE001 - a closure-only or exotic optimizer: no dry step possible
        return f"state reset (keep impossible: {type(e).__name__})"
    kept: set[str] = set()
    n_kept = 0
    for p, want in zip(params, wanted):
        have = old.state.get(p, {})
        shape = {k: (tuple(v.shape), v.dtype) if torch.is_tensor(v) else None for k, v in have.items()}
        if want and all(k in shape and shape[k] == s for k, s in want.items()):
            new.state[p] = {k: (have[k].clone() if torch.is_tensor(have[k]) else have[k]) for k in want}
            kept |= set(want)
            n_kept += 1
    dropped = {k for p in params for k in old.state.get(p, {})} - kept
    if not n_kept:
        need = sorted({k for w in wanted for k in w})
        had = sorted({k for p in params for k in old.state.get(p, {})})
        return f"state reset: nothing kept (the new optimizer needs {need or 'no state'}, the old one had {had or 'none'})"
    return (f"state kept for {n_kept}/{len(params)} tensors: {', '.join(sorted(kept))}"
            + (f"; dropped: {', '.join(sorted(dropped))}" if dropped else ""))
