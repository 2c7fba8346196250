"""File helpers shared by the store, the faiss layer, ingestion and the model loader: one
streamed sha256 and one crash-safe write (temp file beside the target, fsync of the file, rename,
fsync of the directory). Standard library only."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

# 1 MiB reads: large enough that hashing a photo is a handful of syscalls, small enough to
# keep memory flat on multi-GB checkpoints.
HASH_CHUNK = 1 << 20


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, streamed."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(HASH_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fsync_dir(directory: Path) -> None:
    """Make a rename inside `directory` durable; best effort where directories cannot be opened."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(path: Path, mode: int = 0o644) -> Iterator[Path]:
    """Yield a temp path beside `path` to write; on success fsync it, rename it over `path` and
    fsync the directory. On failure the temp file is removed and `path` is unchanged. Renaming,
    never rewriting in place, keeps a reader that has the old file memory-mapped safe."""
    path = Path(path)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)  # mkstemp makes 0600; other readers must open it
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_atomic(path: Path, data: bytes) -> None:
    """Replace `path` with `data` crash-safely (see atomic_path)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
