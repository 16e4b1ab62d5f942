"""One registry per kind of knob: a name, a constructor and its declared parameters."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

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


def validate(owner: param.Parameterized, values: dict[str, Any], what: str) -> None:
    """Check every value against its declared parameter without setting any.

    Raises ValueError naming the parameter and its allowed range, so that a rejected setting
    leaves the owner exactly as it was.
    """
    for name, value in values.items():
        if name not in owner.param or name == "name":
            valid = ", ".join(n for n in owner.param if n != "name" and not owner.param[n].constant)
            raise ValueError(f"{what} has no setting {name!r}; valid settings: {valid}")
        p = owner.param[name]
        if p.constant or p.readonly:
            raise ValueError(f"{name!r} of {what} is read-only")
        if isinstance(p, param.Number) and isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{name}={value} is not finite; allowed range: {describe_range(p)}")
        try:
            p._validate(value)  # param's own check: bounds, type, selector objects
        except (ValueError, TypeError) as e:
            raise ValueError(f"{name}={value!r} rejected for {what}: allowed range {describe_range(p)} ({e})") from None


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
        validate(opts, values, self.name)
        opts.param.update(**values)
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
