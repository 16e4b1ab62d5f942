"""One registry per kind of knob: a name, a constructor and its declared parameters."""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import param


class LogNumber(param.Number):
    """A Number best moved on a log scale (learning rates, eps): controls show it as 10^x."""


class LogInteger(param.Integer):
    """An Integer best moved in powers of two (batch sizes, widths)."""


def describe_range(p: param.Parameter) -> str:
    """The allowed range of a parameter in interval notation, for error messages."""
    if isinstance(p, param.Selector):
        return "one of " + ", ".join(map(repr, p.objects))
    bounds = getattr(p, "bounds", None)
    if bounds is None:
        return "any value"
    lo, hi = bounds
    inc_lo, inc_hi = getattr(p, "inclusive_bounds", (True, True))
    left = "(-inf" if lo is None else ("[" if inc_lo else "(") + f"{lo:g}"
    right = "inf)" if hi is None else f"{hi:g}" + ("]" if inc_hi else ")")
    return f"{left}, {right}"


class RejectedType(TypeError, ValueError):
    """A setting of the wrong kind (a bool for a count, a tensor for a number): a TypeError that code
    catching ValueError for refused settings catches too."""


def number(value: Any, name: str, integer: bool, what: str = "") -> int | float:
    """A Python int or float from a number the user gave (NumPy scalars included), refusing bools,
    tensors, strings and fractions where a whole number is asked for; the error names the setting."""
    where = f" for {what}" if what else ""
    kind = "a whole number" if integer else "a number"
    if isinstance(value, bool) or isinstance(value, np.bool_):
        raise RejectedType(f"{name}={value!r} rejected{where}: {kind} is allowed, not True/False")
    if hasattr(value, "detach") or (isinstance(value, np.ndarray) and value.ndim):
        raise RejectedType(f"{name}={value!r} rejected{where}: {kind} is allowed, not a {type(value).__name__} "
                           f"(pass {'int' if integer else 'float'}({name}))")
    if integer:
        if isinstance(value, numbers.Integral):
            return int(value)
        raise RejectedType(f"{name}={value!r} rejected{where}: {kind} is allowed"
                           + (" (it would be truncated)" if isinstance(value, numbers.Real) else ""))
    if isinstance(value, numbers.Real):
        return float(value) if not isinstance(value, numbers.Integral) else int(value)
    raise RejectedType(f"{name}={value!r} rejected{where}: {kind} is allowed, got {type(value).__name__}")


def validate(owner: param.Parameterized, values: dict[str, Any], what: str) -> dict[str, Any]:
    """Check every value against its declared parameter without setting any; return them as plain
    Python values (NumPy scalars converted).

    Raises ValueError naming the parameter and its allowed range (a RejectedType, also a TypeError,
    for a value of the wrong kind), so that a rejected setting leaves the owner exactly as it was.
    """
    out = {}
    for name, value in values.items():
        if name not in owner.param or name == "name":
            valid = ", ".join(n for n in owner.param if n != "name" and not owner.param[n].constant)
            raise ValueError(f"{what} has no setting {name!r}; valid settings: {valid}")
        p = owner.param[name]
        if p.constant or p.readonly:
            raise ValueError(f"{name!r} of {what} is read-only")
        if isinstance(p, param.Number) and value is not None:
            value = number(value, name, isinstance(p, param.Integer), what)
            if not math.isfinite(value):
                raise ValueError(f"{name}={value} is not finite; allowed range: {describe_range(p)}")
        elif isinstance(p, param.Boolean) and isinstance(value, np.bool_):
            value = bool(value)
        try:
            p._validate(value)  # param's own check: bounds, type, selector objects
        except (ValueError, TypeError) as e:
            raise ValueError(f"{name}={value!r} rejected for {what}: allowed range {describe_range(p)} ({e})") from None
        out[name] = value
    return out


def parse_spec(obj: Any, what: str | None = None) -> tuple[str, dict[str, Any]] | None:
    """A "name" or a (name, {options}) pair (a list, as saved, too) as (name, options).

    Anything else is None, or, when `what` names the setting, a ValueError saying what it takes.
    """
    if isinstance(obj, str):
        return obj, {}
    if isinstance(obj, (tuple, list)) and len(obj) == 2 and isinstance(obj[0], str) and isinstance(obj[1], dict):
        return obj[0], dict(obj[1])
    if what is not None:
        raise ValueError(f"{what} must be a name or a (name, {{options}}) pair; got {obj!r}")
    return None


class Choice(param.Selector):
    """A registry's entry by name, or a (name, {options}) pair whose options that entry declares (a model's
    `init=("critical", {"C_W": 1.5})`): one knob that carries its own settings. The options are checked
    when the value is set, so a bad one is refused naming it."""

    __slots__ = ("kind",)

    def __init__(self, registry: Registry, default: str, **kwargs):
        super().__init__(default=default, objects=registry.names(), **kwargs)
        self.kind = registry.kind
        _CHOICES[registry.kind] = registry  # looked up by kind: param copies Parameters, not registries

    def _validate_value(self, value, allow_None=None):
        if isinstance(value, str) or value is None:
            return super()._validate_value(value, allow_None)
        parsed = parse_spec(value)
        if parsed is None:
            raise ValueError(f"{self.name}={value!r}: a {self.kind} name or a (name, {{options}}) pair")
        super()._validate_value(parsed[0], allow_None)
        _CHOICES[self.kind][parsed[0]].options(**parsed[1])  # raises naming the option and its range


_CHOICES: dict[str, Registry] = {}


@dataclass
class Entry:
    """A registered constructor, the parameters it declares, and what its registry knows of it (`meta`:
    a typed record of the kind's own, such as an optimizer's class and step kind)."""

    name: str
    build: Callable
    params: dict[str, param.Parameter]
    doc: str = ""
    meta: Any = None
    _options_cls: type | None = field(default=None, repr=False)

    def options(self, **values) -> param.Parameterized:
        """A Parameterized holding this entry's settings, validated: what controls bind to."""
        if self._options_cls is None:
            self._options_cls = param.parameterized_class(
                f"{self.name}", {k: v for k, v in self.params.items()}
            )
        opts = self._options_cls()
        opts.param.update(**validate(opts, values, self.name))
        return opts

    def defaults(self) -> dict[str, Any]:
        return {k: p.default for k, p in self.params.items()}


def option_values(opts: param.Parameterized) -> dict[str, Any]:
    """The settings of an options object as a plain dict."""
    return {k: v for k, v in opts.param.values().items() if k != "name"}


class Registry:
    """Name -> Entry for one kind of knob (data sets, models, optimizers, norms, inits, ...)."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, doc: str = "", meta: Any = None, **params: param.Parameter):
        """Decorator: register `fn` under `name` with its declared parameters."""

        def deco(fn):
            text = doc or ((fn.__doc__ or "").strip().splitlines() or [""])[0]
            self._entries[name] = Entry(name, fn, params, text, meta)
            return fn

        return deco

    def names(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name) -> bool:
        return name in self._entries

    def __iter__(self):
        return iter(self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)

    def __getitem__(self, name: str) -> Entry:
        if not isinstance(name, str) or name not in self._entries:
            raise ValueError(f"unknown {self.kind} {name!r}; valid {self.kind}s: {', '.join(self.names())}")
        return self._entries[name]

    def build(self, name: str, *args, **options):
        """Validate `options` against the entry's parameters, then construct."""
        entry = self[name]
        opts = entry.options(**options)
        return entry.build(*args, **option_values(opts))
