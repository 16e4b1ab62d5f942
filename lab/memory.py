"""What the process asks of glibc's malloc: keep freed blocks for a landscape's many forwards, fewer heaps for
a server's many threads, and freed pages handed back after sessions close.

Each is a no-op off glibc; the first two also when malloc is tuned by the environment (`MALLOC_*`, or
`GLIBC_TUNABLES` naming malloc), which then wins. Process-wide and irreversible, so opt-in: nothing here runs
on import.
"""
from __future__ import annotations

import ctypes
import functools
import gc
import os

MMAP_MAX, TRIM = 32 * 2**20, 64 * 2**20  # glibc's own adaptive maxima of its mmap and trim thresholds
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8  # mallopt's parameters (malloc.h)


def _glibc():
    """glibc's handle, or None off glibc."""
    try:
        return ctypes.CDLL("libc.so.6") if os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc") else None
    except (ValueError, OSError, AttributeError):  # not Linux, or no glibc
        return None


def _tunable():
    """glibc's handle unless malloc is tuned by the environment or this is not glibc."""
    if any(k.startswith("MALLOC_") for k in os.environ) or "malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return None
    return _glibc()


@functools.cache  # once per process
def keep_freed_memory() -> None:
    """For a process that evaluates many landscapes: freed blocks under 32 MB stay in the heap, and up to 64 MB
    at its top, for the whole process (glibc cannot be put back).

    glibc starts both thresholds at 128 KB and raises them toward these values as it sees large blocks freed.
    Until it has, and whenever one forward's temporaries add up to more than twice its largest one, each
    point's activations go back to the kernel when freed and are faulted in again, page by page, at the next
    point: 4,000-7,000 faults per point, about 40 % of the time, for the digits CNN (benchmarks/landscape.py).
    """
    libc = _tunable()
    if libc is not None:
        libc.mallopt(M_MMAP_THRESHOLD, MMAP_MAX)
        libc.mallopt(M_TRIM_THRESHOLD, TRIM)


def fewer_heaps(arenas: int = 2) -> None:
    """At most `arenas` heaps for the process's threads, before they start: every session's training thread
    would get its own, up to 8 per core, each keeping the pages it freed (the served lab's RSS stayed 1.2x its
    start after twenty sessions had closed)."""
    libc = _tunable()
    if libc is not None:
        libc.mallopt(M_ARENA_MAX, arenas)


def release_memory() -> None:
    """Collect what closed sessions left and hand freed heap pages back to the system: glibc keeps them in its
    arenas otherwise (the server's RSS stayed 1.3-1.5x its start after 20 sessions had closed)."""
    gc.collect()
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)
