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
