"""End to end, one page through every tab of the served dashboard: on each, one control is moved and what
the plots draw (the values of their ColumnDataSources, read through the page's Bokeh document) must change;
then the tab is kept as a screenshot under test-results/tabs/ (a CI artifact, to look at)."""
from __future__ import annotations

import hashlib
import json
import math
import os
import re

import pytest
from conftest import ARTIFACTS, wait_until
from test_browser import HANDLE_JS, _columns, _open, server  # noqa: F401  (the module's served dashboard)

from trainlab.widgets.labs import LABS

pytestmark = pytest.mark.browser

SHOTS = ARTIFACTS / "tabs"

# the data of every ColumnDataSource whose columns are exactly `keys` (a plot's own source, told apart by them)
SOURCES_JS = """(keys) => {
  const want = [...keys].sort().join(",");
  const out = [];
  for (const m of Bokeh.documents[0].all_models)
    if (m.type === "ColumnDataSource" && Object.keys(m.data).sort().join(",") === want) {
      const d = {};
      for (const k of keys) d[k] = Array.from(m.data[k], (v) => (v != null && v.length !== undefined ? Array.from(v) : v));
      out.push(d);
    }
  return out;
}"""

# the data of the ColumnDataSource named `name`
NAMED_JS = """(name) => {
  for (const m of Bokeh.documents[0].all_models)
    if (m.type === "ColumnDataSource" && m.name === name) return {lr: Array.from(m.data.lr)};
  return null;
}"""

# a widget as a person sets it: the Bokeh model titled `title` gets `value`, which the page sends to the server
SET_JS = """([title, value]) => {
  for (const m of Bokeh.documents[0].all_models)
    if (m.title === title && "value" in m && "options" in m) { m.value = value; return true; }
  return false;
}"""


def _sources(page, *keys) -> list[dict]:
    return page.evaluate(SOURCES_JS, list(keys)) or []


def _digest(page, *keys) -> str:
    return hashlib.sha1(json.dumps(_sources(page, *keys), sort_keys=True, default=str).encode()).hexdigest()


def _finite(values) -> list[float]:
    flat = []
    for v in values:
        flat += _finite(v) if isinstance(v, list) else [v] if isinstance(v, (int, float)) and math.isfinite(v) else []
    return flat


def _filled(page, column: str) -> bool:
    return any(_finite(v) for v in _columns(page, column))


def _select(page, title: str, value: str) -> None:
    assert page.evaluate(SET_JS, [title, value]), f"no select titled {title!r} in the page"


def _keys(page, label: str, key: str, times: int = 1) -> None:
    """Press `key` on the handle of the slider labelled `label` (arrows, Home/End), as a keyboard user."""
    handle = page.evaluate_handle(HANDLE_JS, label).as_element()
    assert handle is not None, f"no slider labelled {label!r} in the page"
    handle.focus()
    for _ in range(times):
        handle.press(key)


def _press(page, name: str) -> None:
    page.get_by_role("button", name=name, exact=True).click()


def _changes(what: str, before, now, timeout: float = 90) -> None:
    wait_until(lambda: now() != before, timeout, what, every=0.2)


# the dashboard's status line ("running · step 1162 · lr 0.05"), as the page has it
STATUS_JS = """() => {
  for (const m of Bokeh.documents[0].all_models)
    if (typeof m.text === "string" && m.text.includes(" · step ")) return m.text;
  return "";
}"""


def _pause(page) -> None:
    """Pause, and wait for the status to say so: then a change is the control's doing, not training's."""
    _press(page, "Pause")
    wait_until(lambda: "paused" in page.evaluate(STATUS_JS), 60, "the status saying paused")


def _resume(page) -> None:
    _press(page, "Start")
    wait_until(lambda: "running" in page.evaluate(STATUS_JS), 60, "the status saying running after Start")


# ---- one step per tab: move a control, wait for the drawing to change ---------------------------------------
def _training(page):
    lr = lambda: max((v for v in _columns(page, "lr") if v), key=len, default=[])  # noqa: E731
    wait_until(lambda: len(lr()) > 1, 60, "the lr curve streaming")
    _keys(page, "lr", "ArrowLeft", 3)
    wait_until(lambda: (v := lr()) and v[-1] < v[0], 60, "the streamed lr falling after the lr slider moved left")


def _optimizer(page):
    # the schedule preview is one lr while constant, many once cosine
    levels = lambda: {round(v, 12) for v in _finite((page.evaluate(NAMED_JS, "schedule_preview") or {}).get("lr", []))}  # noqa: E731
    wait_until(lambda: len(levels()) == 1, 60, "a constant schedule's preview, one lr")
    _select(page, "schedule", "cosine")
    wait_until(lambda: len(levels()) > 10, 60, "the schedule preview decaying after choosing cosine")
    _select(page, "schedule", "constant")  # a cosine run would reach lr 0 before the later tabs
    wait_until(lambda: len(levels()) == 1, 60, "the preview flat again after choosing constant")


def _playground(page):
    wait_until(lambda: _filled(page, "dw"), 60, "the playground's contour image")
    before = _digest(page, "x", "y")
    _keys(page, "steps", "ArrowLeft", 5)
    _changes("the playground's paths redrawn after the steps slider moved", before, lambda: _digest(page, "x", "y"))


