"""End to end: every lab tab of the served dashboard (trainlab.widgets.LABS) opens, draws, and streams,
in headless Chromium."""
from __future__ import annotations

import pytest
from conftest import ARTIFACTS, wait_until
from test_browser import _columns, _open, server  # noqa: F401  (the module's served dashboard)

from trainlab.widgets.labs import LABS

pytestmark = pytest.mark.browser


def _filled(page, column: str) -> int:
    return max((len(v) for v in _columns(page, column)), default=0)


@pytest.mark.parametrize("lab", LABS, ids=[lab.title for lab in LABS])
def test_each_lab_tab_opens_and_draws(server, page, lab):  # noqa: F811
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    _open(page, server)
    page.get_by_role("button", name="Start", exact=True).click(timeout=60_000)
    page.locator(".bk-tab", has_text=lab.title).click(timeout=60_000)  # Bokeh's tab headers carry no ARIA role
    if lab.press:
        page.get_by_role("button", name=lab.press, exact=True).click(timeout=60_000)
    wait_until(lambda: _filled(page, lab.fills), 120, f"the {lab.title} tab filling a source with a {lab.fills!r} column",
               every=0.25)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"tab-{lab.title.lower()}.png"), full_page=True, timeout=60_000)
    page.get_by_role("button", name="Pause", exact=True).click(timeout=60_000)
    assert not errors, f"errors in the page: {errors}"


STATUS_JS = """() => {
  const all = [];
  const walk = (root) => { for (const el of root.querySelectorAll("*")) { all.push(el); if (el.shadowRoot) walk(el.shadowRoot); } };
  walk(document);
  return all.map((el) => el.textContent || "").filter((t) => /\\d+\\/\\d+ done/.test(t)).map((t) => t.trim())
            .sort((a, b) => a.length - b.length)[0] || "";
}"""


def test_a_tiny_sweep_started_from_the_sweeps_tab_draws_its_results(server, page):  # noqa: F811
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    _open(page, server)
    page.locator(".bk-tab", has_text="Sweeps").click(timeout=60_000)
    steps = page.locator(".bk-input-group", has_text="Steps").locator("input").first
    steps.fill("20", timeout=60_000)
    steps.press("Enter")
    page.get_by_role("button", name="Start sweep", exact=True).click(timeout=60_000)
    # values of the metric (val_loss) behind the parallel-coordinates lines: real results, not just a canvas
    wait_until(lambda: len([v for v in max(_columns(page, "metric"), key=len, default=[]) if v == v and v > 0]) >= 3,
               240, "three results drawn in the Sweeps tab", every=0.5)
    wait_until(lambda: "done" in page.evaluate(STATUS_JS), 60, "the sweep's progress shown", every=0.5)
    status = page.evaluate(STATUS_JS)
    assert "/36 done" in status, status  # lr_optimizer: 4 optimizers x 9 learning rates
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "tab-sweeps-run.png"), full_page=True, timeout=60_000)
    page.get_by_role("button", name="Cancel sweep", exact=True).click(timeout=60_000)
    wait_until(lambda: "cancelled" in page.evaluate(STATUS_JS) or "36/36 done" in page.evaluate(STATUS_JS), 120,
               "the sweep cancelled (or done)", every=0.5)
    assert not errors, f"errors in the page: {errors}"
