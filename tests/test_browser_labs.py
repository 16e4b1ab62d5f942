"""End to end: every lab tab of the served dashboard opens, draws, and streams, in headless Chromium."""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import pytest
from test_browser import _columns, _open, _wait_for, server  # noqa: F401  (the module's served dashboard)

pytestmark = pytest.mark.browser

SHOTS = Path(tempfile.gettempdir()) / "trainlab-labs"

# tab -> (a column that the lab's plots fill once it is open and the run trains, a button to press first)
FILLED = {
    "Optimizer": ("trend", "LR range test"),
    "Playground": ("dw", None),
    "Landscape": ("level", None),
    "Curvature": ("sharpness", "Sharpness"),
    "Spectrum": ("right", None),
}


def _filled(page, column: str) -> int:
    return max((len(v) for v in _columns(page, column)), default=0)


@pytest.mark.parametrize("tab", list(FILLED))
def test_each_lab_tab_opens_and_draws(server, page, tab):  # noqa: F811
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    _open(page, server)
    page.get_by_role("button", name="Start", exact=True).click()
    page.locator(".bk-tab", has_text=tab).click()  # Bokeh's tab headers carry no ARIA role
    column, button = FILLED[tab]
    if button:
        page.get_by_role("button", name=button, exact=True).click()
    _wait_for(f"the {tab} tab never filled a source with a {column!r} column", lambda: _filled(page, column), 60)
    time.sleep(1.0)
    SHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{tab.lower()}.png"), full_page=True)  # outside the repository, to look at
    page.get_by_role("button", name="Pause", exact=True).click()
    assert not errors, f"errors in the page: {errors}"
