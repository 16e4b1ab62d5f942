"""End to end, the dashboard after minutes of training: the page keeps answering on every tab.

One served session trains for TRAINLAB_RESPONSIVE_MINUTES (5 by default, the time after which the
landed main froze the browser for 18-138 s on a lab tab). While it trains, the status line must keep
up with the plots. Then, on every tab in turn: Pause, Start and three quick presses of the lr slider
must each show their answer, the lr label must be the run's real value, and a screenshot is kept.

Every latency is written to test-results/responsiveness.json, with the machine's load average. The target
is 0.5 s; the test fails past LIMIT, a bound for a busy CI machine: the landed main's freezes were 18-138 s,
medians on a quiet 2-core machine were 0.1-1.7 s (Training and Optimizer the slowest tabs; 0.3-0.7 s with a second
process spinning on one core), and CI machines busy with other work measured 2.0-2.7 s for the same presses.
"""
from __future__ import annotations

import json
import math
import os
import re
import statistics
import time

import pytest
from conftest import ARTIFACTS, wait_until
from test_browser import HANDLE_JS, _open, server  # noqa: F401  (the module's served dashboard)

from trainlab.widgets.labs import LABS

pytestmark = pytest.mark.browser

TRAIN_S = 60 * float(os.environ.get("TRAINLAB_RESPONSIVE_MINUTES", 5))
TARGET, LIMIT = 0.5, 5.0  # seconds: the target, and the test's bound on a median of three

# every text node of the page (through open shadow roots) that is visible, joined: what a user reads
VISIBLE_TEXT_JS = r"""() => {
  const out = [];
  const walk = (root) => { for (const e of root.querySelectorAll('*')) {
    if (e.shadowRoot) walk(e.shadowRoot);
    for (const n of e.childNodes) if (n.nodeType === 3 && n.textContent.trim() && e.getClientRects().length)
      out.push(n.textContent.trim());
  } };
  walk(document);
  return out.join('\n');
}"""

# the status line's text: "running · step 1234" (its first line: warnings may follow)
STATUS_JS = r"""() => {
  const pattern = /^\s*(running|paused|idle|stopped)\s*·\s*step\s+\d+/;
  let found = null;
  const walk = (root) => { for (const e of root.querySelectorAll('*')) {
    if (e.shadowRoot) walk(e.shadowRoot);
    if (pattern.test(e.textContent) && e.getClientRects().length) found = e.textContent;  // the innermost wins
  } };
  walk(document);
  return found;
}"""


# the text of the label of the slider called `label` ("lr: 0.05" -> "0.05")
LABEL_JS = r"""(label) => {
  const pattern = new RegExp("^\\s*" + label + "\\s*:\\s*(\\S+)", "i");
  const walk = (root) => { for (const e of root.querySelectorAll('*')) {
    if (e.shadowRoot) { const r = walk(e.shadowRoot); if (r) return r; }
    const m = pattern.exec(e.textContent);
    if (m && e.children.length <= 1 && e.getClientRects().length) return m[1];
  } return null; };
  return walk(document);
}"""


def _status(page) -> tuple[str, int, float]:
    """The status line's word, step and the lr the run steps with."""
    text = page.evaluate(STATUS_JS) or ""
    m = re.match(r"\s*(\w+)\s*·\s*step\s+(\d+)\s*·\s*lr\s+(\S+)", text)
    return (m[1], int(m[2]), float(m[3])) if m else ("", -1, math.nan)


# the last step drawn on the training-loss plot
PLOTTED_STEP_JS = """() => {
  let last = 0;
  for (const m of Bokeh.documents[0].all_models)
    if (m.type === "ColumnDataSource" && "train_loss" in m.data && m.data.step.length)
      last = Math.max(last, m.data.step[m.data.step.length - 1]);
  return last;
}"""


def _plotted_step(page) -> int:
    return int(page.evaluate(PLOTTED_STEP_JS))


def _timed(what: str, act, shown) -> float:
    """Seconds from act() to shown() being true, as a user waits for it."""
    t = time.monotonic()
    act()
    wait_until(shown, 120, what, every=0.02)
    return time.monotonic() - t


def _lr_label(page) -> float | None:
    text = page.evaluate(LABEL_JS, "lr")
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def _press_lr(page, key: str, times: int = 3) -> None:
    handle = page.evaluate_handle(HANDLE_JS, "lr").as_element()
    assert handle is not None, "no slider labelled 'lr' in the page"
    handle.focus()
    for _ in range(times):  # quick presses, as a user taps an arrow key
        handle.press(key)


