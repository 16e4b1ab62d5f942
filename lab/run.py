"""The Run: a model, its data, loss, optimizer and probes, trained step by step or in the background.

This file holds the settings and the thread API. How one step is taken for each kind of optimizer is
`trainlab.stepping`; the checkpoint format is `trainlab.checkpoint`.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import os
import threading
import time
from typing import Any, Callable

import param
import torch
from torch import nn

from . import checkpoint, share
from .adaptive_batch import AdaptiveBatch
from .data import Data, as_data, batches, val_batches
from .divergence import Guard
from .functional import eval_mode
from .history import History
from .models import check_fits, default_loss, models
from .norms import batch_dependent
from .optimizers import (build_grouped, carry_state, check_hparams, check_step, flipped, optimizers, reconcile_state,
                         unknown_setting, write_groups)
from .optimizers import entry as optimizer_entry
from .probes import Probe, default_probes
from .prune.masks import load_state
from .prune.runtime import Pruning
from .parametrizations import multipliers
from .registry import LogInteger, LogNumber, RejectedType, number, option_values, parse_spec, validate
from .schedules import as_schedule
from .stepping import KINDS, AnnealedNoise, FlatGrads
from .threads import choose as choose_threads

FORMAT = checkpoint.FORMAT


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """'auto' takes CUDA when present, else Apple's MPS, else the CPU; a device that is not here is refused."""
    allowed = "'auto', 'cpu', 'cuda', 'cuda:<n>' or 'mps'"
    if not isinstance(device, (str, torch.device)):
        raise RejectedType(f"device={device!r} rejected: {allowed} (or a torch.device)")
    if str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ValueError(f"device={device!r} rejected: {allowed}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} rejected: CUDA is not available on this machine; use 'auto' or 'cpu'")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"device={device!r} rejected: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError(f"device={device!r} rejected: Apple's MPS is not available here; use 'auto' or 'cpu'")
    return dev


def _seed(seed: Any) -> int:
    """A seed for torch's generators: a whole number in [0, 2**63 - 2] (the run also seeds seed + 1)."""
    seed = number(seed, "seed", integer=True, what="Run")
    if not 0 <= seed <= 2**63 - 2:
        raise ValueError(f"seed={seed} rejected for Run: a whole number from 0 to 2**63 - 2")
    return seed


def _probes(probes: Any) -> list[Probe] | None:
    if probes is None:
        return None
    if isinstance(probes, Probe) or not isinstance(probes, (list, tuple)):
        raise RejectedType(f"probes={probes!r} rejected: a list of trainlab.Probe instances (or None for the defaults)")
    for i, p in enumerate(probes):
        if not isinstance(p, Probe):
            raise RejectedType(f"probes[{i}]={p!r} rejected: a trainlab.Probe instance (subclass Probe and "
                               f"implement measure)")
    return list(probes)


def _settings_of(entry, values: dict) -> dict:
    """An optimizer's settings under its declared names (betas=(...) -> beta1, beta2); an unknown one refused."""
    values = entry.meta.split(values, entry.name)
    unknown = [k for k in values if k not in entry.params]
    if unknown:
        raise unknown_setting(entry.name, unknown[0], [*Run.SETTABLE, *entry.params])
    return values


def _options(entry, values: dict) -> param.Parameterized:
    return entry.options(**_settings_of(entry, values))


def _check_size(name: str, data: Data, options: dict) -> None:
    """On a shared server, refuse a registered model past its size cap before allocating it: counted on
    torch's meta device, which holds shapes and no memory (an initializer the meta device cannot run is
    counted after the real build instead)."""
    shared = share.current()
    if shared is None or shared.max_params is None:
        return
    try:
        with torch.device("meta"):
            model = models.build(name, data, **options)
    except ValueError:
        raise
    except Exception:
        return
    shared.check_model(sum(p.numel() for p in model.parameters() if p.requires_grad))


