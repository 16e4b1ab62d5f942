"""The dashboard's Sweeps tab: a preset study (trainlab.sweeps.presets) with its options, Start and Cancel,
and the SweepPanel of the sweep it started, drawn as results arrive.

Sweeps run on the process's shared cluster (`trainlab.sweeps.shared`): in a served lab every session's
sweeps share one LocalCluster, each holding one of the server's job slots, or are refused with the reason.
Starting the cluster takes seconds, so it happens on a thread; the tab's own tick (in the session) picks
up the started sweep, or the error, and builds the panel. Closing the session cancels its sweep.
"""
from __future__ import annotations

import threading
from typing import Any

import panel as pn
import param

from trainlab.registry import option_values
from trainlab.sweeps import presets

from . import export
from .base import plain
from .sweep import SweepPanel

_TICK_MS = 400  # results reach the page within a second of arriving


class SweepLab(pn.viewable.Viewer):
    """Pick a built-in study, set its options, Start: the sweep trains on the local cluster and its
    results are drawn as each run ends (parallel coordinates, metric against each setting, best table)."""

    preset = param.Selector(objects=presets.names(), default="lr_optimizer", doc="the built-in study to sweep")
    message = param.String("", doc="what the tab says now: starting, refused, or the sweep's end")

    def __init__(self, **params):
        super().__init__(**params)
        self.sweep: Any = None
        self.panel: SweepPanel | None = None
        self._chooser = pn.widgets.Select.from_param(self.param.preset, name="study", width=220)
        self._options_box = pn.Column(sizing_mode="stretch_width")
        self.start_button = pn.widgets.Button(label="Start sweep", color="success", width=130)
        self.cancel_button = pn.widgets.Button(label="Cancel sweep", width=130, disabled=True)
        self.start_button.on_click(lambda e: self.start())
        self.cancel_button.on_click(lambda e: self.cancel())
        self.info = pn.pane.Markdown("", sizing_mode="stretch_width")
        self.doc = pn.pane.Markdown("", sizing_mode="stretch_width")
        self.view = pn.Column(sizing_mode="stretch_width")
        self._lock = threading.Lock()
        self._launched: tuple[Any, str] | None = None  # (sweep or None, error) from the starting thread
        self._starting = False
        self._callback = None
        self._closed = False
        self._changed: list = []  # called on every tick and action (the Export card's refresh)
        results = export.Result("Sweep results", lambda: self.sweep, lambda sw: sw.results(),
                                lambda sw: f"sweep-{sw.name}", "press Start sweep",
                                describe=lambda sw: f"{sw.name}: a row per configuration, as far as it got")
        self.export_card = export.card(None, lambda: export.figures_in([self.view]), results=[results],
                                       refresh=self._changed.append, what="the sweep's results",
                                       heading="The sweep started last:")
        self._show_options()
        self._say()

    # ---- settings --------------------------------------------------------------------------
    @param.depends("preset", watch=True)
    def _show_options(self) -> None:
        entry = presets[self.preset]
        self.options = entry.options()
        self._options_box.objects = [pn.Param(self.options, show_name=False, sizing_mode="stretch_width",
                                              widgets={"steps": pn.widgets.IntInput})]
        self.doc.object = plain(entry.doc)

    # ---- actions ---------------------------------------------------------------------------
    def start(self) -> None:
        """Start the chosen preset with the options set (refused while a sweep of this tab runs)."""
        if self._starting or (self.sweep is not None and not self.sweep.done):
            self.message = "A sweep is running: cancel it first, or wait for its end."
            return self._say()
        try:
            study = presets.build(self.preset, None, **option_values(self.options))
        except ValueError as e:
            self.message = f"Rejected: {e}"
            return self._say()
        self._starting = True
        self.message = "Starting the sweep (the first one starts the local cluster: a few seconds)..."
        threading.Thread(target=self._launch, args=(study,), name="trainlab-sweep-start", daemon=True).start()
        self._ensure_tick()
        self._say()

    def _launch(self, study: dict) -> None:
        from trainlab.sweeps import shared

        try:
            sw, error = shared.start(**study, name=f"{self.preset}-{id(self) % 10_000:04d}"), ""
        except (RuntimeError, ValueError, ConnectionError) as e:
            sw, error = None, str(e)
        with self._lock:
            if self._closed and sw is not None:  # the session ended while the cluster started
                sw.cancel(wait=False)
                return
            self._launched = (sw, error)

    def cancel(self) -> None:
        if self.sweep is not None and not self.sweep.done:
            self.sweep.cancel(wait=False)
            self.message = "Cancelling: queued runs are dropped, running ones stop at their next step."
        self._say()

    # ---- the session's tick ----------------------------------------------------------------
    def _ensure_tick(self) -> None:
        if self._callback is None and pn.state.curdoc is not None:
            self._callback = pn.state.add_periodic_callback(self._tick, period=_TICK_MS)

    def _tick(self) -> None:
        with self._lock:
            launched, self._launched = self._launched, None
        if launched is not None:
            self._starting = False
            sw, error = launched
            if sw is None:
                self.message = f"Not started: {error}"
            else:
                self.show(sw)
        if self.panel is not None:
            self.panel.tick()
        if self.sweep is not None and self.sweep.done and self.message.startswith("Cancelling"):
            self.message = ""  # its progress says how it ended
        self._say()

    def show(self, sweep) -> None:
        """Draw `sweep` (replacing the last one's panel)."""
        if self.panel is not None:
            self.panel.stop()
        self.sweep = sweep
        self.panel = SweepPanel(sweep, metric="val_acc" if self.preset == "sparsity_criterion" else "val_loss",
                                poll=False)  # refreshed on this tab's tick
        self.panel.cancel_button.visible = False  # the tab's own Cancel does it
        self.message = ""
        self.view.objects = [self.panel]

    def _say(self) -> None:
        running = self._starting or (self.sweep is not None and not self.sweep.done)
        self.start_button.disabled = running
        self.cancel_button.disabled = not (self.sweep is not None and not self.sweep.done)
        text = self.message
        if not text and self.sweep is not None:
            text = f"{self.sweep.name}: {self.sweep.progress()}" + (" · done" if self.sweep.done else "")
        self.info.object = plain(text) if text else "Choose a study and press **Start sweep**."
        for fn in self._changed:
            fn()

    def close(self) -> None:
        """The session ended: its sweep is cancelled, the tick stops."""
        with self._lock:
            self._closed = True
        if self._callback is not None:
            self._callback.stop()
            self._callback = None
        if self.panel is not None:
            self.panel.stop()
        if self.sweep is not None and not self.sweep.done:
            self.sweep.cancel(wait=False)

    def __panel__(self):
        self._ensure_tick()
        controls = pn.Column(self._chooser, self._options_box,
                             pn.Row(self.start_button, self.cancel_button), self.export_card, width=300)
        return pn.Column(pn.Row(controls, pn.Column(self.doc, self.info, sizing_mode="stretch_width"),
                                sizing_mode="stretch_width"),
                         self.view, sizing_mode="stretch_width")
