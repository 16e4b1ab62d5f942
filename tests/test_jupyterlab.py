"""End to end in a real JupyterLab: the dashboard renders inline and as an ipywidget, and streams.

JupyterLab runs from this environment with no token, on a free port, over a folder holding one
notebook; headless Chromium opens it, runs all cells, and reads each view's Bokeh document.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import nbformat
import pytest
from conftest import ARTIFACTS, free_port, serving, wait_until

from trainlab.widgets.labs import LABS

pytestmark = pytest.mark.browser

CELLS = [
    "import panel as pn\nimport trainlab\nfrom trainlab.widgets import TrainingDashboard\npn.extension(inline=True)",
    "run = trainlab.Run(data='moons', device='cpu', seed=0)\nrun.step(30)\nTrainingDashboard(run)",
    "pn.ipywidget(TrainingDashboard(run))",
]

# every lab panel of the registry, inline, over one trained run (their own Feeds: no dashboard around them)
LAB_CELLS = [
    "import panel as pn\nimport trainlab\nfrom trainlab import widgets as w\npn.extension(inline=True)\n"
    "run = trainlab.Run(data='moons', device='cpu', seed=0)\nrun.step(60)",
    *(f"w.{lab.cls}({'run' if lab.needs_run else ''})" for lab in LABS),
]

# the number of points in the train_loss source of each Bokeh document in the page (one per view)
POINTS_JS = """() => (window.Bokeh ? Bokeh.documents : []).map((d) => {
  for (const m of d.all_models)
    if (m.type === "ColumnDataSource" && "train_loss" in m.data) return m.data.step.length;
  return null;
}).filter((n) => n !== null)"""


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("lab")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in CELLS])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, folder / "live.ipynb")
    labs = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in LAB_CELLS])
    labs.metadata["kernelspec"] = nb.metadata["kernelspec"]
    nbformat.write(labs, folder / "labs.ipynb")
    port = free_port()
    jupyter = Path(sys.executable).parent / "jupyter"
    cmd = [str(jupyter), "lab", "--no-browser", "--allow-root", "--ip=127.0.0.1", f"--port={port}",
           "--ServerApp.token=", "--ServerApp.password=", f"--ServerApp.root_dir={folder}"]
    with serving(cmd, port, folder, timeout=90):
        yield f"http://127.0.0.1:{port}"


def _wait_for(what: str, check, timeout: float):
    return wait_until(check, timeout, what, every=0.25)


def _run_all(page) -> None:
    """JupyterLab's Run menu, Run All Cells, once the notebook has settled (an open menu would close)."""
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=120_000)
    page.wait_for_selector(".jp-Notebook .jp-Cell .jp-InputArea-editor", timeout=60_000)
    wait_until(lambda: page.get_by_role("menuitem", name="Run", exact=True).is_visible(), 60, "JupyterLab's Run menu")
    time.sleep(2)  # JupyterLab settles its layout after the notebook opens
    page.get_by_role("menuitem", name="Run", exact=True).click(timeout=60_000)
    page.get_by_text("Run All Cells", exact=True).click(timeout=60_000)


def test_dashboard_renders_inline_and_as_an_ipywidget_and_streams(lab, page):
    page.goto(f"{lab}/lab/tree/live.ipynb?reset", timeout=120_000)  # ?reset: no earlier workspace reopens
    _run_all(page)
    # both views show the run's 30 past steps: the inline output and the ipywidget
    views = _wait_for("two dashboards showing the run's 30 steps", lambda: (
        (v := page.evaluate(POINTS_JS)) and len(v) == 2 and all(n == 30 for n in v) and v), 120)
    assert views == [30, 30]
    # Seen here: right after Run All, JupyterLab sometimes takes the first click on an output for
    # itself (it focuses the cell) and the button's event never reaches the kernel; a second click
    # starts the run. So click until the run starts, at most three times, 20 s apart.
    for _ in range(3):
        page.get_by_role("button", name="Start", exact=True).first.click(timeout=60_000)  # not "Restart the kernel"
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not all(n > 30 for n in page.evaluate(POINTS_JS)):
            time.sleep(0.25)
        if all(n > 30 for n in page.evaluate(POINTS_JS)):
            break
    grown = _wait_for("the views did not stream new points after Start", lambda: (
        (v := page.evaluate(POINTS_JS)) and all(n > 30 for n in v) and v), 30)
    assert len(grown) == 2
    page.get_by_role("button", name="Pause", exact=True).first.click(timeout=60_000)


# per Bokeh document of the page: does it hold a source with this column, filled?
FILLED_JS = """(column) => (window.Bokeh ? Bokeh.documents : []).filter((d) => {
  for (const m of d.all_models)
    if (m.type === "ColumnDataSource" && column in m.data && m.data[column].length) return true;
  return false;
}).length"""


def test_every_lab_panel_renders_inline(lab, page, tmp_path):
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{lab}/lab/tree/labs.ipynb?reset", timeout=120_000)
    _run_all(page)
    # one Bokeh document per displayed panel, each drawn from the run or the playground
    _wait_for(f"{len(LABS)} lab panels rendered", lambda: len(page.evaluate(
        "() => window.Bokeh ? Bokeh.documents : []")) >= len(LABS), 180)
    for column, what in (("lr", "the optimizer panel's lr curve"), ("dw", "the playground's contour image"),
                         ("xs", "the playground's paths or the landscape's contours")):
        _wait_for(f"{what} never drew", lambda: page.evaluate(FILLED_JS, column), 60)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "jupyterlab-labs.png"), full_page=True, timeout=60_000)
    assert not errors, f"errors in the page: {errors}"
