"""The Store: a folder of runs, each saved whole, listed, compared and reopened."""
from __future__ import annotations

import atexit
import json
import os
import re
import secrets
import shutil
import socket
import threading
import time
import weakref
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .. import checkpoint
from . import format as fmt
from . import live, points
from .files import alive, check_name, digest, fsync_folder, inside, write_atomic, write_folder

CHECKPOINT = re.compile(r"ckpt-(\d{1,9})")
HOST = socket.gethostname()
QUIET = 30.0  # seconds without a sign of life before another machine's live run counts as crashed

# which name each run has in each store (a run saved again goes to the same place); runs recorded live
_names: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_tracked: dict[tuple[Path, str], Tracked] = {}
_tracked_lock = threading.Lock()


class Tracked:
    """A run being recorded live into a store; `close()` (or the end of a `with` block) saves it complete."""

    def __init__(self, store: Store, run, name: str, recorder: live.Recorder):
        self.store, self.run, self.name, self.recorder = store, run, name, recorder

    @property
    def points(self) -> points.Points | None:
        """Its periodic checkpoints (`written`, `skipped`: due while the writer was behind), or None."""
        return self.recorder.points

    def close(self) -> str:
        return self.store.untrack(self.run, self.name)

    def __enter__(self) -> Tracked:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Tracked({self.name!r} in {self.store.root})"


