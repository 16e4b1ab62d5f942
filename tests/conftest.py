"""Shared test set-up: one torch thread, a small run, waiting on a condition, and Debian's Chromium for
pytest-playwright (never a downloaded browser).

Tests that wait for a thread, a job or a browser wait on a condition with a generous timeout
(`wait_until`), never on a fixed sleep: CI machines can be busy.
"""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import torch

SMALL = ("mlp", {"width": 16, "depth": 1})
ARTIFACTS = Path(os.environ.get("TRAINLAB_ARTIFACTS", Path(__file__).resolve().parent.parent / "test-results"))


def small_run(**kw):
    """A fast run: a one-hidden-layer MLP on moons, on the CPU (any Run argument overrides)."""
    from trainlab import Run

    kw.setdefault("model", SMALL)
    kw.setdefault("data", "moons")
    kw.setdefault("device", "cpu")
    return Run(**kw)


def edit_saved(src, dst, drop=(), edit=None, rehash=True):
    """A copy of the file Run.save wrote, with members dropped or edited (`edit`: member -> fn(bytes) -> bytes);
    `rehash` writes their new hashes into the manifest, so only the edit itself is wrong."""
    import hashlib
    import json
    import zipfile

    with zipfile.ZipFile(src) as z:
        members = {n: z.read(n) for n in z.namelist()}
    for name, fn in (edit or {}).items():
        members[name] = fn(members[name])
    manifest = json.loads(members["manifest.json"])
    if rehash:
        for name in edit or {}:
            manifest["files"][name] = {"bytes": len(members[name]),
                                       "blake2b": hashlib.blake2b(members[name], digest_size=16).hexdigest()}
    members["manifest.json"] = json.dumps(manifest).encode()
    with zipfile.ZipFile(dst, "w") as z:
        for name, data in members.items():
            if name not in drop:
                z.writestr(name, data)
    return dst


def edit_json(fn):
    """An `edit_saved` edit of a JSON member: fn(the parsed value) changes it in place."""
    import json

    def edit(raw: bytes) -> bytes:
        value = json.loads(raw)
        fn(value)
        return json.dumps(value).encode()
    return edit


def wait_until(cond, timeout: float = 60.0, what: str = "the condition", every: float = 0.02):
    """Poll cond() until it returns something truthy (returned); fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"after {timeout:.0f} s: {what}", pytrace=False)
        time.sleep(every)


CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
MISSING = (f"{CHROMIUM} is missing: the browser tests use Debian's Chromium. Install it with "
           "`sudo apt-get install chromium` (or `make browser`); never `playwright install`.")


def _on_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _have_chromium() -> bool:
    return os.access(CHROMIUM, os.X_OK)


def pytest_collection_modifyitems(config, items):
    """Notebooks and browser tests count as slow. Without Chromium, browser tests are skipped on a
    workstation; on CI they fail (see below)."""
    for item in items:
        if item.get_closest_marker("browser") or str(item.fspath).endswith(".ipynb"):
            item.add_marker(pytest.mark.slow)
    if _have_chromium() or _on_ci():
        return
    skip = pytest.mark.skip(reason=MISSING)
    for item in items:
        if item.get_closest_marker("browser"):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    """pytest-playwright's launch options, pointed at the system Chromium (the `page` fixture uses them)."""
    if not _have_chromium():
        if _on_ci():
            pytest.fail(MISSING, pytrace=False)
        pytest.skip(MISSING)
    # keep the plugin's own options (--headed, --slowmo, ...) and add ours
    return {**browser_type_launch_args, "executable_path": CHROMIUM, "args": list(CHROMIUM_ARGS)}


@pytest.fixture(autouse=True)
def _patient_pages(request):
    """Browser tests on a busy machine: every Playwright wait gets a minute, not its default 30 s
    (screenshots of failures land in test-results/, pytest-playwright's --screenshot=only-on-failure)."""
    if "page" in request.fixturenames:
        page = request.getfixturevalue("page")
        page.set_default_timeout(60_000)
        page.set_default_navigation_timeout(120_000)
    yield


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Small models run fastest on one intra-op thread, and a busy 2-core machine slows two ~10x."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def answers(port: int) -> bool:
    """Whether something listens on this local port."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


@contextlib.contextmanager
def serving(cmd: list[str], port: int, folder: Path, timeout: float = 60):
    """Run a server command in its own process group until the block ends; stop it by group, never by name."""
    log = folder / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=folder, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                pytest.fail(f"{cmd[0]} exited with code {proc.returncode}:\n{log.read_text()}", pytrace=False)
            if answers(port):
                break
            if time.monotonic() > deadline:
                pytest.fail(f"{cmd[0]} did not answer on port {port} within {timeout:.0f} s:\n{log.read_text()}",
                            pytrace=False)
            time.sleep(0.25)
        yield proc
    finally:
        stop_group(proc)


def stop_group(proc: subprocess.Popen, grace: float = 10) -> None:
    """Stop a process started in its own session, and everything it started: SIGTERM to the group, SIGKILL
    after `grace` seconds."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def training_threads() -> list:
    """The runs' training threads alive in this process (Run.start names each "trainlab-run")."""
    import threading

    return [t for t in threading.enumerate() if t.name == "trainlab-run"]


@pytest.fixture(autouse=True)
def _no_training_left():
    """A test leaves no run training behind: a forgotten training thread keeps a core busy for every later
    test in this process (the browser tests' timings among them). Stopped here, and the test fails."""
    before = set(training_threads())
    yield
    left = [t for t in training_threads() if t not in before]
    for t in left:
        run = getattr(getattr(t, "_target", None), "__self__", None)
        if run is not None:
            run.stop()
    if left:
        pytest.fail(f"{len(left)} run(s) left training after the test (stop them: run.stop())", pytrace=False)
