"""Image bytes that arrive with a product (a `data:` URL over HTTP) are stored content-addressed
in the index directory (`blobs/ab/abcdef....png`), so thumbnails, re-embedding and `check` read
them like any indexed file and identical bytes are stored once."""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
from pathlib import Path

from ..errors import ImageDecodeError, ImageTooLargeError
from ..files import write_atomic

BLOBS = "blobs"
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
    path = directory / BLOBS / digest[:2] / f"{digest}.{extension}"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, data)
    return path


__all__ = ["BLOBS", "decode_data_url", "image_format", "is_data_url", "store_blob"]