class Store:
    """Runs in folders under `root` (created if absent). See `trainlab.store` for the layout and guarantees."""

    def __init__(self, root: str | os.PathLike = "runs", create: bool = True):
        if not isinstance(root, (str, os.PathLike)) or not os.fspath(root):
            raise ValueError(f"root={root!r} rejected: a folder path (str or pathlib.Path)")
        path = Path(root).expanduser()
        if path.exists() and not path.is_dir():
            raise ValueError(f"root={os.fspath(root)!r} rejected: it is a file; a store is a folder (a run per "
                             f"subfolder): give a folder, new or existing")
        if create:
            path.mkdir(parents=True, exist_ok=True)
        self.root = path.resolve()

    def __repr__(self) -> str:
        return f"Store({str(self.root)!r})"

    # ---- where things are ---------------------------------------------------------------------
    def path(self, name: str) -> Path:
        """The folder of the run `name` (checked: a valid name, inside the root)."""
        return inside(self.root, check_name(name))

    def _existing(self, name: str) -> Path:
        folder = self.path(name)
        if not folder.is_dir():
            known = self.names()
            raise ValueError(f"name={name!r}: no such run in {self.root} (runs: "
                             f"{', '.join(known[:10]) + (' ...' if len(known) > 10 else '') or 'none'})")
        return folder

    def names(self) -> list[str]:
        """The runs' names, sorted (folders with a valid name inside the root; hidden ones are work in progress)."""
        out = []
        for entry in sorted(os.scandir(self.root), key=lambda e: e.name):
            if not entry.name.startswith(".") and fmt_name(entry.name) and entry.is_dir():
                try:
                    inside(self.root, entry.name)
                except ValueError:  # a link leading out of the root: never followed
                    continue
                out.append(entry.name)
        return out

    def _manifest(self, folder: Path) -> dict | None:
        try:
            m = json.loads((folder / fmt.MANIFEST).read_bytes())
        except (FileNotFoundError, ValueError, OSError):
            return None
        return m if isinstance(m, dict) and m.get("format") == fmt.FORMAT else None

    def _checkpoint_dir(self, folder: Path, m: dict | None) -> Path | None:
        ck = m.get("checkpoint") if m else None
        if not isinstance(ck, str) or not CHECKPOINT.fullmatch(ck):
            return None
        return inside(self.root, folder.name, ck)

    def _reader(self, folder: Path, m: dict) -> Callable[[str], bytes | None]:
        ck = self._checkpoint_dir(folder, m)

        def get(name: str) -> bytes | None:
            if ck is None or name not in fmt.FILES:
                return None
            try:
                return inside(self.root, folder.name, ck.name, name).read_bytes()
            except FileNotFoundError:
                return None
        return get

    # ---- status -----------------------------------------------------------------------------
    def status(self, name: str) -> str:
        folder = self._existing(name)
        return self._status(folder, self._manifest(folder))

    def _status(self, folder: Path, m: dict | None) -> str:
        """complete | running | crashed (recorded live, its writer gone) | incomplete (never saved whole)."""
        if m is None:
            return "incomplete"
        if m.get("status") == "complete":
            return "complete"
        if m.get("status") == "running":
            writer = m.get("writer") or {}
            if writer.get("host") == HOST and isinstance(writer.get("pid"), int):
                if writer["pid"] == os.getpid():
                    return "running" if (self.root, folder.name) in _tracked else "crashed"
                return "running" if alive(writer["pid"]) else "crashed"
            try:
                quiet = time.time() - (folder / "live").stat().st_mtime
            except OSError:
                return "crashed"
            return "running" if quiet < QUIET else "crashed"
        return "incomplete"

    # ---- saving -----------------------------------------------------------------------------
    def save(self, run, name: str | None = None, overwrite: bool = False) -> str:
        """Save `run` whole under `name` (a new name when None, or the one it was saved/loaded under here);
        returns the name. A run recorded live under `name` gets a checkpoint and goes on recording."""
        name = self._name_for(run, name, overwrite)
        tracked = _tracked.get((self.root, name))
        if tracked is not None:
            self._save_live(tracked)
            return name
        folder = self.path(name)
        same = _names.get(run, {}).get(self.root) == name
        ckpt = run.checkpoint()
        files, m = checkpoint.files(ckpt)
        self._commit(folder, files, m)
        shutil.rmtree(folder / "live", ignore_errors=True)  # a replaced live record
        points.drop(folder / "points", ckpt["step"] if same else -1)  # those of a timeline it does not continue
        _names.setdefault(run, {})[self.root] = name
        return name

    def _name_for(self, run, name: str | None, overwrite: bool) -> str:
        known = _names.get(run, {}).get(self.root)
        if name is None:
            return known if known is not None else self._new_name()
        folder = self.path(name)
        tracked = _tracked.get((self.root, name))
        if tracked is not None and tracked.run is not run:
            raise ValueError(f"name={name!r}: another run is being recorded under that name in this process")
        if tracked is None and name != known and folder.exists():
            m = self._manifest(folder)
            if self._status(folder, m) == "running":
                raise ValueError(f"name={name!r}: that run is being recorded live by process "
                                 f"{(m.get('writer') or {}).get('pid')}; choose another name")
            if not overwrite:
                raise ValueError(f"name={name!r}: a run of that name is already in {self.root}; pass overwrite=True "
                                 f"to replace it, or choose another name")
        folder.mkdir(exist_ok=True)
        return name

    def _new_name(self) -> str:
        while True:
            name = f"run-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
            try:
                self.path(name).mkdir()  # claims the name against other processes too
                return name
            except FileExistsError:
                continue

    def _commit(self, folder: Path, files: dict[str, bytes], m: dict) -> None:
        """A new checkpoint folder written whole, then the manifest pointing at it (the commit), then the old
        one removed: a kill at any moment leaves the previous checkpoint or the new one, never a mix."""
        folder.mkdir(exist_ok=True)
        taken = [int(g.group(1)) for p in folder.iterdir() if (g := CHECKPOINT.fullmatch(p.name))]
        n = max(taken, default=0) + 1
        tmp = folder / f".ckpt-{n}.{os.getpid()}.tmp"
        write_folder(tmp, files)
        os.rename(tmp, folder / f"ckpt-{n}")  # a folder renamed whole: no reader sees part of it
        fsync_folder(folder)
        write_atomic(folder / fmt.MANIFEST, fmt.dumps({**m, "checkpoint": f"ckpt-{n}"}), sync_folder=True)
        for p in folder.iterdir():
            g = CHECKPOINT.fullmatch(p.name)
            if (g and int(g.group(1)) != n) or _dead_temp(p.name):
                shutil.rmtree(p, ignore_errors=True)

    # ---- live recording -------------------------------------------------------------------------
    def track(self, run, name: str | None = None, overwrite: bool = False, every: int | None = None,
              seconds: float | None = None, keep: int = 20) -> Tracked:
        """Record `run` live under `name`: its history appended every 0.25 s as it trains (a kill -9 loses at
        most that), `store.save(run)` checkpoints it meanwhile, `store.untrack(run)` (or the Tracked's
        close(), or the end of `with store.track(run):`) saves it complete. A run saved or loaded here
        before continues its stored history.

        Periodic checkpoints, to fork from later (`store.fork(name, step=...)`): one at every multiple of
        `every` steps and/or every `seconds` seconds, at most `keep` (older ones thinned). The training thread
        only copies the state between two steps; the recorder thread writes it."""
        policy = points.policy(every, seconds, keep)  # checked before anything is written
        with _tracked_lock:
            if any(t.run is run for t in _tracked.values()):
                raise ValueError("this run is already recorded live: store.untrack(run) first")
            name = self._name_for(run, name, overwrite)
            if (self.root, name) in _tracked:
                raise ValueError(f"name={name!r}: already recorded live in this process")
            folder = self.path(name)
            m = self._manifest(folder)
            continuing = m is not None and name == _names.get(run, {}).get(self.root)  # saved or loaded here
            base = None
            if continuing:
                table = self._table(folder, m)
                base = _rows(table) if table is not None else None
            shutil.rmtree(folder / "live", ignore_errors=True)
            points.drop(folder / "points", run.steps if continuing else -1)
            recorder = live.Recorder(run, folder / "live", base,
                                     None if policy is None else points.Points(run, folder / "points", policy))
            tracked = _tracked[(self.root, name)] = Tracked(self, run, name, recorder)
        summary = fmt.summary(_light(run))
        running = {"status": "running", "writer": {"pid": os.getpid(), "host": HOST}}
        if continuing and self._checkpoint_dir(folder, m) is not None:
            write_atomic(folder / fmt.MANIFEST, fmt.dumps({**m, **running}), sync_folder=True)
        else:
            write_atomic(folder / fmt.MANIFEST, fmt.dumps({"format": fmt.FORMAT, "step": run.steps, "saved": time.time(),
                                                          "checkpoint": None, "files": {}, "summary": summary,
                                                          **running}), sync_folder=True)
        _names.setdefault(run, {})[self.root] = name
        return tracked

    def _save_live(self, t: Tracked, final: bool = False) -> None:
        folder = self.path(t.name)
        ckpt = t.run.checkpoint(then=t.recorder.detach if final else None)
        if final:
            t.recorder.close()
            table = live.read(folder / "live")
            if table is not None and "step" in table.column_names:
                table = table.filter(pc.less_equal(table["step"], ckpt["step"]))
            files, m = checkpoint.files(ckpt, table)
        else:
            t.recorder.flush()
            files, m = checkpoint.files(ckpt)
            m.update(status="running", writer={"pid": os.getpid(), "host": HOST})
        self._commit(folder, files, m)

    def untrack(self, run, name: str | None = None) -> str:
        """Stop recording `run` live: its history compacted to Parquet and the run saved complete."""
        with _tracked_lock:
            found = [k for k, t in _tracked.items() if t.run is run and k[0] == self.root
                     and (name is None or k[1] == name)]
            if not found:
                raise ValueError(f"this run is not recorded live in {self.root}")
            t = _tracked[found[0]]
        try:
            self._save_live(t, final=True)
        finally:
            t.recorder.close()  # no thread left behind, even if the save failed (the live record stays)
            with _tracked_lock:
                _tracked.pop(found[0], None)
        shutil.rmtree(self.path(t.name) / "live", ignore_errors=True)
        return t.name

    def recording(self, run) -> str | None:
        """The name `run` is recorded live under in this store (by this process), or None."""
        return next((k[1] for k, t in list(_tracked.items()) if t.run is run and k[0] == self.root), None)

    def _tracked_here(self, name: str) -> Tracked | None:
        return _tracked.get((self.root, name))

    # ---- forking ------------------------------------------------------------------------------
    def checkpoints(self, name: str) -> list[int]:
        """The steps the run can be forked from: 0 (its seed and initial settings), its periodic checkpoints
        (`track(run, every=...)`), its last saved one, and for a fork its parent's up to where it forked."""
        return sorted(self._sources(name))

    def _sources(self, name: str) -> dict[int, str]:
        """Step -> the run (this one, or an ancestor it was forked from) whose checkpoint holds that state."""
        out: dict[int, str] = {}
        first, upto, seen = name, None, set()
        while name is not None and name not in seen and len(seen) < 100:
            seen.add(name)
            folder = self._existing(name)
            tracked = self._tracked_here(name)
            if tracked is not None and tracked.points is not None:
                tracked.recorder.flush()  # the copies waiting, on disk first
            m = self._manifest(folder)
            steps = points.steps(folder / "points")
            if self._checkpoint_dir(folder, m) is not None and isinstance(m.get("step"), int):
                steps.append(m["step"])
            for step in steps:
                if upto is None or step <= upto:
                    out.setdefault(step, name)
            parent = ((m or {}).get("summary") or {}).get("settings", {}).get("parent")
            name = None
            if isinstance(parent, str) and "@" in parent:
                of, _, at = parent.rpartition("@")
                if at.isdigit() and of in self.names():
                    name, upto = of, int(at) if upto is None else min(upto, int(at))
        out.setdefault(0, first)
        return out

    def fork(self, name: str, step: int | None = None, **settings) -> Any:
        """A new Run from the stored run `name` as it was at `step` (its latest checkpoint when None), with
        `settings` applied before its next step: "what if I had lowered the lr at step 500?".

        It starts from the nearest checkpoint at or before `step` (`checkpoints(name)` lists them; `run.parent`
        = {"run", "step", "asked"} says which, and so does the event of its next row), with the settings in
        force there replayed from the run's changes, and its history up to there. Settings are checked as
        `run.set` checks them; a step outside the run, a bad setting or an unknown run raises ValueError,
        and nothing is written. The fork is not stored: `store.save(fork, ...)` or `store.track(fork, ...)`.
        `model=`, `data=`, `device=`, `probes=`, `threads=` rebuild it, as for `load`."""
        from . import fork as forking

        build = {k: settings.pop(k) for k in forking.BUILD if k in settings}
        build.setdefault("device", "auto")
        return forking.fork(self, name, step, build, settings)

    # ---- reading ------------------------------------------------------------------------------
    def checkpoint(self, name: str) -> dict[str, Any]:
        """The contents of the run's last checkpoint (what `Run.restore` takes), each file checked."""
        folder = self._existing(name)
        where = str(folder)
        m = self._manifest(folder)
        if m is None:
            raise ValueError(f"{where} is not a whole trainlab run: it has no readable manifest (a first save "
                             f"that did not finish)")
        if self._checkpoint_dir(folder, m) is None:
            raise ValueError(f"{where}: run {name!r} was recorded live but never saved ({self._status(folder, m)}): "
                             f"its history is readable (store.history), but there are no weights to continue from")
        ckpt = fmt.decode(self._reader(folder, m), m, where)
        checkpoint.consistent(ckpt, where)
        return ckpt

    def load(self, name: str, model=None, data=None, loss=None, device="auto", **kwargs):
        """The run `name` rebuilt from its last checkpoint, ready to continue exactly (as `Run.load`)."""
        from ..run import Run

        run = checkpoint.build(Run, self.checkpoint(name), str(self.path(name)), model=model, data=data, loss=loss,
                               device=device, **kwargs)
        _names.setdefault(run, {})[self.root] = name
        return run

    def list(self) -> pd.DataFrame:
        """A row per run: name, status, step, saved (time), its settings and the last value of each metric."""
        rows = []
        for name in self.names():
            folder = self.root / name
            m = self._manifest(folder)
            status = self._status(folder, m)
            row = {"name": name, "status": status, "step": None, "saved": None}
            summary = (m or {}).get("summary") or {}
            metrics = dict(summary.get("metrics") or {})
            if m is not None:
                row.update(step=m.get("step"), saved=pd.Timestamp(m.get("saved", 0), unit="s"))
            if status in ("running", "crashed"):
                table = live.read(folder / "live")
                if table is not None and table.num_rows:
                    row["step"] = table["step"][-1].as_py()
                    metrics.update(fmt.summary({**_EMPTY, "history": fmt.table_columns(table)})["metrics"])
            settings = fmt.unpack(summary.get("settings") or {}, {}, name)
            row.update(settings)
            row.update({k: v for k, v in metrics.items() if k not in row})
            rows.append(row)
        return pd.DataFrame(rows, columns=None if rows else ["name", "status", "step", "saved"])

    def _table(self, folder: Path, m: dict | None) -> pa.Table | None:
        """The run's history: the live record while it is recorded (or crashed), else its checkpoint's."""
        if (m is None or m.get("status") == "running") and (folder / "live").is_dir():
            table = live.read(folder / "live")
            if table is not None:
                return table
        if self._checkpoint_dir(folder, m) is None:
            return None
        raw = self._reader(folder, m)("history.parquet")
        entry = m["files"].get("history.parquet") or {}
        if raw is None or digest(raw) != entry.get("blake2b"):
            raise ValueError(f"{folder} is damaged: its contents do not match the checksum written with them "
                             f"(history.parquet changed after it was saved)")
        return pq.ParquetFile(pa.BufferReader(raw)).read(use_threads=False)  # 5x faster here than pq.read_table

    def history(self, names: str | list[str] | None = None) -> pd.DataFrame:
        """The histories of `names` (all runs when None) in one tidy frame: a `run` column, then the history's."""
        names = self.names() if names is None else [names] if isinstance(names, str) else list(names)
        tables = []
        for name in names:
            folder = self._existing(name)
            table = self._table(folder, self._manifest(folder))
            if table is None or not table.num_rows:
                continue
            tables.append(table.add_column(0, "run", pa.array([name] * table.num_rows, pa.string())
                                           .dictionary_encode()))
        if not tables:
            return pd.DataFrame({"run": pd.Series(dtype=str), "step": pd.Series(dtype="int64")})
        return pa.concat_tables(tables, promote_options="permissive").to_pandas()

    def events(self, name: str) -> list[dict]:
        """Every mid-run change of the run by step: history events and `run.set` changes."""
        folder = self._existing(name)
        m = self._manifest(folder)
        if self._status(folder, m) in ("running", "crashed") and (folder / "live").is_dir():
            table = live.read(folder / "live")
            columns = fmt.table_columns(table) if table is not None else {}
            changes = [fmt.unpack(c, {}, name) for c in live.read_changes(folder / "live")]
            return fmt.events(columns, changes)
        ck = self._reader(folder, m)("events.json") if m else None
        return fmt.unpack(json.loads(ck), {}, name) if ck else []

    # ---- deleting -----------------------------------------------------------------------------
    def delete(self, name: str) -> None:
        """Remove the run `name` (refused while it is recorded live)."""
        folder = self._existing(name)
        if (self.root, name) in _tracked:
            raise ValueError(f"name={name!r}: recorded live in this process; store.untrack(run) first")
        m = self._manifest(folder)
        if self._status(folder, m) == "running":
            raise ValueError(f"name={name!r}: being recorded live by process {(m.get('writer') or {}).get('pid')}")
        trash = self.root / f".deleted-{name}.{os.getpid()}.{secrets.token_hex(3)}.tmp"
        os.rename(folder, trash)  # gone from listings at once, however long the removal takes
        shutil.rmtree(trash, ignore_errors=True)
        for names in list(_names.values()):
            if names.get(self.root) == name:
                del names[self.root]


