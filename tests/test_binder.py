"""Binder without Docker: what repo2docker builds from binder/, rebuilt in a fresh virtual environment.

The quick tests read binder/'s files. The slow ones build the environment from them (requirements.txt,
then postBuild), execute the tour notebook in that environment's kernel, start its Jupyter server through
binder/start as repo2docker does, and open the dashboard that jupyter-panel-proxy serves at /panel/dashboard
(the JupyterLab launcher's card) in headless Chromium: time to the first live curve and memory land in
test-results/binder.json. The one change from Binder: torch's CPU wheel comes from pip's configured wheel
folder instead of PyTorch's CPU index (the only line dropped from requirements.txt), as the network here
reaches PyPI only.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from conftest import ARTIFACTS, _on_ci, answers, free_port, stop_group, wait_until
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from trainlab.threads import available_cpus

REPO = Path(__file__).resolve().parent.parent
BINDER = REPO / "binder"
TORCH_INDEX = "--extra-index-url https://download.pytorch.org/whl/cpu"
TOUR = REPO / "notebooks" / "00_tour.ipynb"
APP = "dashboard"  # binder/dashboard.py, served at /panel/dashboard
# the repository on GitHub, for the README's Binder links: a placeholder until its address is known
BINDER_REPO = "OWNER/trainlab"


def _requirements() -> dict[str, Requirement]:
    lines = [line.split("#")[0].strip() for line in (BINDER / "requirements.txt").read_text().splitlines()]
    return {canonicalize_name(r.name): r for r in map(Requirement, (x for x in lines if x and not x.startswith("-")))}


def _proxy_config() -> dict:
    # exactly how jupyter-panel-proxy 0.2.0 reads it (panel_server._get_config)
    return yaml.load((REPO / "jupyter-panel-proxy.yml").read_text(), Loader=yaml.BaseLoader)


def test_binder_pins_every_dependency_and_the_cpu_build_of_torch():
    import tomllib

    reqs = _requirements()
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    for dep in map(Requirement, deps):
        name = canonicalize_name(dep.name)
        assert name in reqs, f"binder/requirements.txt misses {dep} (postBuild installs trainlab with --no-deps)"
        pin = [s.version for s in reqs[name].specifier if s.operator == "=="]
        assert pin, f"binder/requirements.txt: {reqs[name]} is not pinned with =="
        assert dep.specifier.contains(pin[0], prereleases=True), f"{reqs[name]} is outside pyproject's {dep}"
        assert dep.extras <= reqs[name].extras, f"{reqs[name]} lacks the extras of {dep}"
    assert str(reqs["torch"].specifier) == "==2.13.0+cpu"
    assert TORCH_INDEX in (BINDER / "requirements.txt").read_text().splitlines()
    assert {"jupyterlab", "ipykernel", "jupyter-panel-proxy"} <= set(reqs)
    constraints = [x for x in (BINDER / "constraints.txt").read_text().splitlines() if x and not x.startswith("#")]
    assert constraints == ["torch==2.13.0+cpu"]
    assert "--no-deps" in (BINDER / "postBuild").read_text()
    assert (BINDER / "runtime.txt").read_text().strip() == "python-3.11"


def test_the_proxy_config_turns_panels_dev_mode_off():
    config = _proxy_config()
    # the trap: under BaseLoader every value is a string, and jupyter-panel-proxy appends --dev when
    # bool(config["dev"]) (its default is True), so "false" would count as on
    assert yaml.load("dev: false", Loader=yaml.BaseLoader) == {"dev": "false"} and bool("false")
    assert "dev" in config and not config["dev"], f"dev: {config.get('dev')!r} turns Panel's dev mode on"
    for flag in ("autoreload", "warm", "admin", "reuse_sessions"):
        assert not config.get(flag), f"{flag}: {config[flag]!r} counts as on"
    assert config["apps"] == [f"binder/{APP}.py"] and (REPO / config["apps"][0]).is_file()
    entry = config["launcher_entry"]
    # "enabled" would arrive as the string "true", which traitlets' Bool refuses: it must stay at its default
    assert "enabled" not in entry and entry["path_info"] == f"panel/{APP}"
    assert (REPO / entry["icon_path"]).is_file()


def test_the_readmes_binder_links_open_the_tour_and_the_dashboard():
    readme = (REPO / "README.md").read_text()
    links = re.findall(r"https://mybinder\.org/v2/gh/([\w.-]+/[\w.-]+)/([\w.-]+)\?urlpath=([\w./-]+)", readme)
    assert {path for _, _, path in links} == {"lab/tree/notebooks/00_tour.ipynb", f"panel/{APP}"}, links
    assert {repo for repo, _, _ in links} == {BINDER_REPO}
    for _, _, path in links:
        if path.startswith("lab/tree/"):
            assert (REPO / path.removeprefix("lab/tree/")).is_file(), path
    assert readme.index("mybinder.org/badge_logo.svg") < readme.index("## Set-up")  # the badge is at the top


def test_binder_start_sets_the_torch_threads_from_the_cpu_quota():
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "PIP_CONSTRAINT")}
    out = subprocess.run(["bash", str(BINDER / "start"), sys.executable, "-c",
                          "import os; print(os.environ['OMP_NUM_THREADS'], os.environ['PIP_CONSTRAINT'])"],
                         env=env, capture_output=True, text=True, check=True).stdout.split()
    assert out == [str(available_cpus()), str(BINDER / "constraints.txt")]
    env["OMP_NUM_THREADS"] = "3"  # one set by hand stays
    out = subprocess.run(["bash", str(BINDER / "start"), "printenv", "OMP_NUM_THREADS"], env=env,
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == "3"


# ---- the environment itself (slow: a fresh virtual environment of about 2 GB) ----

MEASURED: dict = {}


def _record(**values) -> None:
    MEASURED.update(values)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "binder.json").write_text(json.dumps(MEASURED, indent=2))


def _run(cmd, what: str, **kw) -> float:
    start = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if proc.returncode:
        pytest.fail(f"{what} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}", pytrace=False)
    return round(time.monotonic() - start, 1)


@pytest.fixture(scope="module")
def binder_env(tmp_path_factory) -> dict:
    """A fresh virtual environment built as repo2docker builds Binder's: its environment variables."""
    tmp = tmp_path_factory.mktemp("binder")
    venv = tmp / "env"
    py = str(venv / "bin" / "python")
    timings = {"venv_s": _run([sys.executable, "-m", "venv", str(venv)], "python -m venv")}
    pip = [py, "-m", "pip", "install", "-q", "--disable-pip-version-check", "-c", str(REPO / "constraints.txt")]
    # torch's CPU wheel from pip's own configuration (a local wheel folder here), not PyTorch's index
    probe = subprocess.run([*pip, "--no-index", "--no-deps", "torch==2.13.0+cpu"], capture_output=True, text=True)
    if probe.returncode:
        message = ("no local CPU wheel of torch 2.13.0 for pip (find-links): this test installs Binder's "
                   "environment without reaching PyTorch's CPU index\n" + probe.stderr[-1000:])
        if _on_ci():
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    text = (BINDER / "requirements.txt").read_text()
    assert TORCH_INDEX in text.splitlines()
    (tmp / "requirements.txt").write_text("\n".join(x for x in text.splitlines() if x != TORCH_INDEX))
    timings["requirements_s"] = _run([*pip, "-r", str(tmp / "requirements.txt")], "pip install -r binder/requirements.txt")
    env = {**os.environ, "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}", "VIRTUAL_ENV": str(venv),
           # Jupyter's per-user folders, away from this machine's own kernels and settings
           "JUPYTER_CONFIG_DIR": str(tmp / "jupyter-config"), "JUPYTER_DATA_DIR": str(tmp / "jupyter-data"),
           "JUPYTER_RUNTIME_DIR": str(tmp / "jupyter-runtime"), "IPYTHONDIR": str(tmp / "ipython")}
    for name in ("OMP_NUM_THREADS", "PIP_CONSTRAINT", "PYTHONPATH"):
        env.pop(name, None)
    timings["postBuild_s"] = _run(["bash", str(BINDER / "postBuild")], "binder/postBuild", cwd=REPO, env=env)
    _run([py, "-m", "pip", "check"], "pip check (requirements.txt misses a dependency?)", env=env)
    size = subprocess.run(["du", "-sm", str(venv)], capture_output=True, text=True).stdout.split()[0]
    _record(**timings, env_mb=int(size))
    return {"env": env, "python": py, "tmp": tmp}


