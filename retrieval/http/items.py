"""Serving indexed items: their stored fields, the indexed image file, and cached-size JPEG
thumbnails. Only paths read from the catalog are ever served."""

from __future__ import annotations

import io
import os

from starlette.exceptions import HTTPException

from ..images import load_image
from ..service import SearchService
from ..types import IMAGES
from .models import ItemOut

# JPEG quality 85 is visually clean at thumbnail sizes and about a third the bytes of 95.
THUMBNAIL_QUALITY = 85


def make_thumbnail(path: str, size: int) -> bytes:
    """A JPEG of the image at `path`, scaled to fit in size x size (aspect kept)."""
    image = load_image(path)
    image.thumbnail((size, size))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=THUMBNAIL_QUALITY, optimize=True)
    return buffer.getvalue()


def item_out(service: SearchService, item_id: int) -> ItemOut:
    """An item by id, or 404."""
    item = service.get_item(item_id)
    if item is None:
        raise HTTPException(404, f"no item with id {item_id} in this index")
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


def indexed_file(service: SearchService, item_id: int) -> tuple[str, tuple[int, int, int]]:
    """The path of an indexed image and a key that changes with the file, or 404. Only paths
    read from the catalog are ever served, and only while the file is the one indexed."""
    item = service.get_item(item_id)
    if item is None or item.collection != IMAGES or not item.path:
        raise HTTPException(404, f"no indexed image with id {item_id}")
    try:
        stat = os.stat(item.path)
    except OSError:
        raise HTTPException(404, f"image {item_id} is no longer on disk; re-index") from None
    # A file replaced since indexing (or a link pointed elsewhere) is not what was indexed.
    if item.size is not None and (stat.st_size, stat.st_mtime_ns) != (item.size, item.mtime_ns):
        raise HTTPException(404, f"image {item_id} changed on disk since indexing; re-index")
    return item.path, (item.id, stat.st_size, stat.st_mtime_ns)
