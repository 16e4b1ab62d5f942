"""End to end: the real `trainlab serve`, driven in headless Chromium through pytest-playwright.

What the page shows is read from its Bokeh document (Bokeh.documents[0].all_models): the
ColumnDataSources behind the plots, one with a `train_loss` column and one with an `lr` column.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
from conftest import ARTIFACTS, answers, free_port, serving, training_threads, wait_until

pytestmark = pytest.mark.browser

SCREENSHOT = ARTIFACTS / "training-tab.png"

# every ColumnDataSource of the page's document that has this column: a list of its values
COLUMNS_JS = """(column) => {
  if (!window.Bokeh || !Bokeh.documents.length) return null;
  const out = [];
  for (const m of Bokeh.documents[0].all_models)
    if (m.type === "ColumnDataSource" && column in m.data) out.push(Array.from(m.data[column]));
  return out;
}"""

# the noUiSlider handle of the slider labelled `label` ("lr: 0.05"), through open shadow roots:
# from the label, go up to the smallest ancestor that holds exactly one slider handle. Works for a
# FloatSlider (its title) and a DiscreteSlider (a label above the slider) alike.
HANDLE_JS = r"""(label) => {
  const all = [];
  const walk = (root) => { for (const el of root.querySelectorAll("*")) { all.push(el); if (el.shadowRoot) walk(el.shadowRoot); } };
  walk(document);
  const handles = (el) => {
    const out = [];
    const w = (root) => { for (const e of root.querySelectorAll("*")) {
      if (e.classList.contains("noUi-handle")) out.push(e);
      if (e.shadowRoot) w(e.shadowRoot); } };
    if (el.shadowRoot) w(el.shadowRoot);
    w(el);
    return out;
  };
  const up = (el) => el.parentElement || (el.getRootNode() instanceof ShadowRoot ? el.getRootNode().host : null);
  const pattern = new RegExp("^\\s*" + label + "\\s*:", "i");
  for (const el of all) {
    const own = [...el.childNodes].filter((n) => n.nodeType === Node.TEXT_NODE).map((n) => n.textContent).join("");
    if (!pattern.test(own)) continue;
    for (let a = el; a; a = up(a)) {
      const found = handles(a);
      if (found.length === 1) return found[0];
      if (found.length > 1) break;
    }
  }
  return null;
}"""


def _trainlab_command() -> list[str]:
    script = Path(sys.executable).parent / "trainlab"
    return [str(script)] if script.exists() else [sys.executable, "-m", "trainlab.widgets.cli"]


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> str:
    """`trainlab serve` in its own process group; its URL."""
    port = free_port()
    cmd = [*_trainlab_command(), "serve", "--port", str(port), "--address", "127.0.0.1", "--no-show"]
    with serving(cmd, port, tmp_path_factory.mktemp("serve")):
        yield f"http://127.0.0.1:{port}/"


def _open(page, url: str) -> None:
    page.goto(url)
    page.wait_for_selector("canvas", timeout=120_000)
    page.wait_for_function("() => window.Bokeh && Bokeh.documents.length > 0", timeout=60_000)


def _columns(page, column: str) -> list[list[float]]:
    return page.evaluate(COLUMNS_JS, column) or []


def _wait_for(what: str, check, timeout: float):
    """Poll check() until it returns something truthy; fail with `what` after `timeout` seconds."""
    return wait_until(check, timeout, what, every=0.1)


def _loss_points(page) -> int:
    sources = _columns(page, "train_loss")
    assert sources, "no ColumnDataSource with a train_loss column in the page"
    return max(len(s) for s in sources)


def _lr_values(page) -> list[float]:
    sources = [s for s in _columns(page, "lr") if s]
    return max(sources, key=len) if sources else []


def test_loss_streams_and_the_lr_slider_changes_the_run(server, page):
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    _open(page, server)
    assert _columns(page, "lr"), "no ColumnDataSource with an lr column in the page"
    assert _loss_points(page) == 0, "the run trains before Start was clicked"

    page.get_by_role("button", name="Start").click()
    first = _wait_for("the loss curve never received a point after Start", lambda: _loss_points(page), 60)
    time.sleep(1.5)
    # the loss curve keeps gaining points (streamed about 10 times a second; a loaded machine may stall a while)
    later = _wait_for(f"the loss curve stopped at {first} points",
                      lambda: (n := _loss_points(page)) > first and n, 60)
    assert later > first

    before = _lr_values(page)
    assert before and len(set(before)) == 1, f"the lr changed by itself: {sorted(set(before))}"
    handle = page.evaluate_handle(HANDLE_JS, "lr").as_element()
    assert handle is not None, "no slider labelled 'lr' in the page"
    handle.focus()
    for _ in range(5):
        handle.press("ArrowLeft")
        time.sleep(0.05)
    # the run applies the new lr at its next step; the history's lr column streams it back to the page
    lr = _wait_for(f"the streamed lr stayed at {before[0]} after moving the lr slider",
                   lambda: (v := _lr_values(page)) and v[-1] != v[0] and v, 60)
    assert lr[0] == before[0]
    assert lr[-1] < lr[0], f"the lr slider moved left but the lr went from {lr[0]} to {lr[-1]}"
    time.sleep(0.5)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOT), full_page=True)  # a test artifact, to look at

    page.get_by_role("button", name="Pause").click()  # spare the CPU for the next test
    assert not errors, f"errors in the page: {errors}"


def test_two_sessions_have_independent_runs(server, page, browser):
    other = browser.new_context()
    try:
        page_b = other.new_page()
        _open(page, server)
        _open(page_b, server)
        assert _loss_points(page) == 0 and _loss_points(page_b) == 0

        page.get_by_role("button", name="Start").click()
        _wait_for("page A's loss curve never received a point after Start", lambda: _loss_points(page), 60)
        time.sleep(2)
        assert _loss_points(page) > 0
        assert _loss_points(page_b) == 0, "page B's run trains although only page A's was started"
        page.get_by_role("button", name="Pause").click()
    finally:
        other.close()


def test_closing_the_tab_ends_the_sessions_training_thread(page):
    """The served app in this process, so its threads can be seen: a closed tab leaves none behind."""
    import panel as pn

    from trainlab.widgets.app import create_app

    port = free_port()
    server = pn.serve(create_app, port=port, address="127.0.0.1", show=False, threaded=True,
                      websocket_origin=[f"127.0.0.1:{port}"], check_unused_sessions_milliseconds=300,
                      unused_session_lifetime_milliseconds=300)
    try:
        _wait_for("the in-process server never answered", lambda: answers(port), 30)
        _open(page, f"http://127.0.0.1:{port}/")
        page.get_by_role("button", name="Start").click()
        _wait_for("no training thread after Start", training_threads, 20)
        page.close()  # the tab closes: Bokeh destroys the session, the app's cleanup runs
        deadline = time.monotonic() + 30
        while training_threads() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not training_threads(), "the closed session's training thread is still running"
    finally:
        server.stop()