def _landscape(page):
    wait_until(lambda: _filled(page, "level"), 120, "the landscape's contours")
    _select(page, "view", "surface")
    # the wireframe's axes (their own source) turn with the azimuth alone, whatever the run does meanwhile
    axes = ("xs", "ys", "x", "y", "text")
    before = _digest(page, *axes)
    _keys(page, "azimuth", "ArrowRight", 5)
    _changes("the surface's axes turned after the azimuth slider moved", before, lambda: _digest(page, *axes))


def _curvature(page):
    assert not _filled(page, "sharpness"), "sharpness drawn before its probe was turned on"
    _press(page, "Sharpness")
    wait_until(lambda: _filled(page, "sharpness"), 120, "λ_max drawn after turning Sharpness on")


def _spectrum(page):
    wait_until(lambda: _filled(page, "right"), 120, "the first ESD histogram")
    _pause(page)  # the live probe measures again every 50 steps
    before = _digest(page, "left", "right", "top")
    _select(page, "layer", "fc2")
    _changes("the ESD redrawn after choosing layer fc2", before, lambda: _digest(page, "left", "right", "top"))
    _resume(page)


def _pruning(page):
    _press(page, "Turn pruning on")
    target = lambda: max(_finite([s["sparsity"] for s in _sources(page, "step", "sparsity", "beta")]), default=None)  # noqa: E731
    wait_until(lambda: target() is not None, 90, "the pruning plan drawn after turning pruning on")
    first = target()
    _keys(page, "sparsity", "ArrowLeft", 5)
    wait_until(lambda: (t := target()) is not None and t < first - 0.01, 90,
               f"the planned sparsity below {first} after the sparsity slider moved left")


def _normalization(page):
    _keys(page, "steps", "Home")  # the comparison's shortest run
    _press(page, "Compare norms")
    wait_until(lambda: any(_finite(s["ys"]) for s in _sources(page, "xs", "ys", "norm", "color")), 120,
               "loss curves by normalization after Compare norms")


def _init(page):
    _press(page, "Coordinate check")
    wait_until(lambda: any(_finite(s["ys"]) for s in _sources(page, "xs", "ys", "label", "color", "dash")), 120,
               "the coordinate check drawn after pressing it")


def _runs(page):
    _press(page, "Save run")
    lines = lambda: _sources(page, "xs", "ys", "run", "color")  # noqa: E731
    wait_until(lambda: any(_finite(s["ys"]) for s in lines()), 60, "the saved run's curve")
    before = _digest(page, "xs", "ys", "run", "color")
    _select(page, "metric", "train_loss")
    _changes("the runs' curves redrawn after choosing metric train_loss", before,
             lambda: _digest(page, "xs", "ys", "run", "color"))


def _sweeps(page):
    steps = page.locator(".bk-input-group", has_text="Steps").locator("input").first
    steps.fill("20", timeout=60_000)
    steps.press("Enter")
    _press(page, "Start sweep")
    # the metric behind the parallel-coordinates lines: finished runs' values, not only a canvas
    wait_until(lambda: len([v for v in max(_columns(page, "metric"), key=len, default=[]) if v == v and v > 0]) >= 2,
               240, "two sweep results drawn after Start sweep", every=0.5)
    _press(page, "Cancel sweep")


DRAW_ON_START = {"Sweeps"}  # tabs with no plot before their Start (the page says so)

STEPS = {"Training": _training, "Optimizer": _optimizer, "Playground": _playground, "Landscape": _landscape,
         "Curvature": _curvature, "Spectrum": _spectrum, "Pruning": _pruning, "Normalization": _normalization,
         "Init & μP": _init, "Runs": _runs, "Sweeps": _sweeps}


def _slug(title: str) -> str:
    return re.sub(r"[^\w]+", "-", title.lower()).strip("-")  # "Init & μP" -> init-μp


def test_every_tab_draws_what_its_control_says(server, page):  # noqa: F811
    errors: list[str] = []
    shown = ["Training"]
    page.on("pageerror", lambda e: errors.append(f"{shown[0]} tab: {e}"))
    page.set_viewport_size({"width": 1400, "height": 900})
    _open(page, server)
    _press(page, "Start")
    SHOTS.mkdir(parents=True, exist_ok=True)
    missing = []
    # TABS="Curvature,Runs" checks only those (while fixing one); by default every tab
    for title in [t for t in ["Training", *(lab.title for lab in LABS)] if t in os.environ.get("TABS", t)]:
        shown[0] = title
        page.locator(".bk-tab", has_text=title).first.click()  # Bokeh's tab headers carry no ARIA role
        step = STEPS.get(title)
        try:
            if title not in DRAW_ON_START:
                page.locator("canvas:visible").first.wait_for()
            if step is None:  # a tab added after this test: screenshot it, and say it lacks a check
                missing.append(title)
            else:
                step(page)
        finally:  # a failing tab too: what it showed is the first thing to look at
            page.screenshot(path=str(SHOTS / f"{_slug(title)}.png"), full_page=True)
    _press(page, "Pause")
    assert not errors, f"errors in the page: {errors}"
    assert not missing, f"tabs without a control-changes-the-plot check here: {missing}"
