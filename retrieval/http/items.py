"""Serving indexed items: their stored fields, the indexed image file, and cached-size JPEG
thumbnails. Only paths read from the catalog are ever served, and only their indexed bytes,
labelled with the type their bytes decode as (never the file name's)."""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass
from stat import S_ISREG

from starlette.exceptions import HTTPException

from ..images import load_image, open_header
from ..search.service import SearchService
from ..types import IMAGES
from .models import ItemOut

# JPEG quality 85 is visually clean at thumbnail sizes and about a third the bytes of 95.
THUMBNAIL_QUALITY = 85
# The formats load_image reads (Pillow's names; MPO is a multi-picture JPEG) as MIME types.
MEDIA_TYPES = {
    "JPEG": "image/jpeg",
    "MPO": "image/jpeg",
    "PNG": "image/png",
    "WEBP": "image/webp",
    "GIF": "image/gif",
    "BMP": "image/bmp",
    "TIFF": "image/tiff",
}
# Served files: a catalog may name an image `promo.html` or `banner.svg` (a PNG carrying markup
# in a text chunk); labelled by content, never sniffed, and sandboxed should a browser still
# render one as a document, they run no script in this origin.
FILE_HEADERS = {
    "Cache-Control": "private, max-age=3600",
    "Content-Security-Policy": "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; "
    "sandbox",
    "X-Content-Type-Options": "nosniff",
}
# What a cached thumbnail is valid for: (device, inode, size, mtime_ns, ctime_ns) of its file.
# ctime changes on every write, rename or utime and cannot be set back (short of the clock),
# so a file swapped or rewritten with its size and mtime restored no longer matches.
FileIdentity = tuple[int, int, int, int, int]
ThumbnailKey = tuple[int, int, FileIdentity]


@dataclass(frozen=True)
class IndexedFile:
    """An indexed image's verified bytes, and the identity of the file they were read from."""

    path: str
    data: bytes
    identity: FileIdentity


def file_identity(stat: os.stat_result) -> FileIdentity:
    return stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns


def media_type(data: bytes) -> str:
    """The MIME type of an image file's bytes by their decoded format."""
    try:
        with open_header(io.BytesIO(data)) as image:
            kind = image.format
    except Exception:  # noqa: BLE001 (indexed bytes decoded once; if not, claim nothing)
        kind = None
    return MEDIA_TYPES.get(kind or "", "application/octet-stream")


def thumbnail_megapixels(data: bytes, size: int) -> float:
    """Megapixels make_thumbnail(data, size) decodes (a JPEG at reduced scale), from the
    header; 0 when the bytes no longer open (make_thumbnail then says why)."""
    try:
        with open_header(io.BytesIO(data)) as image:
            if image.format in ("JPEG", "MPO"):
                image.draft(None, (size, size))  # as load_image(reduce_to=size) will
            width, height = image.size
    except Exception:  # noqa: BLE001
        return 0.0
    return width * height / 1e6


def make_thumbnail(data: bytes, size: int) -> bytes:
    """A JPEG of the image file `data`, scaled to fit in size x size (aspect kept)."""
    image = load_image(data, reduce_to=size)
    image.thumbnail((size, size))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=THUMBNAIL_QUALITY, optimize=True)
    return buffer.getvalue()


def item_out(service: SearchService, item_id: int) -> ItemOut:
    """An item by id, or 404."""
    item = service.require_item(item_id)
    is_image = item.collection == IMAGES
    return ItemOut(
        id=item.id,
        collection=item.collection,  # type: ignore[arg-type]
        path=item.path,
        text=item.text,
        product_id=item.product_id,
        metadata=item.metadata,
        image_url=f"/items/{item.id}/image" if is_image else None,
    )


def thumbnail_key(service: SearchService, item_id: int, size: int) -> ThumbnailKey:
    """The thumbnail cache key of an indexed image as it is on disk now, or 404 when it is
    gone or no longer a regular file of the indexed size and mtime."""
    item = service.get_item(item_id)
    if item is None or item.collection != IMAGES or not item.path:
        raise HTTPException(404, f"no indexed image with id {item_id}")
    try:
        stat = os.stat(item.path)
    except OSError:
        raise HTTPException(404, f"image {item_id} is no longer on disk; re-index") from None
    indexed = (item.size, item.mtime_ns) if item.size is not None else None
    if not S_ISREG(stat.st_mode) or indexed not in (None, (stat.st_size, stat.st_mtime_ns)):
        raise HTTPException(404, f"image {item_id} changed on disk since indexing; re-index")
    return item.id, size, file_identity(stat)


def indexed_file(service: SearchService, item_id: int) -> IndexedFile:
    """The path and bytes of an indexed image, or 404. Only paths read from the catalog are
    ever opened, and the bytes are served only when they are the ones indexed: a regular file
    (never a FIFO or device swapped in), of the indexed size, with the indexed SHA-256. Reading
    once and checking what was read leaves no gap between check and use for a swapped link."""
    item = service.get_item(item_id)
    if item is None or item.collection != IMAGES or not item.path:
        raise HTTPException(404, f"no indexed image with id {item_id}")
    gone = HTTPException(404, f"image {item_id} is no longer on disk; re-index")
    changed = HTTPException(404, f"image {item_id} changed on disk since indexing; re-index")
    try:
        # O_NONBLOCK: opening a FIFO put in the file's place must not wait for a writer.
        fd = os.open(item.path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        raise gone from None
    try:
        stat = os.fstat(fd)
        if not S_ISREG(stat.st_mode) or (item.size is not None and stat.st_size != item.size):
            raise changed
        with os.fdopen(fd, "rb", closefd=False) as stream:
            data = stream.read(stat.st_size + 1)
    finally:
        os.close(fd)
    expected = item.key.removeprefix("img:") if item.key.startswith("img:") else None
    if len(data) != stat.st_size or (
        expected is not None and hashlib.sha256(data).hexdigest() != expected
    ):
        raise changed
    return IndexedFile(item.path, data, file_identity(stat))
