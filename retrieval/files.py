"""File helpers shared by the store, the faiss layer, ingestion and the model loader: one
streamed sha256 and one crash-safe write (temp file beside the target, fsync of the file, rename,
fsync of the directory). Standard library only."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import stat
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

# 1 MiB reads: large enough that hashing a photo is a handful of syscalls, small enough to
# keep memory flat on multi-GB checkpoints.
HASH_CHUNK = 1 << 20


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, streamed."""
    digest = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO must not block the open
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, "not a regular file (a FIFO or a device?)", str(path))
    with os.fdopen(fd, "rb") as handle:
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


DEFAULT_HASH_CACHE = Path("~/.cache/mmsearch/hashes.json")


def cached_sha256(path: str | Path, cache_file: Path | None = None) -> str:
    """file_sha256 of a large file (model weights), remembered by (real path, size, mtime_ns,
    inode) in `cache_file` (default ~/.cache/mmsearch/hashes.json; the CLI passes
    $MMSEARCH_HASH_CACHE), so a re-run that names the same weights again does not re-read
    hundreds of MB. The same size+mtime trust the index gives image files; a file rewritten in
    place with another mtime is hashed again."""
    real = os.path.realpath(path)
    stamp = _stamp(real)
    entry = _read_hash_cache(cache_file).get(real)
    if isinstance(entry, dict) and entry.get("stamp") == stamp:
        return str(entry["sha256"])
    digest = file_sha256(real)
    remember_sha256(real, digest, cache_file)
    return digest


def remember_sha256(path: str | Path, digest: str, cache_file: Path | None = None) -> None:
    """Record `digest` as the sha256 of `path` as it is now, for cached_sha256: for a file just
    hashed while it was written, or renamed since (a rename keeps the stamp but not the path)."""
    real = os.path.realpath(path)
    cache_file = (cache_file or DEFAULT_HASH_CACHE).expanduser()
    entries = _read_hash_cache(cache_file)
    entries[real] = {"stamp": _stamp(real), "sha256": digest}
    with contextlib.suppress(OSError):  # a read-only home only costs the next run a re-hash
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(cache_file, json.dumps(entries).encode())


def _stamp(real: str) -> list[int]:
    stat = os.stat(real)
    return [stat.st_size, stat.st_mtime_ns, stat.st_ino]


def _read_hash_cache(cache_file: Path | None) -> dict:
    try:
        entries = json.loads((cache_file or DEFAULT_HASH_CACHE).expanduser().read_text())
    except (OSError, ValueError):
        return {}
    return entries if isinstance(entries, dict) else {}


# -- file identity ------------------------------------------------------------------------------
# One rule names every indexed file, used by every writer (folder sync, Ray, catalogs, eval):
#   1. a root (a PATH given to `mmsearch index`) is its real path: `..`, `.`, repeated and
#      trailing slashes and symlinks in its spelling all fold, so every spelling is one root;
#   2. a file found under a root is `<real root>/<path as walked>`;
#   3. inside a root, a symlink whose target lies in the same root is not followed (the target
#      is named once, by its own name); one whose target lies outside is followed and names its
#      files through the link, like a copy;
#   4. a sync of a root owns exactly the items whose identity lies under its real root;
#   5. a name that is not valid UTF-8 cannot be stored (SQLite, JSON and the page need text): it
#      is skipped and shown with \xNN escapes, never by a lossy name another file may have.


def canonical_root(path: str | Path) -> Path:
    """The identity of a root or of a file named directly: its real path (rule 1)."""
    return Path(os.path.realpath(path))


def is_within(path: str, root: str) -> bool:
    """True when `path` is `root` or lies below it (both canonical strings)."""
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def is_within_any(path: str, roots: Iterable[str]) -> bool:
    """True when `path` is one of `roots` or lies below one (all canonical strings)."""
    return any(is_within(path, root) for root in roots)


def is_storable_name(path: str) -> bool:
    """False for a name Python decoded with lone surrogates (bytes that are not UTF-8)."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def display_name(path: str) -> str:
    """A printable form of any file name: undecodable bytes as \\xNN, so two different names
    never print the same (a lossy '?' would collide with a real '?')."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")
