"""Controls built from declared parameters: the range comes from softbounds, validity from bounds.

A control never writes a value itself: it hands it to `apply` (the dashboard's run.set), so a
rejected value is reported and the run keeps its old one; `show` moves it to the run's value.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import panel as pn
import param

from trainlab.registry import Choice, LogInteger, LogNumber, parse_spec


class StopSlider(pn.widgets.DiscreteSlider):
    """A DiscreteSlider whose label only the server writes.

    Panel's links the handle to the label in the browser as well; on quick key presses the server's
    label updates for the intermediate stops arrive after the browser's own for the last one, and the
    label is left on a stop the run is not at (measured: "lr: 0.079" for good, with the handle and the
    run at 0.1). The server's updates alone arrive in order.
    """

    def _update_options(self, *events):
        super()._update_options(*events)
        self._jslink.unlink()


def _log_grid(lo: float, hi: float, per_decade: int = 10) -> dict[str, float]:
    """Log-spaced values with two significant digits, labelled as they read."""
    k0, k1 = math.floor(math.log10(lo) * per_decade + 1e-9), math.ceil(math.log10(hi) * per_decade - 1e-9)
    values = sorted({float(f"{10 ** (k / per_decade):.2g}") for k in range(k0, k1 + 1)})
    return {f"{v:g}": v for v in values}


def _range(p: param.Parameter) -> tuple[float, float]:
    lo, hi = p.get_soft_bounds()
    lo = 0.0 if lo is None else lo
    hi = (lo + 1.0) if hi is None else hi
    return lo, hi


class Control:
    """One widget for one setting of `owner`."""

    def __init__(self, owner: param.Parameterized, name: str, apply: Callable[[str, Any], None]):
        self.name, self.apply = name, apply
        p = owner.param[name]
        value = getattr(owner, name)
        label = name.replace("_", " ")
        self._to = self._from = lambda v: v  # noqa: E731
        if isinstance(p, LogNumber):
            # a discrete slider over a log grid: it shows real values (a slider over log10 would
            # need a JS formatter, a Bokeh model that cannot be shared by a notebook's two views)
            options = _log_grid(*_range(p))
            lo, inclusive = (p.bounds or (None, None))[0], (p.inclusive_bounds or (True, True))[0]
            if lo == 0 and inclusive:  # 0 means "off" (gradient noise): the slider's first stop
                options = {"0": 0.0, **options}
            self._grid = options
            self._from = self._on_grid
            self.widget = StopSlider(label=label, options=options, value=self._on_grid(value))
        elif isinstance(p, LogInteger):
            lo, hi = _range(p)
            options = [2**k for k in range(int(math.log2(max(lo, 1))), int(math.log2(hi)) + 1)]
            self._from = lambda v: min(options, key=lambda o: abs(math.log2(o) - math.log2(max(v, 1))))
            self.widget = StopSlider(label=label, options=options, value=self._from(value))
        elif isinstance(p, param.Boolean):
            self.widget = pn.widgets.Checkbox(label=label, value=bool(value))
        elif isinstance(p, param.Selector):
            if isinstance(p, Choice):  # a (name, {options}) value shows its name
                self._from = lambda v: v if v is None else parse_spec(v)[0]  # noqa: E731
            self.widget = pn.widgets.Select(label=label, options=list(p.objects), value=self._from(value))
        elif isinstance(p, (param.Integer, param.Number)) and p.get_soft_bounds()[1] is None:
            kind = pn.widgets.IntInput if isinstance(p, param.Integer) else pn.widgets.FloatInput
            self.widget = kind(label=label, value=value, start=p.bounds[0] if p.bounds else None)
        elif isinstance(p, param.Integer):
            lo, hi = _range(p)
            self.widget = pn.widgets.IntSlider(label=label, start=int(lo), end=int(hi), value=int(value))
        elif isinstance(p, param.Number):
            lo, hi = _range(p)
            self._from = lambda v: min(max(v, lo), hi)
            step = p.step or (hi - lo) / 100
            # enough decimals to tell 0.999 from 1 (beta2): the slider's default shows two
            decimals = max(2, -math.floor(math.log10(step)) + 1)
            self.widget = pn.widgets.FloatSlider(label=label, start=lo, end=hi, step=step, value=self._from(value),
                                                 format=f"0.[{'0' * decimals}]")
        else:
            raise TypeError(f"no control for {type(p).__name__} parameter {name!r}")
        self.widget.description = p.doc
        self.widget.sizing_mode = "stretch_width"  # as wide as its sidebar, never past it
        self._showing = False
        self.widget.param.watch(self._changed, "value")

    def _on_grid(self, v: float) -> float:
        """A log slider's stop for v: v itself, added as a stop of its own when the grid lacks it (an lr of
        0.108 set elsewhere shows as 0.108, not as its neighbour 0.1)."""
        grid = self._grid
        if v in grid.values() or not math.isfinite(v):
            return v
        if v > 0 and (stop := min((o for o in grid.values() if o > 0), key=lambda o: abs(math.log10(o / v)))) \
                and abs(stop - v) <= 1e-9 * v:
            return stop
        options = dict(sorted({**grid, f"{v:.4g}": v}.items(), key=lambda kv: kv[1]))
        self._grid = options
        if hasattr(self, "widget"):
            self._showing = True
            try:
                self.widget.options = options
            finally:
                self._showing = False
        return v

    def _changed(self, event) -> None:
        if not self._showing:
            self.apply(self.name, self._to(event.new))

    def show(self, value: Any) -> None:
        """Move the widget to the run's value without sending it back."""
        shown = self._from(value)
        if self.widget.value != shown:
            self._showing = True
            try:
                self.widget.value = shown
            finally:
                self._showing = False

