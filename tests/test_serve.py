"""`trainlab serve` answers only to its own host names (no DNS rebinding), and more when told."""
from __future__ import annotations

import http.client
import signal
from pathlib import Path

import pytest
from conftest import free_port, serving, wait_until
from test_browser import _trainlab_command

from trainlab.widgets.app import allowed_hosts

pytestmark = pytest.mark.slow


def _status(port: int, host: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("GET", "/", headers={"Host": host})
    status = conn.getresponse().status
    conn.close()
    return status


def test_only_the_servers_own_names_are_answered(tmp_path):
    port = free_port()
    cmd = [*_trainlab_command(), "serve", "--port", str(port), "--address", "127.0.0.1",
           "--allow-websocket-origin", f"lab.school.example:{port}"]
    with serving(cmd, port, tmp_path):
        assert _status(port, f"127.0.0.1:{port}") == 200
        assert _status(port, f"localhost:{port}") == 200
        assert _status(port, f"lab.school.example:{port}") == 200  # the name a class types
        assert _status(port, f"evil.example:{port}") == 403
        assert _status(port, "127.0.0.1.evil.example") == 403


def test_the_allowed_names_come_from_the_address_and_the_origins():
    assert allowed_hosts("0.0.0.0", ["lab.example:5006", "https://proxy.example/lab"]) == [
        "0.0.0.0", "127.0.0.1", "[::1]", "lab.example", "localhost", "proxy.example"]
    assert allowed_hosts("localhost", ["*"]) is None


def _children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        try:
            if d.name.isdigit() and int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(d.name))
        except (OSError, ValueError, IndexError):
            pass  # gone meanwhile
    return out


def _alive(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_num_procs_serves_pages_from_each_process_and_its_servers_end_with_the_parent(tmp_path):
    port = free_port()
    cmd = [*_trainlab_command(), "serve", "--port", str(port), "--address", "127.0.0.1", "--no-show",
           "--num-procs", "2", "--ready", "0"]
    with serving(cmd, port, tmp_path, timeout=120) as proc:
        wait_until(lambda: (tmp_path / "server.log").read_text().count("warmed up") == 2, timeout=180,
                   what="both forked servers warmed up (their threads started after the fork)")
        kids = _children(proc.pid)
        assert len(kids) == 2
        for _ in range(4):
            assert _status(port, f"127.0.0.1:{port}") == 200
        proc.send_signal(signal.SIGTERM)  # the parent alone, as a service manager stops it
        proc.wait(timeout=60)
        wait_until(lambda: not any(_alive(k) for k in kids), timeout=60, what="the forked servers ended with it")