def _lr_stops() -> list[float]:
    """The lr slider's stops, as the dashboard builds them."""
    from trainlab import Run
    from trainlab.widgets.controls import Control

    return sorted(Control(Run(model=("mlp", {"width": 4, "depth": 1}), data="moons", device="cpu"), "lr",
                          lambda *_: None).widget.options.values())


def _measure_tab(page, title: str, stops: list[float], report: dict) -> dict[str, list[float]]:
    out = report["tabs"][title] = {"pause": [], "start": [], "lr slider": [], "lr in the run": []}
    for trial in range(3):
        out["pause"].append(_timed(f"'paused' on the {title} tab",
                                   lambda: page.get_by_role("button", name="Pause", exact=True).click(),
                                   lambda: _status(page)[0] == "paused"))
        out["start"].append(_timed(f"'running' on the {title} tab",
                                   lambda: page.get_by_role("button", name="Start", exact=True).click(),
                                   lambda: _status(page)[0] == "running"))
        before = _lr_label(page)
        assert before in stops, f"the lr label shows {before}, not one of the slider's stops"
        i = stops.index(before) + (3 if trial % 2 == 0 else -3)
        target = stops[min(max(i, 0), len(stops) - 1)]
        t = time.monotonic()
        _press_lr(page, "ArrowRight" if trial % 2 == 0 else "ArrowLeft")
        # three presses move the label three stops, and the run trains with what it shows
        wait_until(lambda: _lr_label(page) == target, 120,
                   f"the lr label to show {target} on the {title} tab (it shows {_lr_label(page)})")
        out["lr slider"].append(time.monotonic() - t)
        wait_until(lambda: abs(_status(page)[2] - target) <= 1e-3 * target, 120,
                   f"the run's lr to reach the label's {target} on the {title} tab (the status shows {_status(page)[2]})")
        out["lr in the run"].append(time.monotonic() - t)
    return out


def test_every_tab_answers_after_minutes_of_training(server, page):  # noqa: F811
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.set_viewport_size({"width": 1500, "height": 1000})
    _open(page, server)
    page.get_by_role("button", name="Start", exact=True).click(timeout=60_000)
    wait_until(lambda: _status(page)[0] == "running", 60, "'running' after Start")

    # while it trains, the status line keeps up with the plots (the landed main's stopped at step
    # 1,385 while they showed 3,600)
    lag, started = [], time.monotonic()
    while time.monotonic() - started < TRAIN_S:
        status = _status(page)[1]
        plotted = _plotted_step(page)
        if plotted > 0:
            lag.append(plotted - status)
        time.sleep(2.0)  # a sample of the page every 2 s while the run trains for TRAIN_S
    steps = _status(page)[1]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    report: dict = {"trained_s": TRAIN_S, "steps": steps, "status_lag_steps": lag, "load": os.getloadavg(), "tabs": {}}
    (ARTIFACTS / "responsiveness.json").write_text(json.dumps(report, indent=1))
    rate = steps / TRAIN_S
    assert lag and max(lag) <= rate * 1.0, \
        f"the status line fell {max(lag)} steps (more than 1 s at {rate:.0f} steps/s) behind the plots"
    stops = _lr_stops()
    for title, press in [("Training", None)] + [(lab.title, lab.press) for lab in LABS]:
        page.locator(".bk-tab", has_text=title).click(timeout=60_000)
        if press:
            page.get_by_role("button", name=press, exact=True).click(timeout=60_000)
        report["tabs"][title] = _measure_tab(page, title, stops, report)
        page.screenshot(path=str(ARTIFACTS / f"after-{TRAIN_S / 60:g}-min-{title.lower()}.png"), timeout=60_000)
        (ARTIFACTS / "responsiveness.json").write_text(json.dumps(report, indent=1))
    page.get_by_role("button", name="Pause", exact=True).click(timeout=60_000)

    slow = {f"{title} {what}": round(statistics.median(ts), 2) for title, tab in report["tabs"].items()
            for what, ts in tab.items() if statistics.median(ts) > LIMIT}
    assert not slow, (f"answers slower than {LIMIT} s (target {TARGET} s) after {TRAIN_S:.0f} s of training: {slow} "
                      f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)")
    assert not errors, f"errors in the page: {errors}"