def _start(cmd, env, log: Path, **kw) -> subprocess.Popen:
    """A command run as binder/start runs the container's, in its own process group."""
    with open(log, "wb") as out:
        return subprocess.Popen(["bash", str(BINDER / "start"), *cmd], env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, **kw)


@pytest.fixture(scope="module")
def tour(binder_env) -> dict:
    """The tour notebook executed in the Binder environment's kernel, which stays up until the module ends."""
    result = binder_env["tmp"] / "tour.json"
    log = binder_env["tmp"] / "kernel.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(["bash", str(BINDER / "start"), binder_env["python"], str(REPO / "tests" / "binder_kernel.py"),
                                 str(TOUR), str(result)], env=binder_env["env"], stdin=subprocess.PIPE,
                                stdout=out, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True)
    try:
        def done():
            if proc.poll() is not None:
                pytest.fail(f"the notebook runner exited ({proc.returncode}):\n{log.read_text()[-3000:]}", pytrace=False)
            return result.exists() and json.loads(result.read_text())
        out = wait_until(done, 900, "the tour notebook to finish in the Binder environment's kernel", every=0.5)
        out["kernel_mb"] = _memory(out["kernel_pid"])
        _record(tour_s=out.get("seconds"), kernel=out["kernel_mb"])
        yield out
    finally:
        proc.stdin.close()  # the runner shuts its kernel down
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            stop_group(proc, grace=20)


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        todo += _children(p)
    return pids


