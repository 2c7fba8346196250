"""What a failed SQLite call on an index catalog means, said as an MmsearchError.

Every `sqlite3.Error` used to read "the index catalog is damaged", though most are not damage:
a full disk surfaces as SQLITE_FULL or, as often, as SQLITE_IOERR (on a full tmpfs SQLite cannot
grow the WAL index file, `catalog.sqlite-shm`, and says "disk I/O error"); another process may
hold the catalog's write lock; the disk may fail. The primary result code (the low byte of
`sqlite_errorcode`, Python 3.11+) tells them apart: full -> DiskFullError (exit 74), I/O, open
and permission failures -> StorageIOError (74), locked -> IndexBusyError (75), corrupt or not a
database -> IndexCorruptError with `mmsearch check` (1). Standard library only."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

from .errors import DiskFullError, IndexBusyError, IndexCorruptError, MmsearchError, StorageIOError

# Below this much free space an I/O error is taken for a full disk: SQLite grows the WAL index
# 32 KB at a time and the WAL a page at a time, so a failure with less than this left is the
# disk filling up, and with more it is something else.
FULL_DISK_BYTES = 1 << 20
_MB = 1 << 20
_ACCESS = (sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_READONLY, sqlite3.SQLITE_PERM)


def classify_sqlite_error(err: sqlite3.Error, directory: Path | None = None) -> MmsearchError:
    """The MmsearchError that says what `err`, raised by SQLite on the catalog of the index in
    `directory` (None when the caller does not know it), means and how to fix it; the caller
    raises it `from err`. Errors SQLite gives no code (misuse) read as a failed catalog."""
    code = getattr(err, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None
    detail = f"{err}, {getattr(err, 'sqlite_errorname', None) or type(err).__name__}"
    where = f" in {directory}" if directory is not None else ""
    check = f"mmsearch check --index {directory if directory is not None else 'DIR'}"
    free = _free_bytes(directory)
    disk_full = free is not None and free < FULL_DISK_BYTES
    if primary == sqlite3.SQLITE_FULL or (primary == sqlite3.SQLITE_IOERR and disk_full):
        return DiskFullError(_disk_full_message(directory, detail, free))
    if primary == sqlite3.SQLITE_IOERR:
        room = f", though it has {free / _MB:.1f} MB free" if free is not None else ""
        return StorageIOError(
            f"I/O error on the index catalog{where} ({detail}): the disk or filesystem failed a "
            f"read or write{room}. Check free space and the disk (`dmesg`, a network mount that "
            f"went away) and run again; then `{check}` tells whether the index is intact"
        )
    if primary in _ACCESS:
        return StorageIOError(
            f"cannot open or write the index catalog{where} ({detail}): check that the "
            "directory exists and that you may read and write it (permissions, a read-only "
            "mount), then run again"
        )
    if primary in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
        return IndexBusyError(
            f"the index catalog{where} is locked by another process ({detail}); wait for it to "
            "finish (or stop it) and run again"
        )
    if primary in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
        return IndexCorruptError(
            f"the index catalog{where} is damaged ({detail}); run `{check}` for details and the fix"
        )
    return IndexCorruptError(
        f"SQLite failed on the index catalog{where} ({detail}); run `{check}` to find out "
        "whether it is damaged"
    )


def _free_bytes(directory: Path | None) -> int | None:
    if directory is None:
        return None
    try:
        return shutil.disk_usage(directory).free
    except OSError:  # the directory is gone, or not ours to look at
        return None


def _disk_full_message(directory: Path | None, detail: str, free: int | None) -> str:
    if directory is None or free is None:
        return (
            f"the disk holding the index catalog is full ({detail}), or SQLite's temporary "
            "directory ($SQLITE_TMPDIR, else $TMPDIR or /tmp) is; free some space there and "
            "run again"
        )
    if free >= FULL_DISK_BYTES:  # then SQLite's temporary files filled another disk
        return (
            f"SQLite ran out of disk space ({detail}) though {directory} has "
            f"{free / _MB:.1f} MB free: its temporary files go to $SQLITE_TMPDIR, else $TMPDIR "
            "or /tmp. Free space there, or point SQLITE_TMPDIR at a disk with room, and run again"
        )
    return (
        f"not enough disk space in {directory}: SQLite could not write the index catalog "
        f"({detail}); {free / _MB:.1f} MB are free. Free some space there, or index into a "
        "directory on another disk with --index DIR, and run again"
    )


__all__ = ["FULL_DISK_BYTES", "classify_sqlite_error"]
