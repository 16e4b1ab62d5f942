"""Files that are whole or absent: atomic writes, checked names and paths inside a root, dead writers' leftovers."""
from __future__ import annotations

import glob
import hashlib
import os
import re
import shutil
import tempfile
from pathlib import Path

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.=+,@-]{0,127}")


def check_name(name, what: str = "name") -> str:
    """A run's name: letters, digits and `_.=+,@-`, not starting with a dot (hidden) or holding `..` or a slash."""
    if not isinstance(name, str) or not NAME.fullmatch(name) or ".." in name:
        raise ValueError(f"{what}={name!r} rejected: 1-128 letters, digits or _ . = + , @ -, starting with a letter "
                         f"or digit, without '..' or a path separator")
    return name


def inside(root: Path, *parts: str) -> Path:
    """root/parts, resolved (symbolic links followed): refused unless it stays inside root."""
    path = root.joinpath(*parts).resolve()
    if path != root and root not in path.parents:
        raise ValueError(f"{'/'.join(parts)!r} leads outside the store's root {root}: refused")
    return path


def digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def write_atomic(path: str | os.PathLike, data: bytes, sync_folder: bool = False) -> None:
    """`data` to `path`: a reader sees the old file or the new one, never half (temp file, fsync, rename)."""
    folder, base = os.path.split(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".trainlab-{base}.{os.getpid()}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    if sync_folder:
        fsync_folder(folder)


def fsync_folder(folder: str | os.PathLike) -> None:
    """The folder's entries (a rename) on disk too; not every system can open a folder for that."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stale(path: str | os.PathLike) -> list[str]:
    """Temporary files of earlier writes to `path` whose writer is gone (killed mid-write)."""
    folder, base = os.path.split(os.path.abspath(path))
    out = []
    for tmp in glob.glob(os.path.join(folder, glob.escape(f".trainlab-{base}.") + "*.tmp")):
        try:
            pid = int(os.path.basename(tmp)[len(f".trainlab-{base}."):].split(".")[0])
        except ValueError:
            continue
        if pid != os.getpid() and not alive(pid):
            out.append(tmp)
    return out


def remove_stale(path: str | os.PathLike) -> None:
    for tmp in stale(path):
        try:
            os.unlink(tmp)
        except OSError:
            pass


def write_folder(tmp: Path, files: dict[str, bytes]) -> None:
    """`files` written into a fresh folder `tmp` (any leftover there removed first), each file and the folder
    synced: ready to be renamed whole into place, so no reader ever sees part of it."""
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for name, data in files.items():
        with open(tmp / name, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    fsync_folder(tmp)
