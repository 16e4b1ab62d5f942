"""Periodic checkpoints of a run recorded live: the states a fork can start from ("lower the lr at step 500").

    runs/<name>/points/step-<n>/   a checkpoint's files (trainlab.store.format) and its own manifest.json,
                                   without the history's rows (the run's record holds them)

The training thread only copies the state, between two steps (`Run.listen_steps`); the store's recorder
thread encodes and writes it. A point is written whole under a temporary name (each file fsynced) and
renamed: the rename commits it, so a kill -9 leaves it whole or absent. A point removed (thinned, or of a
timeline a reset or restore replaced) is renamed out of the way before it is deleted. Past `keep` points,
every other of the older ones goes (the first always stays, the newest keep/2 all stay), so disk stays
bounded and the points span the whole run, denser towards its end, as the history's rows do.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections import deque
from pathlib import Path
from typing import Any

import param
import pyarrow as pa

from ..registry import validate
from . import format as fmt
from .files import alive, fsync_folder, write_folder

POINT = re.compile(r"step-(\d{1,12})")
TEMP = re.compile(r"\.(?:step|gone)-\d+\.(\d+)\.[0-9a-f]*\.?tmp")
# copies waiting for the writer at most (bytes; one always may): past that a due point is skipped and counted,
# so memory stays bounded when the disk is slower than training
PENDING_BYTES = 256e6
_EMPTY = pa.table({})


class Policy(param.Parameterized):
    """When a recorded run is checkpointed (`store.track(run, every=..., seconds=..., keep=...)`)."""

    every = param.Integer(None, allow_None=True, bounds=(1, None), softbounds=(10, 10_000),
                          doc="a checkpoint at every multiple of this many steps (None: not by steps)")
    seconds = param.Number(None, allow_None=True, bounds=(0, None), inclusive_bounds=(False, True),
                           softbounds=(1, 3600), doc="a checkpoint when this many seconds passed since the last one "
                                                     "(None: not by time)")
    keep = param.Integer(20, bounds=(2, 10_000), softbounds=(2, 200),
                         doc="checkpoints kept at most; past that the older ones are thinned")


def policy(every: Any = None, seconds: Any = None, keep: Any = 20) -> Policy | None:
    """The checkpoint policy of `store.track`, checked (ValueError naming the setting); None when neither
    `every` nor `seconds` asks for checkpoints."""
    values = validate(Policy, {"every": every, "seconds": seconds, "keep": keep}, "store.track")
    return None if values["every"] is None and values["seconds"] is None else Policy(**values)


def steps(folder: Path) -> list[int]:
    """The steps of the committed points in `folder` (a run's points/), sorted."""
    try:
        return sorted(int(m.group(1)) for e in os.scandir(folder) if (m := POINT.fullmatch(e.name)) and e.is_dir())
    except FileNotFoundError:
        return []


def read(folder: Path, step: int, where: str) -> dict[str, Any]:
    """The point at `step` (its history empty), each file checked against its manifest."""
    point = folder / f"step-{step}"
    try:
        m = fmt.check_manifest(json.loads((point / fmt.MANIFEST).read_bytes()), where)
    except (OSError, ValueError) as e:
        raise ValueError(f"{where}: the checkpoint at step {step} is unreadable ({e})") from e

    def get(name: str) -> bytes | None:
        try:
            return (point / name).read_bytes() if name in fmt.FILES else None
        except FileNotFoundError:
            return None
    return fmt.decode(get, m, f"{where} (checkpoint at step {step})")


def remove(folder: Path, step: int) -> None:
    """The point out of the listing at once (a rename), then deleted."""
    gone = folder / f".gone-{step}.{os.getpid()}.{time.monotonic_ns():x}.tmp"
    try:
        os.rename(folder / f"step-{step}", gone)
    except FileNotFoundError:
        return
    shutil.rmtree(gone, ignore_errors=True)


def drop(folder: Path, after: int = -1) -> None:
    """Remove the points past step `after` (all of them by default): a timeline the run no longer follows."""
    for s in steps(folder):
        if s > after:
            remove(folder, s)


def thin(folder: Path, keep: int) -> None:
    """Past `keep` points, every other of the older ones removed (the first and the newest keep/2 stay)."""
    found = steps(folder)
    if len(found) <= keep:
        return
    for s in found[: len(found) - keep // 2][1::2]:
        remove(folder, s)


def write(folder: Path, ckpt: dict[str, Any]) -> None:
    """The checkpoint as the point at its step: written whole under a temporary name, then renamed."""
    folder.mkdir(exist_ok=True)
    for e in os.scandir(folder):  # leftovers of writers killed mid-write
        if (m := TEMP.fullmatch(e.name)) and int(m.group(1)) != os.getpid() and not alive(int(m.group(1))):
            shutil.rmtree(e.path, ignore_errors=True)
    files = fmt.encode(ckpt, _EMPTY)
    files[fmt.MANIFEST] = fmt.dumps(fmt.manifest(files, ckpt, _EMPTY, status="point"))  # last
    step = ckpt["step"]
    tmp = folder / f".step-{step}.{os.getpid()}.tmp"
    write_folder(tmp, files)
    remove(folder, step)  # the same step again (a run continued from an earlier checkpoint): the newer one
    os.rename(tmp, folder / f"step-{step}")  # the commit: a folder renamed whole
    fsync_folder(folder)


class Points:
    """A recorded run's checkpoints: copied on the training thread when due, written by the recorder thread."""

    def __init__(self, run, folder: Path, policy: Policy):
        self.folder, self.policy = folder, policy
        self.pending: deque = deque()  # (history generation, checkpoint copy, its bytes)
        self.skipped = 0  # due points not taken because the writer was behind
        self.written = 0
        self._size = 0  # bytes of the last copy
        self._last = time.monotonic()
        self._generation = run.history.generation  # the timeline the points on disk belong to
        self.wake = None  # set by the recorder: an Event to wake its thread

    def after_step(self, run, row: dict) -> None:
        """On the training thread, after each step: a copy of the state when a point is due."""
        step, now = row["step"], time.monotonic()
        p = self.policy
        if not ((p.every is not None and step % p.every == 0) or (p.seconds is not None and now - self._last >= p.seconds)):
            return
        self._last = now
        held = sum(n for _, _, n in list(self.pending))
        if held and held + self._size > PENDING_BYTES:
            self.skipped += 1
            return
        ckpt = run.checkpoint(history=False)  # re-entrant: this thread holds the run's step lock
        ckpt["elapsed"] = row["time"]  # `elapsed` counts a step(n) call's steps only once it returns
        self._size = _nbytes(ckpt)
        self.pending.append((run.history.generation, ckpt, self._size))
        if self.wake is not None:
            self.wake.set()

    def restart(self, generation: int) -> None:
        """The run's record was cleared or replaced (a reset): its points are of a timeline that is gone."""
        drop(self.folder)
        self._generation = generation

    def write_next(self, generation: int) -> bool:
        """On the recorder thread: the oldest copy waiting written (one of a replaced timeline dropped);
        whether there was one."""
        if not self.pending:
            return False
        gen, ckpt, _ = self.pending.popleft()
        if gen != generation:
            return True
        if gen != self._generation:
            self.restart(gen)
        write(self.folder, ckpt)
        self.written += 1
        thin(self.folder, self.policy.keep)
        return True

def _nbytes(obj) -> int:
    """The bytes of the tensors in a checkpoint's tree."""
    if hasattr(obj, "element_size"):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_nbytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_nbytes(v) for v in obj)
    return 0
