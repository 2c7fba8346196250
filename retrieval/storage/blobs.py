"""Image bytes that arrive with a product (a `data:` URL over HTTP) are stored content-addressed
in the index directory (`blobs/ab/abcdef....png`), so thumbnails, re-embedding and `check` read
them like any indexed file and identical bytes are stored once.

A fetched URL also leaves a small record (`fetched/ab/<sha256 of the URL>.json`: the blob it gave,
its ETag and Last-Modified, when it was fetched), so a re-import can ask the server whether the
URL changed instead of downloading it again (ingest/remote.py). One file per URL, replaced
atomically, so concurrent writers never see half a record and need no lock; a lost or unreadable
record only costs one full fetch."""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import ImageDecodeError, ImageTooLargeError
from ..files import write_atomic

BLOBS = "blobs"
URL_RECORDS = "fetched"
DATA_PREFIX = "data:"


def is_data_url(source: str) -> bool:
    return source[:5].lower() == DATA_PREFIX


def decode_data_url(source: str, max_bytes: int) -> bytes:
    """The bytes of a `data:image/...;base64,...` URL.

    Raises:
        ImageDecodeError: not a base64 image data URL.
        ImageTooLargeError: more than `max_bytes` bytes.
    """
    header, _, payload = source.partition(",")
    media = header[len(DATA_PREFIX) :].lower()
    if not media.startswith("image/") or not media.endswith(";base64"):
        raise ImageDecodeError("data: URL", "not-an-image", "use data:image/<type>;base64,<bytes>")
    if len(payload) * 3 // 4 > max_bytes:
        raise ImageTooLargeError(f"a data: URL image is over {max_bytes} bytes")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as err:
        raise ImageDecodeError("data: URL", "bad-base64", str(err)) from err


def image_format(data: bytes, where: str) -> str:
    """The file extension of image bytes that Pillow can decode.

    Raises:
        ImageDecodeError: the bytes are not a decodable image.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            kind = (image.format or "img").lower()
            image.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ImageDecodeError(where, "not-an-image", str(err)) from err
    return "jpg" if kind == "jpeg" else kind


def store_blob(directory: Path, data: bytes, extension: str) -> Path:
    """Write `data` under its sha256 in `directory/blobs` (once); its path."""
    digest = hashlib.sha256(data).hexdigest()
    path = blob_path(directory, f"{digest}.{extension}")
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, data)
    return path


def blob_path(directory: Path, name: str) -> Path:
    """Where the blob file `name` (`<sha256>.<ext>`) lives, as store_blob writes it."""
    return directory / BLOBS / name[:2] / name


# A stored image no product uses is deleted by `mmsearch check --repair` only once it is this
# old: a write stores its images before it takes the writer lock and commits, so a younger one
# may belong to a write in flight.
UNUSED_BLOB_GRACE_S = 3600.0


def unused_blobs(directory: Path, used: set[str]) -> list[Path]:
    """Stored image files under `directory/blobs` whose names are not in `used` (the blob
    names the catalog's items and product rows refer to: Catalog.blob_names)."""
    root = directory / BLOBS
    if not root.is_dir():
        return []
    return sorted(
        path
        for path in root.glob("*/*")
        if path.is_file() and not path.name.startswith(".") and path.name not in used
    )


def drop_unused_blobs(directory: Path, used: set[str], now: float) -> tuple[int, int]:
    """Delete the unused blobs older than UNUSED_BLOB_GRACE_S, and the URL records whose blob
    is gone (a re-import of such a URL fetches it in full, as without a record); returns
    (blobs deleted, bytes freed). Call it under the writer lock."""
    deleted = freed = 0
    for path in unused_blobs(directory, used):
        try:
            info = path.stat()
            if now - info.st_mtime < UNUSED_BLOB_GRACE_S:
                continue
            path.unlink()
        except FileNotFoundError:
            continue
        deleted, freed = deleted + 1, freed + info.st_size
    records = directory / URL_RECORDS
    for record in records.glob("*/*.json") if records.is_dir() else ():
        try:
            blob = json.loads(record.read_bytes())["blob"]
        except (OSError, ValueError, KeyError, TypeError):
            continue  # unreadable: read_url_record ignores it, a refetch replaces it
        if not blob_path(directory, str(blob)).is_file():
            record.unlink(missing_ok=True)
    return deleted, freed


@dataclass(frozen=True)
class UrlRecord:
    """What a URL gave when last fetched: the blob's file name and the server's validators."""

    url: str
    blob: str
    etag: str | None
    last_modified: str | None
    fetched_at: float

    @property
    def has_validators(self) -> bool:
        return bool(self.etag or self.last_modified)


def _record_path(directory: Path, url: str) -> Path:
    digest = hashlib.sha256(url.encode("utf-8", "surrogatepass")).hexdigest()
    return directory / URL_RECORDS / digest[:2] / f"{digest}.json"


def read_url_record(directory: Path, url: str) -> UrlRecord | None:
    """The record of `url` whose blob is still there, else None."""
    try:
        fields = json.loads(_record_path(directory, url).read_bytes())
        record = UrlRecord(**fields)
    except (OSError, ValueError, TypeError):
        return None
    if record.url != url or not blob_path(directory, record.blob).is_file():
        return None
    return record


def write_url_record(directory: Path, record: UrlRecord) -> None:
    """Store `record` (replacing the URL's previous one)."""
    path = _record_path(directory, record.url)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(asdict(record)).encode())


__all__ = [
    "BLOBS",
    "URL_RECORDS",
    "UrlRecord",
    "UNUSED_BLOB_GRACE_S",
    "blob_path",
    "decode_data_url",
    "drop_unused_blobs",
    "image_format",
    "is_data_url",
    "read_url_record",
    "store_blob",
    "unused_blobs",
    "write_url_record",
]