def _layers(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """Modules that own trainable parameters, by name: the 'layers' of per-layer probes."""
    out = {}
    for name, module in model.named_modules():
        params = [p for p in module.parameters(recurse=False) if p.requires_grad]
        if params:
            out[name or type(module).__name__] = params
    return out


class Run(param.Parameterized):
    """A training run whose hyperparameters can change while it trains.

    >>> run = Run(model="mlp", data="digits", optimizer="sgd", lr=0.05, momentum=0.9)
    >>> run.step(100)                  # synchronous
    >>> run.start(); run.set(lr=0.01)  # background thread; the change applies at the next step
    >>> run.history.frame()            # a DataFrame, a row per step

    `model` is a registered name ("mlp", "cnn"), a (name, {options}) pair or any nn.Module;
    `data` a registered name, a (name, {options}) pair, an (X, y) pair, a Dataset or a DataLoader.
    Extra keyword arguments are the optimizer's own hyperparameters (momentum, beta1 or betas, eps,
    ...) and the run's other live settings (grad_noise, adaptive_batch, ...: see `run.settings()`).
    `threads` is torch's intra-op thread count while this run trains ("auto": 1 for small models,
    else the CPUs this process may use). `pruning` is a `trainlab.prune.Sparsifier`'s arguments: a
    method name, a (method, {options}) pair or a dict (`run.set(pruning=..., sparsity=...)` live).
    """

    lr = LogNumber(0.05, bounds=(0, None), inclusive_bounds=(False, True), softbounds=(1e-4, 1.0),
                   doc="learning rate")
    batch_size = LogInteger(64, bounds=(1, None), softbounds=(1, 1024), doc="examples per step")
    optimizer = param.Selector(default="sgd", objects=optimizers.names(), doc="optimizer, by name")
    eval_every = param.Integer(50, bounds=(1, None), softbounds=(1, 1000), doc="steps between validation passes")
    grad_noise = LogNumber(0.0, bounds=(0, 100), softbounds=(1e-4, 1.0),
                           doc="annealed gradient noise η (Neelakantan et al. 2015): g += N(0, η/(1+t)^γ); 0 = off")
    grad_noise_decay = param.Number(0.55, bounds=(0, None), softbounds=(0, 1), step=0.05,
                                    doc="γ of the gradient-noise variance η/(1+t)^γ (the paper's 0.55)")
    adaptive_batch = param.Selector(default="off", objects=["off", "norm", "inner_product"],
                                    doc="AdAdaGrad's adaptive batch size: a gradient-variance test every "
                                        "batch_test_every steps grows the batch when it fails")
    batch_test_every = param.Integer(10, bounds=(1, None), softbounds=(1, 100), doc="steps between batch-size tests")
    batch_test_eta = param.Number(0.5, bounds=(0, None), inclusive_bounds=(False, True), softbounds=(0.05, 2.0),
                                  step=0.05, doc="η of the norm test (θ = ν = η for the inner-product test): "
                                                 "smaller asks for larger batches")
    max_batch_size = LogInteger(1024, bounds=(1, None), softbounds=(1, 4096), doc="cap on the adaptive batch size")
    diverge_factor = param.Number(100.0, bounds=(0, None), softbounds=(0, 1000), step=10,
                                  doc="pause and roll back when the loss exceeds this many times its recent median "
                                      "(and 10 times the first loss); 0: only when it is not finite")
    status = param.Selector(default="idle", objects=["idle", "running", "paused", "stopped"], constant=True,
                            doc="idle (not started), running, paused (by pause() or divergence), stopped")
    message = param.String("", constant=True, doc="why the run paused by itself (divergence), or a rejected change")

    SETTABLE = ("lr", "batch_size", "optimizer", "eval_every", "grad_noise", "grad_noise_decay", "adaptive_batch",
                "batch_test_every", "batch_test_eta", "max_batch_size", "diverge_factor")

    def __init__(
        self,
        model: str | tuple | nn.Module = "mlp",
        data: Any = "digits",
        loss: Callable | None = None,
        optimizer: str = "sgd",
        lr: float | None = None,
        batch_size: int = 64,
        seed: int = 0,
        device: str | torch.device = "auto",
        val_data: Any = None,
        eval_every: int = 50,
        schedule: str | tuple = "constant",
        probes: list[Probe] | None = None,
        history: History | None = None,
        threads: int | str = "auto",
        pruning: Any = None,
        **optimizer_hparams,
    ):
        super().__init__()
        entry = optimizer_entry(optimizer)
        settings = dict(lr=entry.meta.usual_lr if lr is None else lr, batch_size=batch_size, optimizer=optimizer,
                        eval_every=eval_every)
        settings.update({k: optimizer_hparams.pop(k) for k in self.SETTABLE if k in optimizer_hparams})
        settings = validate(self, settings, "Run")
        self.opt_params = _options(entry, optimizer_hparams)
        check_hparams(optimizer, settings["lr"], option_values(self.opt_params))
        self._schedule = as_schedule(schedule)  # the lr of each step: lr x schedule(steps taken)
        self.param.update(**settings)

        self.seed, self.device = _seed(seed), resolve_device(device)
        probes = _probes(probes)
        if history is not None and not isinstance(history, History):
            raise RejectedType(f"history={history!r} rejected: a trainlab.History (or None for a new one)")
        self.data: Data = as_data(data, val_data).to(self.device)
        self.model_spec = parse_spec(model)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)  # the same seed gives the same initial weights
            if self.model_spec is not None:
                name, options = self.model_spec
                _check_size(name, self.data, options)
                self.model = models.build(name, self.data, **options)
                self.model_spec = (name, {**models[name].defaults(), **options})
            elif isinstance(model, nn.Module):
                self.model = model
            else:
                raise ValueError(f"model must be a name ({', '.join(models.names())}), a (name, options) pair "
                                 f"or an nn.Module; got {type(model).__name__}")
        self.model.to(self.device)
        self.loss_fn = loss or default_loss(self.data.task)
        check_fits(self.model, self.loss_fn, self.data, self.device)
        if self.data.fixed_batch_size:
            with param.parameterized.discard_events(self):
                self.batch_size = self.data.source.batch_size or batch_size
            self._check_live_batch(self.adaptive_batch, None)
        self._check_batch_statistics(self.batch_size)

        self.layers = _layers(self.model)
        self.params = [p for ps in self.layers.values() for p in ps]  # trainable, in layer order
        if share.current() is not None:  # a shared server's cap on model size
            share.current().check_model(sum(p.numel() for p in self.params))
        names = {id(p): n for n, p in self.model.named_parameters()}
        self._param_names = [names[id(p)] for p in self.params]
        multipliers(self.model, self.optimizer)  # a μP model refuses an optimizer it has no lr rule for
        # the examples a step sees, not the nominal batch size (full-batch runs ask for 100,000 of 320)
        self.threads = choose_threads(threads, sum(p.numel() for p in self.params),
                                      min(self.batch_size, self.data.n_examples))
        self.grads = FlatGrads(self.params)
        self._buffers = list(self.model.buffers())  # all of them: BatchNorm's num_batches_tracked too
        self._initial_state = copy.deepcopy(self.model.state_dict())
        self.history = History() if history is None else history  # an empty History is falsy
        self.probes = default_probes(self) if probes is None else probes
        self._pruning_spec = pruning
        Pruning.of(self, pruning)  # refused here, before anything trains, if the spec is bad

        self._lock = threading.RLock()          # held for each step: steps never interleave
        self._settings_lock = threading.Lock()  # held while settings are written or read as a set
        self._go, self._halt = threading.Event(), threading.Event()
        self._thread: threading.Thread | None = None
        self.param.watch(self._mark_dirty, list(self.SETTABLE))
        self._watch_opt_params()
        self._step_listeners: list[Callable] = []
        # {"run", "step", "asked"}: the run and step this one was forked from ("run": its name in the store, None
        # for a live run not recorded in one)
        self.parent: dict | None = None
        self._init_training_state()

    # ---- settings ---------------------------------------------------------------------------
    def _mark_dirty(self, *events) -> None:
        self._dirty = True

    def _watch_opt_params(self) -> None:
        self.opt_params.param.watch(self._mark_dirty, [n for n in self.opt_params.param if n != "name"])

    @param.depends("optimizer", watch=True)
    def _on_optimizer(self) -> None:
        # direct assignment (run.optimizer = "adam"): the new optimizer starts from its defaults
        if type(self.opt_params).__name__ != self.optimizer:
            self.opt_params = optimizers[self.optimizer].options()
            self._watch_opt_params()
            self._rebuild_opt = True

    @property
    def schedule(self) -> tuple[str, dict]:
        """(name, options) of the lr schedule; change it with run.set(schedule=(name, {options}))."""
        return self._schedule.spec

    @property
    def schedule_start(self) -> int:
        """The step the schedule counts from: where it was chosen (0 for the run's own)."""
        return self._schedule.start

    @property
    def current_lr(self) -> float:
        """The lr the last step used (the base lr times the schedule)."""
        return self._lr

    def settings(self) -> dict[str, Any]:
        """Every live setting: the run's own and the current optimizer's."""
        return {**{k: getattr(self, k) for k in self.SETTABLE}, **self.optimizer_settings()}

    def optimizer_settings(self) -> dict[str, Any]:
        """The current optimizer's own settings (momentum, beta1, ...), under their declared names."""
        return option_values(self.opt_params)

    def _check_live_batch(self, adaptive: str, batch_size: int | None) -> None:
        if not self.data.fixed_batch_size:
            return
        if adaptive != "off":
            raise ValueError("adaptive_batch needs a live batch size, which the DataLoader you passed fixes; "
                             "pass its Dataset instead")
        if batch_size is not None:
            raise ValueError("batch_size is fixed by the DataLoader you passed; pass its Dataset instead "
                             "to change the batch size live")

    def _check_batch_statistics(self, batch_size: int | None) -> None:
        """A layer normalizing by the batch's statistics needs two examples a step: refused here, not a
        failure (BatchNorm1d) or a silent zero output later."""
        if batch_size is None or min(batch_size, self.data.n_examples) >= 2:
            return
        layers = batch_dependent(self.model)
        if layers:
            kind = type(self.model.get_submodule(layers[0])).__name__
            raise ValueError(f"batch_size={batch_size} rejected: {layers[0]} ({kind}) normalizes by the batch's "
                             "statistics in training, which a single example does not have; "
                             f"use batch_size >= 2, or a norm independent of the batch (layernorm, groupnorm, rmsnorm, "
                             f"powernorm, evonorm_s0)")

    def set(self, state: str | None = None, **values) -> None:
        """Change settings while the run trains; they apply at the next step.

        Every value is checked first; a bad one raises ValueError naming the setting and its
        allowed range, and then nothing changes. When switching optimizer, `state="reset"` (the
        default) starts it fresh and `state="keep"` carries over the per-parameter state whose keys
        and shapes the new optimizer uses (adam -> adamw keeps exp_avg, exp_avg_sq, step); the
        history's `event` column says which. The optimizer's tuple settings take either form:
        `betas=(0.9, 0.99)` or `beta1=0.9, beta2=0.99`.
        """
        pruning = self._check_pruning(values.pop("pruning", _UNSET), values.pop("sparsity", _UNSET))
        start = values.pop("schedule_start", None)
        schedule = as_schedule(values.pop("schedule")) if "schedule" in values else None
        if start is not None:
            if schedule is None:
                raise ValueError("schedule_start goes with schedule: run.set(schedule=..., schedule_start=0)")
            start = number(start, "schedule_start", integer=True, what="Run")
            if start < 0:
                raise ValueError(f"schedule_start={start} rejected: a step >= 0")
        own = {k: v for k, v in values.items() if k in self.SETTABLE}
        rest = {k: v for k, v in values.items() if k not in own}
        if "optimizer" in own:
            optimizer_entry(own["optimizer"])  # a refused name says why, an unknown one lists the valid ones
        own = validate(self, own, "Run")
        name = own.get("optimizer", self.optimizer)
        switching = name != self.optimizer
        if state not in (None, "keep", "reset"):
            raise ValueError(f"state={state!r}: use state='keep' or state='reset' when switching optimizer")
        if state is not None and not switching:
            raise ValueError("state= only applies when switching optimizer (run.set(optimizer=..., state='keep'))")
        self._check_live_batch(own.get("adaptive_batch", "off"), own.get("batch_size"))
        self._check_batch_statistics(own.get("batch_size"))
        entry = optimizers[name]
        if switching:
            opt_params = _options(entry, rest)
        else:
            rest = _settings_of(entry, rest)
            rest = validate(self.opt_params, rest, name)
            opt_params = None
        hp = option_values(opt_params) if switching else {**self.optimizer_settings(), **rest}
        check_hparams(name, own.get("lr", self.lr), hp)
        if not switching:
            check_step(name, own.get("lr", self.lr), hp, self.optimizer_settings(), self.params)
        else:
            multipliers(self.model, name)  # a μP model refuses an optimizer it has no lr rule for
        with self._settings_lock:
            before = self.settings()
            if switching:
                # the event is written when it applies; a switch not yet applied names the optimizer that last stepped
                self._switch = (self._switch[0] or self.optimizer, state == "keep")
                self.opt_params = opt_params
                self._watch_opt_params()
                self._rebuild_opt = True
            else:
                self.opt_params.param.update(**rest)
            self.param.update(**own)
            if schedule is not None:
                # a schedule chosen mid-run counts from now (a warm-up warms up, a cosine spans its steps
                # from here), unless schedule_start says from which step
                schedule.start = self._step if start is None else start
                self._schedule = schedule
                self.note(f"schedule {schedule.name} from step {schedule.start}")
            if pruning is not _UNSET:
                self._next_pruning = pruning
            self._dirty = True
            change = {k: v for k, v in self.settings().items() if k not in before or before[k] != v}
            if schedule is not None:
                change.update(schedule=list(schedule.spec), schedule_start=schedule.start)
            if pruning is not _UNSET:
                change["pruning"] = None if pruning[0] is None else pruning[0].sparsifier.spec
            if switching:
                change["state"] = state or "reset"
            if change:
                self._pending_changes.append(change)

    # ---- pruning ----------------------------------------------------------------------------
    @property
    def pruning(self) -> dict | None:
        """The Sparsifier's arguments the run prunes with (None: not pruning); `run.set(pruning=...)` changes them."""
        return None if self._pruning is None else self._pruning.sparsifier.spec

    @property
    def pruning_state(self) -> Pruning | None:
        """The live pruning (its Sparsifier and the masks the step applies), or None."""
        return self._pruning

    def _check_pruning(self, spec: Any, sparsity: Any) -> Any:
        """A new Pruning (None to stop pruning) validated against the model, or _UNSET when neither is given."""
        if spec is _UNSET and sparsity is _UNSET:
            return _UNSET
        keep_start = spec is _UNSET
        if keep_start:
            current = self._next_pruning[0] if self._next_pruning is not _UNSET else self._pruning  # a pending one counts
            if current is None:
                raise ValueError("sparsity= needs pruning: run.set(pruning='magnitude', sparsity=0.9)")
            spec = current.sparsifier.spec
        if sparsity is not _UNSET:
            if spec is None or spec == "off":
                raise ValueError("sparsity= does not go with pruning=None (pruning off)")
            if not isinstance(spec, dict):
                from .registry import parse_spec as _parse
                name, opts = _parse(spec, "pruning")
                spec = {"method": name, **opts}
            spec = {**spec, "sparsity": sparsity}
        with self._lock:  # between steps: a probe's torch.func call swaps the weights for plain tensors meanwhile,
            new = Pruning.of(self, spec)  # and the model looked as if it had no prunable layer (seen in the dashboard)
        if new is not None and keep_start:
            new.sparsifier.load(current.sparsifier.state())  # the same plan, its final sparsity changed
            keep_start = self._next_pruning[1] if self._next_pruning is not _UNSET else True
        return (new, keep_start)

    def _switch_pruning(self, new: Pruning | None, keep_start: bool) -> None:
        if new is None:
            if self._pruning is not None:
                self._pruning.remove(self)
                self.note("pruning off (masks removed; pruned weights start from 0)")
            self._pruning = None
            return
        if not keep_start:
            new.sparsifier.start = self._step
            self.note(f"pruning {new.sparsifier.method} to {new.sparsifier.sparsity:g} from step {self._step}")
        else:
            self.note(f"sparsity -> {new.sparsifier.sparsity:g}")
        self._pruning = new
        new.refresh(self)
        self._add_sparsity_probe()

    def _add_sparsity_probe(self) -> None:
        from .probes.pruning import SparsityProbe

        if not any(isinstance(p, SparsityProbe) for p in self.probes):
            self.probes = [*self.probes, SparsityProbe(10)]

    def _apply_settings(self) -> None:
        """Write settings into the optimizer and batcher; only ever between two steps."""
        with self._settings_lock:
            self._dirty = False
            hp = self.optimizer_settings()
            entry = optimizers[self.optimizer]
            if self._rebuild_opt:
                old, keep = self._switch
                self._rebuild(entry, hp, keep, f"optimizer {old} -> {self.optimizer}" if old else None)
                self._rebuild_opt, self._switch = False, (None, False)
            else:
                missing = write_groups(self.torch_optimizer, self.optimizer, self.lr, hp)
                now, built = entry.meta.to_group(hp), entry.meta.to_group(self._built_hp)
                changed = sorted(k for k in missing if now.get(k) != built.get(k))
                if changed:  # read only by the constructor: rebuilt, its state carried over
                    self._rebuild(entry, hp, True, f"{self.optimizer} rebuilt for {', '.join(changed)}")
                else:
                    self._reconcile(entry, hp)
            self._applied_hp = dict(hp)
            for change in self._pending_changes:  # applied now: the next step is the first to train with them
                self._changes.append({"step": self._step + 1, "set": change})
            self._pending_changes = []
            if self._next_pruning is not _UNSET:
                self._switch_pruning(*self._next_pruning)
                self._next_pruning = _UNSET
            elif self._pruning is not None:
                self._pruning.refresh(self)  # a rebuilt optimizer's carried state, masked too
            self._kind = KINDS[entry.meta.step]
            self.noise.eta, self.noise.gamma = self.grad_noise, self.grad_noise_decay
            self._hooks = [] if self.adaptive_batch == "off" else [
                AdaptiveBatch(self.adaptive_batch, self.batch_test_every, self.batch_test_eta, self.max_batch_size)]
            self.batches.batch_size = self.batch_size
            self._lr, self._eval_every = self.lr, self.eval_every
            self._guard.set_factor(self.diverge_factor)
            self._lr_key = entry.meta.lr_key or "lr"  # for the schedule
            if self._schedule.varies:  # the groups' base lrs were just rewritten: the schedule scales those
                self._schedule.rebase(self.torch_optimizer, self._lr_key)

    def _builder(self, entry, hp: dict) -> Callable:
        """params -> the optimizer over them with the current settings: the run's own parameters or copies
        aligned with them (dry steps), in param groups carrying the parametrization's lr multipliers."""
        mults = multipliers(self.model, entry.name)

        def build(params):
            if entry.meta.takes_model and params is self.params:
                return entry.build(self.model, lr=self.lr, **hp)
            return build_grouped(entry.name, list(zip(self._param_names, params)), mults, self.lr, hp)

        return build

    def _rebuild(self, entry, hp: dict, keep: bool, what: str | None) -> None:
        """A new torch optimizer for the current settings; `keep` carries matching per-parameter state over."""
        build = self._builder(entry, hp)
        old = getattr(self, "torch_optimizer", None)
        new = build(self.params)
        if what is not None:
            note = carry_state(old, new, build, self.params) if keep and old is not None else "state reset"
            self.note(f"{what} ({note})")
        if self.grads.flat is not None and not self.grads.intact:
            self.grads.rebuild()  # a create_graph backward replaced them
        self.torch_optimizer, self._built_hp = new, dict(hp)

    @property
    def changes(self) -> list[dict]:
        """Every change `set` made, as {"step": the first step taken with it, "set": {setting: new value}}."""
        return copy.deepcopy(list(self._changes))  # no lock: a checkpoint reads it under the settings lock

    @property
    def initial_settings(self) -> dict[str, Any]:
        """The settings at step 0 (with the schedule and pruning): `changes` says what became of them."""
        return copy.deepcopy(self._initial_settings)

    @property
    def pending_event(self) -> str | None:
        """What the next logged row's `event` column will say (a change applied, not yet stepped)."""
        return self._event

    def _reconcile(self, entry, hp: dict) -> None:
        """A flag or a setting leaving 0 can make the optimizer need state its steps so far never made."""
        changed = flipped(hp, getattr(self, "_applied_hp", hp))
        if not changed:
            return
        done = reconcile_state(self.torch_optimizer, self._builder(entry, hp), self.params)
        if done:
            self.note(f"{', '.join(f'{k}={hp[k]}' for k in changed)}: {done}")

    def note(self, text: str) -> None:
        """Add to the `event` column of the next logged step (switches, batch-size changes)."""
        self._event = text if not self._event else f"{self._event}; {text}"

    # ---- training ---------------------------------------------------------------------------
    def _init_training_state(self) -> None:
        self._guard, self._bad_at = Guard(self.diverge_factor), -1
        self.sampler_generator = torch.Generator().manual_seed(self.seed)
        self.noise = AnnealedNoise(self.seed + 1, self.device)  # gradient noise only
        self.batches = batches(self.data, self.batch_size, self.sampler_generator, self.device)
        self._rebuild_opt, self._dirty, self._event, self._switch = True, True, None, (None, False)
        self._changes, self._pending_changes = [], []  # what run.set changed, by step (the store's events)
        # a reset run re-applies its pruning from scratch: a fresh Sparsifier of its spec, pruning at step 0
        self._pruning, self._next_pruning = None, _UNSET
        self._apply_settings()
        self._step, self.elapsed, self._since = 0, 0.0, time.perf_counter()
        pruning = Pruning.of(self, self._pruning_spec)
        if pruning is not None:
            self._pruning = pruning
            pruning.refresh(self)
            self._add_sparsity_probe()
            pruning.between(self)  # a schedule pruning at step 0 (one-shot, SNIP at init) prunes now
        self._classify = self.data.task == "classification"
        self._initial_settings = {**self.settings(), "schedule": list(self.schedule), "pruning": self.pruning}
        self._backup = [b.detach().clone() for b in self._buffers]
        self._restore_point()  # step 0: where reset() goes, and the first place to roll back to

    def add_probe(self, probe: Probe) -> Probe:
        """Measure with `probe` from the next step on (a panel turning an instrument on while the run trains)."""
        if not isinstance(probe, Probe):
            raise ValueError(f"add_probe takes a trainlab.Probe, got {type(probe).__name__}")
        with self._settings_lock:
            self.probes = [*self.probes, probe]  # a new list: the step in progress keeps iterating the old one
        return probe

    def remove_probe(self, probe: Probe) -> None:
        """Stop measuring with `probe`; its columns stay in the history."""
        with self._settings_lock:
            self.probes = [p for p in self.probes if p is not probe]

    @property
    def initial_state(self) -> dict[str, torch.Tensor]:
        """The model's state dict at step 0 (what reset() returns to): the start of interpolations and subspaces."""
        return self._initial_state

    @contextlib.contextmanager
    def between_steps(self):
        """Hold the run between two steps for the block (a training thread waits at its next step): to read or
        change the model as a whole from another thread, as `rollback` and `live.repair` do."""
        with self._lock:
            yield self

    def model_copy(self) -> nn.Module:
        """A copy of the model between two steps, for analyses that run beside training (eval mode kept as is)."""
        with self._lock:
            return copy.deepcopy(self.model)

    @property
    def steps(self) -> int:
        """Optimizer steps taken so far."""
        return self._step

    def listen_steps(self, fn: Callable[[Run, dict], Any]) -> None:
        """Call `fn(run, row)` on the training thread after every step, its row logged and nothing stepping: the
        store copies its periodic checkpoints there. It holds up training while it runs, so it must be quick."""
        # a new list, no lock: the step in progress iterates the old one, and a checkpoint's `then` (holding
        # the settings lock) may unlisten
        self._step_listeners = [*self._step_listeners, fn]

    def unlisten_steps(self, fn: Callable[[Run, dict], Any]) -> None:
        self._step_listeners = [f for f in self._step_listeners if f is not fn]

    def _set_state(self, status: str, message: str | None = None) -> None:
        with param.edit_constant(self):
            self.status = status
            if message is not None:
                self.message = message

    def _diverged(self, reason: str, finite: bool) -> None:
        """Pause. A loss grown by orders of magnitude was measured at the current weights: they are rolled
        back to the newest restore point. A non-finite value right after healthy steps, at weights that are
        finite and not blown up, may be one bad batch: the weights are kept, unless it happens again there."""
        for b, saved in zip(self._buffers, self._backup):
            b.copy_(saved)  # BatchNorm statistics of the bad batch are dropped with it
        self._go.clear()
        if not finite and self._guard.healthy() and self._bad_at != self._step and not self._guard.ruined(self.model):
            kept = f"The weights are kept from step {self._step}"
        else:
            kept = f"The weights and optimizer state are rolled back to step {self._rollback().step}"
        self._bad_at = self._step
        self._set_state("paused", f"diverged at step {self._step + 1}: {reason}. {kept}; lower lr (now {self._lr:g}) "
                                  f"and resume, roll back further, or reset.")

    def _restore_point(self) -> None:
        if self._guard.healthy():
            self._guard.save(self._step, self.model, self.torch_optimizer, self.optimizer, self._sampling_state())

    def _sampling_state(self) -> dict[str, Any]:
        """What a fork from a restore point needs beside the weights: the changes in force (a count of
        `changes`), the generators and the epoch's order (a fork replays this run's batches), the pruning's plan."""
        sparsifier = None if self._pruning is None else self._pruning.sparsifier
        return {"changes": len(self._changes), "generator": self.sampler_generator.get_state(),
                "noise_generator": self.noise.generator.get_state(),
                "batches": self.batches.state() if hasattr(self.batches, "state") else None,
                "pruning_state": None if sparsifier is None else dict(sparsifier.state()),
                "pruning_runtime": None if self._pruning is None else
                {"churn": self._pruning.churn, "collapsed": self._pruning.collapsed}}

    @property
    def restore_points(self) -> list[int]:
        """The steps the run can roll back to (the newest few: taken when settings change and every 100 healthy steps)."""
        return [p.step for p in list(self._guard.points)]  # list(): one copy, whole, while the thread appends

    def rollback(self, step: int | None = None) -> int:
        """Weights, buffers and optimizer state back to the newest restore point at or before `step` (the
        newest when None); returns that point's step. The step count and the history go on: the next
        row's `event` records the rollback. Settings stay as they are now (lower the lr first)."""
        if step is not None:
            step = number(step, "step", integer=True, what="rollback")
        with self._lock:
            point = self._rollback(step)
        return point.step

    def fork(self, step: int | None = None, **settings) -> Run:
        """A new, independent Run from this one's restore point at or before `step` (the newest when None), with
        `settings` applied before its first step: "what if I had lowered the lr at step 500?", without saving.

        The fork has its own copy of the weights and optimizer state of that point, the settings in force there
        (replayed from `changes`), its data order and generators, and the history up to that step; `settings`
        are checked as `set` checks them, and a refused one raises ValueError before anything is made.
        `fork.parent` = {"run", "step", "asked"}: the store name this run is recorded under (None if it is not
        recorded), the point's step and the step asked for. This run is left as it was: it may go on training
        in its thread meanwhile (the copy is taken between two of its steps). `restore_points` lists the steps
        (the newest few); `trainlab.store`'s `store.fork` forks a stored run at any of its checkpoints.
        `model=`, `data=`, `device=`, `probes=`, `threads=` build it otherwise (the default: this run's).
        """
        from .store import fork as forking
        from .store.store import recording

        build = {k: settings.pop(k) for k in forking.BUILD if k in settings}
        if step is not None:
            step = number(step, "step", integer=True, what="fork")
        with self._lock:  # between two steps: the training thread waits at its next one
            if step is not None and not 0 <= step <= self._step:
                raise ValueError(f"step={step} rejected for fork: a step from 0 to {self._step} (restore points at "
                                 f"steps {', '.join(map(str, self.restore_points))})")
            try:
                point = self._guard.point(step)
            except ValueError as e:
                raise ValueError(f"step={step} rejected for fork: {e}") from None
            ckpt = checkpoint.at_point(self, point)
            if "model" not in build and self.model_spec is None:
                build["model"] = copy.deepcopy(self.model)  # your own model: a copy of it (its weights: the point's)
        name = recording(self)
        ckpt["parent"] = {"run": name, "step": point.step, "asked": point.step if step is None else step}
        build = {"data": dataclasses.replace(self.data), "loss": self.loss_fn, "device": self.device,
                 "threads": self.threads, **build}  # the data's tensors shared, never written
        return forking.start(type(self), ckpt, "fork of the live run", build, settings,
                             name or "the live run", "restore point")

    def _rollback(self, step: int | None = None):
        point = self._guard.point(step)
        load_state(self.model, point.model, masks_from_state=False)  # the current masks stay, applied
        kept = "and optimizer state"
        if point.optimizer_name == self.optimizer:
            try:
                self.torch_optimizer.load_state_dict(copy.deepcopy(point.optimizer))
            except (ValueError, KeyError, RuntimeError):
                self.torch_optimizer.state.clear()
                kept = "(optimizer state reset: it no longer fits)"
        else:
            self.torch_optimizer.state.clear()
            kept = f"(optimizer state reset: the point was taken under {point.optimizer_name})"
        if self.grads.flat is not None and not self.grads.intact:
            self.grads.rebuild()
        self._dirty = True  # the run's current settings go back into the optimizer's groups
        self.note(f"weights {kept} rolled back to step {point.step}")
        return point

    def _step_once(self) -> bool:
        """One optimizer step with its logging and probes; False (and paused) if it diverged."""
        if self._dirty:
            self._apply_settings()
            self._restore_point()  # before the first step with new settings: the place to come back to
        if self._pruning is not None:  # the schedule may prune now, between two steps
            self._pruning.between(self)
        if self._schedule.varies:  # written to the param groups before every step: about 1 us
            self._lr = self.lr * self._schedule.write(self.torch_optimizer, self._step, self._lr_key)
        nxt = self._stepping = self._step + 1
        xb, yb = self.batches.next()
        measuring = [p for p in self.probes if nxt % p.every == 0]
        for p in measuring:
            p.before(self)
        for b, saved in zip(self._buffers, self._backup):
            saved.copy_(b)
        kind = self._kind
        loss, out, gnorm = kind.gradients(self, xb, yb)
        stats = [loss.detach()]
        if self._classify:
            stats.append((out.argmax(1) == yb).sum(dtype=loss.dtype))  # not differentiable: no detach needed
        stats.append(gnorm)
        stats = torch.stack(stats).tolist()  # one device sync a step
        reason = self._guard.check(stats[0], stats[-1])
        if reason is not None:
            self._diverged(reason, math.isfinite(stats[0]) and math.isfinite(stats[-1]))
            return False
        extra = [hook(self, xb, yb, nxt) for hook in self._hooks]  # before the update: this batch, these weights
        measured = kind.update(self, xb, yb)
        self._step = nxt
        row = {"step": nxt, "epoch": self.batches.epoch, "time": self.elapsed + time.perf_counter() - self._since,
               "lr": self._lr, "train_loss": stats[0], "grad_norm": stats[-1] if measured is None else measured}
        for columns in extra:
            row.update(columns)
        self._guard.record(stats[0])
        if nxt % self._guard.every == 0:
            self._restore_point()
        if self._classify:
            row["train_acc"] = stats[1] / len(yb)
        if self._event:
            row["event"], self._event = self._event, None
        try:
            for p in measuring:
                for k, v in p.measure(self).items():
                    if isinstance(v, (int, float)):
                        row[k] = v
                    else:
                        self.history.put_snapshot(k, nxt, v)
            if nxt % self._eval_every == 0 and self.data.has_val:
                row.update(self.evaluate())
        finally:  # the step happened: its row is logged even if a probe failed
            self.history.append(row)
        for fn in self._step_listeners:
            fn(self, row)
        return True

    def evaluate(self) -> dict[str, float]:
        """Validation loss (and accuracy) in eval mode: BatchNorm uses its running statistics."""
        total, n, correct = 0.0, 0, 0.0
        with torch.no_grad(), eval_mode(self.model):
            for xb, yb in val_batches(self.data, self.device):
                out = self.model(xb)
                total += float(self.loss_fn(out, yb)) * len(yb)
                if self._classify:
                    correct += float((out.argmax(1) == yb).sum())
                n += len(yb)
        result = {"val_loss": total / n}
        if self._classify:
            result["val_acc"] = correct / n
        return result

    def step(self, n: int = 1) -> int:
        """Train n steps now, on this thread; returns the steps taken (fewer if it diverged)."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"n must be a whole number of steps >= 0, got {n!r}")
        if self.status == "running":
            raise RuntimeError("the run is training in the background; pause() it before stepping by hand")
        done = 0
        with self._lock, _torch_threads(self.threads):
            self._since = time.perf_counter()
            try:
                while done < n and self._step_once():
                    done += 1
            finally:
                self.elapsed += time.perf_counter() - self._since
        return done

    def start(self, steps: int | None = None) -> None:
        """Train in a background thread until paused or stopped (or for `steps` steps)."""
        if self._thread is not None and self._thread.is_alive():
            self.resume()
            return
        self._halt.clear()
        self._go.set()
        self._set_state("running", "")
        self._thread = threading.Thread(target=self._loop, args=(steps,), name="trainlab-run", daemon=True)
        self._thread.start()

    def _loop(self, steps: int | None) -> None:
        torch.set_num_threads(self.threads)  # this thread's own setting: the caller's is untouched
        left = [steps]  # steps still to take (None: until stopped)
        while not self._halt.is_set() and (left[0] is None or left[0] > 0):
            if not self._go.wait(0.05):
                continue
            shared = share.current()
            if shared is None:
                self._loop_step(left)
            else:
                self._take_turn(shared, left)
        if not self._halt.is_set():
            self._set_state("stopped")

    def _stepping_allowed(self) -> bool:
        return self._go.is_set() and not self._halt.is_set()

    def _loop_step(self, left: list) -> bool:
        """One step of the background loop; an error in a probe or the user's model pauses and says so."""
        with self._lock:
            if not self._stepping_allowed():
                return False
            self._since = time.perf_counter()
            try:
                ok = self._step_once()
            except Exception as e:
                self._go.clear()
                self._set_state("paused", f"error at step {self._stepping}: {type(e).__name__}: {e}")
                ok = False
            finally:
                self.elapsed += time.perf_counter() - self._since
        if ok and left[0] is not None:
            left[0] -= 1
        return ok

    def _take_turn(self, shared: share.Share, left: list) -> None:
        """Train for one turn of the process's Share (a changed setting asks for the next turn), then let
        the next run go; past the Share's steps-per-second cap, wait outside the turn."""
        with shared.turn(self, urgent=lambda: self._dirty, cancelled=lambda: not self._stepping_allowed()) as until:
            if until is None:
                return
            t0, n = time.perf_counter(), 0
            cap = None if shared.max_rate is None else max(1, int(shared.max_rate * shared.slice))
            while (time.perf_counter() < until and (cap is None or n < cap)
                   and (left[0] is None or left[0] > 0) and self._loop_step(left)):
                n += 1
        shared.pace(t0, n)

    @property
    def waiting(self) -> int | None:
        """Runs ahead of this one for a turn at training (a served lab shares the machine), or None."""
        shared = share.current()
        return None if shared is None else shared.waiting(self)

    def pause(self) -> None:
        """Stop stepping after the current step; returns once no step is in progress."""
        self._go.clear()
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                self._set_state("paused")

    def resume(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self.start()
            return
        self._set_state("running", "")
        self._go.set()

    def stop(self, timeout: float = 10.0) -> None:
        """End the background thread and wait for it."""
        self._halt.set()
        self._go.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise RuntimeError(f"the training thread did not stop within {timeout} s")
            self._thread = None
        self._go.clear()
        if self.status != "idle":
            self._set_state("stopped")

    def wait(self, timeout: float | None = None) -> None:
        """Block until a background run with a step budget has finished."""
        if self._thread is not None:
            self._thread.join(timeout)

    def reset(self) -> None:
        """Back to the initial weights and a fresh optimizer; the history is cleared."""
        self.stop()
        with self._lock:
            load_state(self.model, self._initial_state)  # the initial weights, without masks
            pending = self._next_pruning
            if pending is not _UNSET:  # a change not yet applied counts
                self._pruning = pending[0]
            self._pruning_spec = self.pruning  # the pruning now in force, from step 0 again (None: off)
            self.history.clear()
            self._init_training_state()
        self._set_state("idle", "")

    # ---- persistence ------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Weights, optimizer state, settings and history, written atomically (temp file, then rename).

        Settings changed since the last step are applied first, so the file holds the optimizer state
        that goes with the settings it records.
        """
        checkpoint.write(self.checkpoint(), path)  # hashed and written outside the locks: training goes on meanwhile

    def checkpoint(self, then: Callable[[], Any] | None = None, history: bool = True) -> dict[str, Any]:
        """Everything needed to continue exactly (`trainlab.checkpoint.state`), copied between two steps.

        Settings changed since the last step are applied first, so it holds the optimizer state that goes
        with the settings it records. `then()` is called at the same moment (nothing steps meanwhile):
        the store takes the rows its live recording has not written yet. `history=False` leaves the rows out
        (a periodic checkpoint: the live record holds them).
        """
        with self._lock:  # no step in progress; the settings lock keeps a concurrent set() out while copying
            while True:
                if self._dirty:
                    self._apply_settings()
                    self._restore_point()  # as a step would: the place to come back to before new settings
                with self._settings_lock:
                    if not self._dirty:
                        ckpt = checkpoint.state(self, history)
                        if then is not None:
                            then()
                        return ckpt

    @classmethod
    def load(cls, path: str | os.PathLike, model: nn.Module | None = None, data: Any = None,
             loss: Callable | None = None, device: str | torch.device = "auto", **kwargs) -> Run:
        """A run saved by `save`, ready to continue. Nothing is unpickled (weights_only=True).

        A run on a registered model and data set rebuilds them by name; one on the user's own
        model or data needs them passed again (`model=`, `data=`).
        """
        return checkpoint.load(cls, path, model=model, data=data, loss=loss, device=device, **kwargs)

    def restore(self, ckpt: dict[str, Any]) -> None:
        """Weights, optimizer state, history and sampling state from a checkpoint (`trainlab.checkpoint`)."""
        with self._lock:
            load_state(self.model, ckpt["model_state"])  # with the masks it was saved with
            self._initial_state = ckpt["initial_state"]
            self.torch_optimizer.load_state_dict(ckpt["optimizer_state"])
            self.history.restore(ckpt["history"])
            self._step, self.elapsed = ckpt["step"], ckpt["elapsed"]
            self.sampler_generator.set_state(ckpt["generator"])
            if "noise_generator" in ckpt:
                self.noise.generator.set_state(ckpt["noise_generator"])
            if ckpt["batches"] is not None:
                self.batches.load_state(ckpt["batches"])
            self._event = ckpt.get("event")
            self._changes, self._pending_changes = list(ckpt.get("changes", [])), []
            self._initial_settings = ckpt.get("initial_settings") or self._initial_settings
            self.parent = ckpt.get("parent")
            for name, (step, value) in (ckpt.get("snapshots") or {}).items():
                self.history.put_snapshot(name, step, _arrays(value))
            self._schedule.start = ckpt.get("schedule_start", 0)
            if self._pruning is not None and ckpt.get("pruning_state") is not None:
                self._pruning.sparsifier.load(ckpt["pruning_state"])
            if self._pruning is not None:
                self._pruning.refresh(self)
                for k, v in (ckpt.get("pruning_runtime") or {}).items():
                    setattr(self._pruning, k, v)
            self._load_probe_states(ckpt.get("probes") or [])
            self._guard.points.clear()
            self._restore_point()  # the loaded state is the first place to come back to

    def _load_probe_states(self, saved: list) -> None:
        """Each saved probe's state to the probe of the same class in the same order (others: nothing to take)."""
        used: set[int] = set()
        for cls, state in saved:
            probe = next((p for p in self.probes if type(p).__name__ == cls and id(p) not in used), None)
            if probe is not None:
                used.add(id(probe))
                if state:
                    probe.load_state(state, self)

    def close(self) -> None:
        """Stop training; for sessions and notebooks that are done with the run."""
        self.stop()


_UNSET = object()


def _arrays(value):
    """A saved snapshot as it was published: NumPy arrays where tensors were stored."""
    if torch.is_tensor(value):
        return value.numpy()
    if isinstance(value, dict):
        return {k: _arrays(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_arrays(v) for v in value)
    return value


class _torch_threads:
    """torch's intra-op threads set for the block on this thread, and put back after."""

    def __init__(self, n: int):
        self.n = n

    def __enter__(self):
        self.was = torch.get_num_threads()
        if self.was != self.n:
            torch.set_num_threads(self.n)

    def __exit__(self, *exc):
        if torch.get_num_threads() != self.was:
            torch.set_num_threads(self.was)
