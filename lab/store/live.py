"""The history of a run recorded as it trains: Arrow IPC stream segments, readable up to their last whole batch.

A Parquet file is written whole or not at all (one cut by a kill -9 cannot be read), so a live record
appends IPC record batches instead: each batch is one write to the file, and a reader stops at the
first one that is not whole. A new column (a probe turned on, validation at step 50) starts a new
segment with the wider schema; readers join the segments. A reset of the run starts over.
"""
from __future__ import annotations

import json
import math
import os
import re
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

import pyarrow as pa

FLUSH_EVERY = 0.25  # seconds: what a kill -9 can take from the record
SEGMENT = re.compile(r"history\.(\d{1,9})\.arrows")
INTEGERS = ("step", "epoch")


def segments(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := SEGMENT.fullmatch(p.name))]
    return [p for _, p in sorted(found)]


def read_segment(path: Path) -> pa.Table | None:
    """Every whole batch of one segment (None when not even its schema was written)."""
    try:
        with pa.OSFile(str(path)) as f:
            reader = pa.ipc.open_stream(f)
            batches = []
            while True:
                try:
                    batches.append(reader.read_next_batch())
                except StopIteration:
                    break
                except (OSError, pa.ArrowInvalid):  # the batch a killed writer was in the middle of
                    break
            return pa.Table.from_batches(batches, reader.schema)
    except (OSError, pa.ArrowInvalid, FileNotFoundError):
        return None


def read(folder: Path) -> pa.Table | None:
    """The live record of a run (its segments joined), or None when there is none."""
    tables = [t for t in map(read_segment, segments(folder)) if t is not None]
    if not tables:
        return None
    return pa.concat_tables(tables, promote_options="default")


def read_changes(folder: Path) -> list[dict]:
    """run.set's changes appended live (a line each; a half-written last line is dropped)."""
    try:
        lines = (folder / "events.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return []
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except ValueError:
            break
    return out


def _kind(v: Any) -> pa.DataType:
    return pa.string() if isinstance(v, str) else pa.float64()


def _value(t: pa.DataType, v: Any):
    if v is None:
        return None
    if t == pa.string():
        return str(v)
    if t == pa.int64():
        return int(v)
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


class Writer:
    """Appends rows to the segments of a folder; `reset()` drops them and starts over."""

    def __init__(self, folder: Path):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        existing = segments(folder)
        self.index = int(SEGMENT.fullmatch(existing[-1].name).group(1)) + 1 if existing else 0
        self.schema: pa.Schema | None = None
        self._file = self._stream = None
        self.rows = 0

    def write(self, rows: list[dict]) -> None:
        if not rows:
            return
        fields = {f.name: f.type for f in self.schema} if self.schema is not None else {}
        wider = dict(fields)
        for r in rows:
            for k, v in r.items():
                if k not in wider:
                    wider[k] = pa.int64() if k in INTEGERS else _kind(v)
        if wider.keys() != fields.keys():
            self._open(pa.schema(list(wider.items())))
        arrays = [pa.array([_value(t, r.get(k)) for r in rows], t) for k, t in wider.items()]
        self._stream.write_batch(pa.record_batch(arrays, schema=self.schema))  # one write: whole or not at all
        self.rows += len(rows)

    def _open(self, schema: pa.Schema) -> None:
        self._close()
        self._file = pa.OSFile(str(self.folder / f"history.{self.index:06d}.arrows"), "wb")
        self.index += 1
        self._stream = pa.ipc.new_stream(self._file, schema)
        self.schema = schema

    def _close(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._file.close()
        self._file = self._stream = self.schema = None

    def reset(self) -> None:
        old = segments(self.folder)
        self._close()
        for p in old:
            p.unlink(missing_ok=True)
        self.rows = 0

    def sync(self) -> None:
        if self._file is not None:
            os.fsync(self._file.fileno())

    def close(self) -> None:
        self._close()


class Recorder:
    """Follows a run's history and `run.set` changes into a live folder, flushing every FLUSH_EVERY seconds,
    and writes its periodic checkpoints (`points`, a `trainlab.store.points.Points`) as they are copied."""

    def __init__(self, run, folder: Path, base: list[dict] | None = None, points=None):
        """`base`: the rows the record starts with (None: the run's history as it is now)."""
        self.run, self.folder, self.points = run, folder, points
        self.writer = Writer(folder)
        self._queue: deque = deque()
        self._lock = threading.Lock()  # one flush at a time (the thread's, a save's)
        self._changes = 0
        self._events = open(folder / "events.jsonl", "a")
        self._stop, self._wake = threading.Event(), threading.Event()
        held = run.history.listen(self._queue.append)
        if base is not None:  # the stored rows up to where the run is, then any it logged since they were read
            now = held[-1]["step"] if held else 0
            base = [r for r in base if r["step"] <= now]
            last = base[-1]["step"] if base else 0
            held = base + [r for r in held if r["step"] > last]
        self.writer.write(held)
        self._heartbeat = time.monotonic()
        if points is not None:
            points.wake = self._wake
            run.listen_steps(points.after_step)
        self._thread = threading.Thread(target=self._loop, name="trainlab-store", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        import torch

        # this thread's own setting: encoding a checkpoint's tensors here must not start a team of intra-op
        # threads that spin beside the training thread on a small machine
        torch.set_num_threads(1)
        while not self._stop.is_set():
            self._wake.wait(FLUSH_EVERY)  # woken early by a checkpoint copied: its memory is freed sooner
            self._wake.clear()
            if self._stop.is_set():
                break
            try:
                self.flush()
            except Exception:  # a full disk: the run trains on; the next flush tries again
                pass

    def flush(self) -> None:
        with self._lock:
            wrote = self._write_rows()
            # each checkpoint after the rows logged before it (the record covers its step before it shows), and
            # the rows logged while it was written right after it: writing checkpoints never holds the record back
            while self.points is not None and self.points.write_next(self.run.history.generation):
                wrote = self._write_rows() or wrote
            if wrote or time.monotonic() - self._heartbeat > 5:  # a sign of life for other machines
                os.utime(self.folder)
                self._heartbeat = time.monotonic()

    def _write_rows(self) -> bool:
        """The rows and changes queued, written; whether there were rows."""
        from .format import pack

        rows = []
        while self._queue:
            row = self._queue.popleft()
            if row is None:  # cleared (reset) or replaced: the record starts over
                rows = []
                if self.points is not None:
                    self.points.restart(self.run.history.generation)
                self.writer.reset()
                self._events.truncate(0)
                self._events.seek(0)
                self._changes = 0
            else:
                rows.append(row)
        self.writer.write(rows)
        changes = self.run.changes
        if len(changes) > self._changes:
            for c in changes[self._changes:]:
                self._events.write(json.dumps(pack(c, None, "change")) + "\n")
            self._changes = len(changes)
            self._events.flush()
        return bool(rows)

    def detach(self) -> None:
        """Stop following the run (rows from now on are not recorded); the queue still holds the rest."""
        self.run.history.unlisten(self._queue.append)
        if self.points is not None:
            self.run.unlisten_steps(self.points.after_step)

    def close(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        self._wake.set()
        self._thread.join()
        self.detach()
        self.flush()
        self.writer.sync()
        self.writer.close()
        self._events.close()