def _memory(pid: int) -> dict:
    """RSS and PSS in MB of a process and all its descendants (PSS shares torch's libraries fairly)."""
    rss = pss = 0
    for p in _tree(pid):
        try:
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith(("Rss:", "Pss:")):
                    kb = int(line.split()[1])
                    rss, pss = (rss + kb, pss) if line.startswith("Rss:") else (rss, pss + kb)
        except OSError:
            continue
    return {"rss_mb": round(rss / 1024), "pss_mb": round(pss / 1024)}


@pytest.mark.slow
def test_the_binder_environment_runs_the_tour(binder_env, tour):
    _run([binder_env["python"], "-c", "import trainlab, trainlab.widgets, panel_server, jupyter_server_proxy; "
          "import torch; assert torch.__version__ == '2.13.0+cpu', torch.__version__"],
         "importing trainlab in the Binder environment", env=binder_env["env"])
    assert tour["error"] is None, f"the tour notebook failed in the Binder environment:\n{tour['error']}"
    # binder/start's thread count reached the kernel: torch follows the CPUs the quota allows
    assert tour["omp_num_threads"] == str(available_cpus()) and tour["torch_threads"] == available_cpus()


@pytest.fixture(scope="module")
def jupyter(binder_env, tour):
    """Binder's Jupyter server (JupyterLab), started through binder/start in the repository's folder, with
    the tour's kernel still running beside it."""
    port = free_port()
    log = binder_env["tmp"] / "jupyter.log"
    started = time.monotonic()
    proc = _start(["jupyter", "lab", "--no-browser", "--allow-root", "--ip=127.0.0.1", f"--port={port}",
                   "--ServerApp.token=", "--ServerApp.password="], binder_env["env"], log, cwd=REPO)
    try:
        def up():
            if proc.poll() is not None:
                pytest.fail(f"jupyter lab exited ({proc.returncode}):\n{log.read_text()[-3000:]}", pytrace=False)
            return answers(port)
        wait_until(up, 120, "jupyter lab to answer", every=0.25)
        yield {"url": f"http://127.0.0.1:{port}", "proc": proc, "started": started, "log": log}
    finally:
        stop_group(proc, grace=20)