def fmt_name(name: str) -> bool:
    try:
        check_name(name)
        return True
    except ValueError:
        return False


def _dead_temp(name: str) -> bool:
    """A temporary checkpoint folder (.ckpt-N.<pid>.tmp) whose writer is gone."""
    g = re.fullmatch(r"\.ckpt-\d+\.(\d+)\.tmp", name)
    return bool(g) and int(g.group(1)) != os.getpid() and not alive(int(g.group(1)))


_EMPTY = {"model_spec": None, "data_spec": None, "settings": {}, "optimizer_hparams": {}, "seed": None}


def _light(run) -> dict:
    """What a listing shows of a run before its first checkpoint."""
    return {"model_spec": list(run.model_spec) if run.model_spec else None,
            "data_spec": list(run.data.spec) if run.data.spec else None,
            "settings": {k: getattr(run, k) for k in run.SETTABLE}, "optimizer_hparams": run.optimizer_settings(),
            "seed": run.seed, "schedule": list(run.schedule), "pruning": run.pruning, "parent": run.parent,
            "history": {}}


def _rows(table: pa.Table) -> list[dict]:
    return [{k: v for k, v in r.items() if not fmt._missing(v)} for r in table.to_pylist()]


def recording(run) -> str | None:
    """The name `run` is recorded live under in any store of this process, or None (a fork's `parent`)."""
    return next((k[1] for k, t in list(_tracked.items()) if t.run is run), None)


@atexit.register
def _close_all() -> None:
    """A script that ends while recording: its runs saved complete, not left looking crashed."""
    for t in list(_tracked.values()):
        try:
            t.close()
        except Exception:
            pass
