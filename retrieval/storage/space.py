"""Disk space for an index run: an estimate checked before any work, and the translation of a
full disk met anyway (another writer filled it, the estimate was low) into one clear error.

Either way nothing is lost: the previous generation stays on disk and current, because the
items and the generation flip only in the run's final SQLite COMMIT (see store.py)."""

from __future__ import annotations

import errno
import shutil
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import DiskFullError, MmsearchError

# Per stored vector beyond its float16 bytes: the key (~70 bytes), the row and b-tree overhead,
# rounded up from catalogs measured at 1k-100k vectors.
VECTOR_ROW_OVERHEAD = 200
# Per item row: path or text, key, size, mtime and the index entries.
ITEM_ROW_BYTES = 400
# Per vector in a flat faiss file: dim float32 plus its int64 id in the id map.
FAISS_ID_BYTES = 8
# SQLite writes each changed page to the WAL first, then checkpoints it into the database.
WAL_FACTOR = 2
# Headroom for SQLite's journal headers, the manifest and the filesystem's own rounding.
MARGIN_BYTES = 1 << 20
_MB = 1 << 20


def estimate_run_bytes(*, dim: int, new_vectors: int, changed_items: int, indexed: int) -> int:
    """Bytes an index run may need on top of what the index holds: the new vectors and item
    rows, and a next-generation faiss file for `indexed` vectors beside the current one."""
    catalog = new_vectors * (dim * 2 + VECTOR_ROW_OVERHEAD) + changed_items * ITEM_ROW_BYTES
    faiss = indexed * (dim * 4 + FAISS_ID_BYTES) if changed_items else 0
    return WAL_FACTOR * catalog + faiss + MARGIN_BYTES


def _message(directory: Path, needed: int, free: int) -> str:
    return (
        f"not enough disk space in {directory}: this run needs about {needed / _MB:.1f} MB, "
        f"{free / _MB:.1f} MB are free. Free at least {max(needed - free, 0) / _MB:.1f} MB "
        "there, or index into a directory on another disk with --index DIR; the previous "
        "index is unchanged and still usable"
    )


def check_free_space(directory: Path, needed: int) -> None:
    """Raise DiskFullError before any work when `directory`'s filesystem has less than `needed`."""
    free = shutil.disk_usage(directory).free
    if free < needed:
        raise DiskFullError(_message(directory, needed, free))


def is_disk_full(err: BaseException) -> bool:
    """True when `err` (or what caused it) is the disk filling up."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if isinstance(seen, sqlite3.OperationalError) and "disk is full" in str(seen):
            return True
        if "No space left on device" in str(seen):  # faiss reports errno as text
            return True
        seen = seen.__cause__ or seen.__context__
    return False


@contextmanager
def disk_space_guard(directory: Path, needed: int) -> Iterator[None]:
    """Turn a full disk met inside the block into DiskFullError naming `directory` and the
    space needed; other errors pass through unchanged."""
    try:
        yield
    except DiskFullError:
        raise
    except (OSError, sqlite3.Error, RuntimeError, MmsearchError) as err:
        free = shutil.disk_usage(directory).free
        # faiss's fwrite failure carries no errno: a write that failed with almost nothing
        # left free is taken for what it is.
        if is_disk_full(err) or (isinstance(err, MmsearchError) and free < needed):
            raise DiskFullError(
                _message(directory, max(needed, free + MARGIN_BYTES), free)
            ) from err
        raise