def _get(url: str, timeout: float = 300) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.read().decode(errors="replace")


# the number of points in the page's train_loss source
POINTS_JS = """() => {
  if (!window.Bokeh || !Bokeh.documents.length) return 0;
  for (const m of Bokeh.documents[0].all_models)
    if (m.type === "ColumnDataSource" && "train_loss" in m.data) return m.data.step.length;
  return 0;
}"""


@pytest.mark.slow
@pytest.mark.browser
def test_the_launcher_opens_the_served_dashboard_and_it_trains(binder_env, tour, jupyter, page):
    # what JupyterLab's launcher shows: jupyter-server-proxy's list of servers
    status, body = _get(f"{jupyter['url']}/server-proxy/servers-info", 60)
    entry = {s["name"]: s for s in json.loads(body)["server_processes"]}["panel"]["launcher_entry"]
    assert entry["enabled"] and entry["title"] == "trainlab dashboard" and entry["path_info"] == f"panel/{APP}"
    assert _get(jupyter["url"] + entry["icon_url"], 60)[1].lstrip().startswith("<svg")

    # a person clicks the card: the first visit starts `panel serve` behind the proxy
    clicked = time.monotonic()
    page.goto(f"{jupyter['url']}/{entry['path_info']}")
    page.wait_for_selector("canvas", timeout=300_000)
    page.wait_for_function("() => window.Bokeh && Bokeh.documents.length > 0", timeout=120_000)
    shown = time.monotonic()
    assert page.evaluate(POINTS_JS) == 0, "the run trains before Start"
    page.get_by_role("button", name="Start").click()
    wait_until(lambda: page.evaluate(POINTS_JS) > 0, 120, "the first point of the live loss curve", every=0.1)
    first = time.monotonic()
    wait_until(lambda: page.evaluate(POINTS_JS) > 200, 120, "the loss curve to keep streaming", every=0.25)

    # what the proxy launched: panel serve of the app file, without dev mode, its threads from binder/start
    panel = [p for p in _tree(jupyter["proc"].pid)
             if b"panel" in Path(f"/proc/{p}/cmdline").read_bytes() and b"serve" in Path(f"/proc/{p}/cmdline").read_bytes()]
    assert panel, "no panel serve process under the Jupyter server"
    cmdline = Path(f"/proc/{panel[0]}/cmdline").read_bytes().decode().split("\0")
    assert f"binder/{APP}.py" in cmdline and not {"--dev", "--autoreload", "--admin"} & set(cmdline), cmdline
    environ = dict(x.split("=", 1) for x in Path(f"/proc/{panel[0]}/environ").read_bytes().decode().split("\0") if "=" in x)
    assert environ.get("OMP_NUM_THREADS") == str(available_cpus())

    server = _memory(jupyter["proc"].pid)  # the Jupyter server, and the panel server under it
    kernel = _memory(tour["kernel_pid"])
    _record(first_curve_after_server_start_s=round(first - jupyter["started"], 1),
            first_curve_after_click_s=round(first - clicked, 1), page_shown_after_click_s=round(shown - clicked, 1),
            servers=server, kernel_with_dashboard_open=kernel,
            total_rss_mb=server["rss_mb"] + kernel["rss_mb"], total_pss_mb=server["pss_mb"] + kernel["pss_mb"],
            cpus=available_cpus())
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "binder-dashboard.png"), full_page=True)
    page.get_by_role("button", name="Pause").click()
    print("binder:", json.dumps(MEASURED))
    # Binder gives 2 GB: the tour's kernel, the Jupyter server and the served dashboard must fit with room to spare
    assert server["pss_mb"] + kernel["pss_mb"] < 1500, MEASURED


@pytest.mark.slow
def test_the_proxied_page_is_the_dashboard(jupyter):
    status, body = _get(f"{jupyter['url']}/panel/{APP}")  # starts panel serve if the browser test did not
    assert status == 200 and re.search(r"<title>\s*trainlab\s*</title>", body), body[:2000]
    assert "Bokeh" in body
