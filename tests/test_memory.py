"""trainlab.memory: what each call asks of glibc's malloc, and that the environment's own tuning wins."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from trainlab import memory

pytestmark = pytest.mark.skipif(memory._glibc() is None, reason="glibc only")


class _Libc:
    def __init__(self):
        self.calls = []

    def __getattr__(self, name):
        return lambda *args: self.calls.append((name, *args)) or 1


@pytest.fixture
def libc(monkeypatch):
    fake = _Libc()
    monkeypatch.setattr(memory, "_glibc", lambda: fake)
    for key in [k for k in os.environ if k.startswith("MALLOC_")]:
        monkeypatch.delenv(key)
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    memory.keep_freed_memory.cache_clear()
    yield fake
    memory.keep_freed_memory.cache_clear()


def test_each_call_sets_its_malloc_parameters(libc):
    memory.fewer_heaps(3)
    memory.keep_freed_memory()
    memory.keep_freed_memory()  # once per process
    memory.release_memory()
    assert libc.calls == [("mallopt", -8, 3), ("mallopt", -3, 32 * 2**20), ("mallopt", -1, 64 * 2**20),
                          ("malloc_trim", 0)]


@pytest.mark.parametrize("env", [{"MALLOC_ARENA_MAX": "4"}, {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=1"}])
def test_the_environments_tuning_wins(libc, monkeypatch, env):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    memory.fewer_heaps()
    memory.keep_freed_memory()
    memory.release_memory()  # trimming frees pages whatever the thresholds: still done
    assert libc.calls == [("malloc_trim", 0)]


def test_real_glibc_takes_them():
    """In a fresh process, on the real glibc: with M_ARENA_MAX at 1, six threads allocating at once get no arena
    of their own (glibc's malloc_stats lists them; importing torch may already have made one), where they
    would otherwise get one each."""
    code = (
        "import ctypes, sys, threading\n"
        "from trainlab import memory\n"
        "if sys.argv[1] == 'cap': memory.fewer_heaps(1)\n"
        "go, kept = threading.Barrier(6), []\n"
        "def work():\n"
        "    go.wait(); kept.append(bytearray(1 << 12)); go.wait()\n"
        "ts = [threading.Thread(target=work) for _ in range(6)]\n"
        "[t.start() for t in ts]; [t.join() for t in ts]\n"
        "ctypes.CDLL('libc.so.6').malloc_stats()\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}

    def arenas(how: str) -> int:
        out = subprocess.run([sys.executable, "-c", code, how], env=env, capture_output=True, text=True, timeout=120,
                             check=True)
        return out.stderr.count("Arena ")

    capped, free = arenas("cap"), arenas("free")
    assert capped <= 2 and free >= capped + 5
