"""`trainlab serve` answers only to its own host names (no DNS rebinding), and more when told."""
from __future__ import annotations

import http.client

import pytest
from conftest import free_port, serving
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
