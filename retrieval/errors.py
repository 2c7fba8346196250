"""The mmsearch error tree. `str(err)` is shown to users verbatim, so every message says what
failed, where, and the flag or command that fixes it. Each error carries what the front ends
make of it, so the CLI's exit codes and the HTTP statuses cannot drift apart: `exit_code`
(2 is what typer uses for usage errors, so input problems share it; 74 EX_IOERR; 75
EX_TEMPFAIL, try again later) and `http_status` with a short machine-readable `http_code`."""

from __future__ import annotations


class MmsearchError(Exception):
    """Base class; str(err) is shown to users verbatim."""

    exit_code: int = 1
    http_status: int = 500
    http_code: str = "internal"


class IndexNotFoundError(MmsearchError):
    """No index exists at the given directory."""

    http_status, http_code = 503, "index_unavailable"


class IndexMismatchError(MmsearchError):
    """The index was built by another model or an unknown format version."""

    exit_code = 2
    http_status, http_code = 503, "index_unavailable"


class IndexCorruptError(MmsearchError):
    """The index directory exists but cannot be read."""

    http_status, http_code = 503, "index_unavailable"


class IndexBusyError(MmsearchError):
    """Another process is writing to the same index."""

    exit_code = 75
    http_status, http_code = 503, "index_busy"


class ModelUnavailableError(MmsearchError):
    """Weights are not cached locally and cannot be downloaded, or the model name is unknown."""

    exit_code = 2
    http_status, http_code = 503, "model_unavailable"


class InvalidQueryError(MmsearchError):
    """A query is empty, out of range, or otherwise unusable."""

    exit_code = 2
    http_status, http_code = 422, "invalid_query"


class InvalidOptionError(InvalidQueryError):
    """A setting (a command-line option, an environment variable, a server setting) is out of
    range or unknown: the operator's to fix, not a query's. (A subclass, so code that refuses
    any bad input with InvalidQueryError still catches it.)"""

    exit_code = 2
    http_status, http_code = 500, "invalid_setting"


class ImageDecodeError(MmsearchError):
    """An image file cannot be decoded; `reason` is a short machine-friendly label."""

    exit_code = 2
    http_status, http_code = 422, "image_decode"

    def __init__(self, path: str, reason: str, detail: str = "") -> None:
        self.path = path
        self.reason = reason
        self.detail = detail
        super().__init__(f"{path}: {reason}" + (f" ({detail})" if detail else ""))


class InputFileError(MmsearchError):
    """A user-supplied file (texts, catalog, query image) is missing or malformed."""

    exit_code = 2
    http_status, http_code = 422, "invalid_input"


class ImageTooLargeError(MmsearchError):
    """An uploaded image is over the byte or megapixel cap."""

    exit_code = 2
    http_status, http_code = 413, "too_large"


class DiskFullError(MmsearchError):
    """The index directory's filesystem has too little free space for the run."""

    exit_code = 74
    http_status, http_code = 507, "insufficient_storage"


class StorageIOError(MmsearchError):
    """Reading or writing the index failed below mmsearch: an I/O error from the disk or
    filesystem, or a directory that cannot be opened or written."""

    exit_code = 74
    http_status, http_code = 503, "storage_error"


class ItemNotFoundError(MmsearchError):
    """A query names an item id that the index does not hold."""

    exit_code = 2
    http_status, http_code = 404, "not_found"
