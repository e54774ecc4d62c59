"""Atomic file writes: a reader sees the old file or the new one, never half of one. Also the
checks and locks around them: an output folder that cannot be written is found before any work,
and processes sharing one sqlite store set it up one at a time."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import polars as pl


_swept: set[Path] = set()


def temp_suffix() -> str:
    """The suffix of this process's temp files and folders: `.<pid>.tmp`, so that a sweep can
    tell the leftovers of a killed process from the work in progress of a live one."""
    return f".{os.getpid()}.tmp"


def sweep_stale(folder: Path) -> int:
    """Remove the temp files and folders (`.*.<pid>.tmp`) that processes no longer alive left in
    `folder` (e.g. killed with SIGKILL mid-write); returns how many. Runs once per folder and process."""
    folder = Path(folder)
    if folder in _swept or not folder.is_dir():
        return 0
    _swept.add(folder)
    removed = 0
    for entry in folder.glob(".*.tmp"):
        pid = entry.name.rsplit(".", 2)[-2]
        if not pid.isdigit() or process_alive(int(pid)):
            continue
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed += 1
    return removed


def process_alive(pid: int) -> bool:
    """Whether a process with this pid runs on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def write_atomic(path: Path, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp)` on a temp file in `path`'s folder, then rename it over `path`.

    The temp file is removed if `write` fails, so a failure leaves no partial file behind; the
    temp file of a process killed mid-write is swept by the next process writing to that folder.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(path.parent)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=temp_suffix(), dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        # mkstemp creates the file 0600; a written output gets the mode any new file would get.
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_text(path: Path, text: str) -> Path:
    return write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json(path: Path, value: Any) -> Path:
    return write_text(path, json.dumps(value, indent=2, sort_keys=True) + "\n")


def write_parquet(path: Path, frame: pl.DataFrame) -> Path:
    # Statistics off and a fixed compression keep the bytes identical for identical frames.
    return write_atomic(path, lambda tmp: frame.write_parquet(tmp, compression="zstd", statistics=False))


class OutputError(OSError):
    """An output folder cannot be created or written (read-only, not a folder, no space)."""


def check_writable(folder: Path, what: str = "output folder") -> Path:
    """Create `folder` if needed and prove a file can be written in it, before any work starts.

    A probe file is written, flushed to disk and removed, so a read-only folder, a path through
    a regular file, or a full disk stops the job at once rather than after hours of work.

    Raises:
        OutputError: naming `what`, the folder and the reason.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=".write-check.", suffix=temp_suffix(), dir=folder)
        try:
            os.write(fd, b"fuserank")
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(name)
    except OSError as err:
        raise OutputError(f"{what} {folder} cannot be written: {err.strerror or err}") from err
    return folder


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock (flock) on `path`, created if missing, for the block.

    Used where processes sharing a store must not race, e.g. two jobs creating the tables of one
    new sqlite database. The lock is released when the block ends or the process dies.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
