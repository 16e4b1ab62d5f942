"""The labs beside the training plots: one entry each, which the dashboard, the browser tests and the
JupyterLab test all iterate. Adding a lab is adding an entry here (and its LabPanel module)."""
from __future__ import annotations

import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Lab:
    """A dashboard tab: its title, the panel class (imported when the tab first opens), and what a
    smoke test needs: a source column the tab's plots fill once it is open while the run trains, and a
    button to press first for labs that compute on demand."""

    title: str
    module: str          # in trainlab.widgets
    cls: str
    needs_run: bool = True
    fills: str = ""
    press: str | None = None

    def panel_class(self) -> type:
        return getattr(importlib.import_module(f"trainlab.widgets.{self.module}"), self.cls)

    def build(self, run, feed):
        """The lab's panel over the dashboard's run and feed (a run-free lab gets neither)."""
        cls = self.panel_class()
        if not self.needs_run:
            return cls()
        with feed.group(self.title):  # its plots get data while its tab is shown
            return cls(run, feed=feed)


LABS = (
    Lab("Optimizer", "optimizer_panel", "OptimizerPanel", fills="trend", press="LR range test"),
    Lab("Playground", "playground", "Playground2D", needs_run=False, fills="dw"),
    Lab("Landscape", "landscape", "LandscapePanel", fills="level"),
    Lab("Curvature", "curvature", "CurvaturePanel", fills="sharpness", press="Sharpness"),
    Lab("Spectrum", "spectrum", "SpectrumPanel", fills="right"),
    Lab("Pruning", "pruning", "PruningPanel", fills="all layers", press="Turn pruning on"),
    Lab("Normalization", "normalization", "NormalizationPanel", fills="xs", press="Compare norms"),
    Lab("Init & μP", "init_panel", "InitPanel", fills="theory_std"),
    Lab("Runs", "runs", "RunsPanel", fills="xs", press="Save run"),
    Lab("Sweeps", "sweep_lab", "SweepLab", needs_run=False, fills="metric", press="Start sweep"),
)
