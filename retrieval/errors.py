"""The mmsearch error tree. `str(err)` is shown to users verbatim, so every message says what
failed, where, and the flag or command that fixes it. The CLI maps these to exit codes and the
HTTP app to statuses, each in one table."""

from __future__ import annotations


class MmsearchError(Exception):
    """Base class; str(err) is shown to users verbatim."""


class IndexNotFoundError(MmsearchError):
    """No index exists at the given directory."""


class IndexMismatchError(MmsearchError):
    """The index was built by another model or an unknown format version."""


class IndexCorruptError(MmsearchError):
    """The index directory exists but cannot be read."""


class IndexBusyError(MmsearchError):
    """Another process is writing to the same index."""


class ModelUnavailableError(MmsearchError):
    """Weights are not cached locally and cannot be downloaded, or the model name is unknown."""


class InvalidQueryError(MmsearchError):
    """A query is empty, out of range, or otherwise unusable."""


class ImageDecodeError(MmsearchError):
    """An image file cannot be decoded; `reason` is a short machine-friendly label."""

    def __init__(self, path: str, reason: str, detail: str = "") -> None:
        self.path = path
        self.reason = reason
        self.detail = detail
        super().__init__(f"{path}: {reason}" + (f" ({detail})" if detail else ""))


class InputFileError(MmsearchError):
    """A user-supplied file (texts, catalog, query image) is missing or malformed."""


class ImageTooLargeError(MmsearchError):
    """An uploaded image is over the byte or megapixel cap."""


class DiskFullError(MmsearchError):
    """The index directory's filesystem has too little free space for the run."""


class StorageIOError(MmsearchError):
    """Reading or writing the index failed below mmsearch: an I/O error from the disk or
    filesystem, or a directory that cannot be opened or written."""


class ItemNotFoundError(MmsearchError):
    """A query names an item id that the index does not hold."""
