"""Which files are photos, and the decoders beyond Pillow's own: HEIC/HEIF through pillow-heif
(a dependency: iPhones save HEIC by default), AVIF through Pillow, camera RAW through rawpy (the
`raw` extra). Nothing heavy is imported until a file needs it."""

from __future__ import annotations

import functools
import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from PIL import Image, features

from .errors import ImageDecodeError

logger = logging.getLogger(__name__)

PILLOW_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"})
# .hif: Fujifilm's and Canon's in-camera HEIF.
HEIF_EXTENSIONS = frozenset({".heic", ".heif", ".hif", ".avif"})
RAW_EXTENSIONS = frozenset({".dng", ".cr2", ".cr3", ".nef", ".arw", ".raf", ".orf", ".rw2"})
IMAGE_EXTENSIONS: frozenset[str] = PILLOW_EXTENSIONS | HEIF_EXTENSIONS | RAW_EXTENSIONS
"""Lower-case suffixes (with the dot) that `walk_images` picks up; compare `suffix.lower()`."""

# Decoders tried on a file's bytes, whatever its name says ("JPEG" also opens the multi-picture
# MPO files many cameras write). Listing them keeps untrusted uploads away from Pillow's riskier
# plugins, e.g. EPS, which runs Ghostscript. HEIF and AVIF are added when their decoder loads.
PILLOW_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")

RAW_EXTRA_HINT = "reading camera RAW files needs the raw extra: pip install 'mmsearch[raw]'"
# A RAW file's embedded JPEG preview is used when its short side is at least this (or what the
# model's resize needs, when smaller): cameras embed a full-size or ~1620x1080 preview, enough
# for a 224-336 px model input and 10-50x faster than demosaicing the sensor data.
RAW_PREVIEW_MIN_SIDE = 1024
# LibRaw's `flip` value -> the transpose that turns the embedded preview upright (postprocess
# applies it itself to demosaiced pixels).
_RAW_FLIPS = {
    3: Image.Transpose.ROTATE_180,
    5: Image.Transpose.ROTATE_90,
    6: Image.Transpose.ROTATE_270,
}


@functools.cache
def image_formats() -> tuple[str, ...]:
    """The Pillow format names `open_header` may use: PILLOW_FORMATS plus HEIF (pillow-heif
    registered) and AVIF (Pillow built with libavif) where available."""
    formats = list(PILLOW_FORMATS)
    try:
        import pillow_heif

        # Only the primary picture: thumbnails, depth maps and auxiliary images would be
        # decoded for nothing.
        pillow_heif.register_heif_opener(thumbnails=False, depth_images=False, aux_images=False)
        formats.append("HEIF")
    except ImportError:
        logger.info("pillow-heif is not installed: HEIC/HEIF files will be reported, not read")
    if features.check("avif"):
        formats.append("AVIF")
    return tuple(formats)


def missing_decoder(label: str) -> str | None:
    """Why a file named `label` could not be identified when its format needs a decoder that is
    not installed, or None."""
    suffix = Path(label).suffix.lower()
    formats = image_formats()
    if suffix in {".heic", ".heif", ".hif"} and "HEIF" not in formats:
        return "reading HEIC/HEIF files needs pillow-heif: pip install pillow-heif"
    if suffix == ".avif" and "AVIF" not in formats:
        return "this Pillow was built without AVIF; pip install --upgrade 'pillow>=11.3'"
    return None


def is_raw(label: str) -> bool:
    """True when `label` names a camera RAW file (by its extension)."""
    return Path(label).suffix.lower() in RAW_EXTENSIONS


@dataclass(frozen=True)
class RawPicture:
    """What `open_raw` got from a RAW file: its embedded JPEG preview (to decode like any JPEG,
    then turn with `transpose`), or demosaiced `pixels` (already upright)."""

    preview: bytes | None = None
    transpose: Image.Transpose | None = None
    pixels: Image.Image | None = None


def open_raw(stream: BinaryIO, label: str, min_side: int) -> RawPicture:
    """Read a camera RAW file: its embedded JPEG preview when the preview's short side is at
    least `min_side` (capped at RAW_PREVIEW_MIN_SIDE), else a half-size demosaic.

    Raises:
        ImageDecodeError: rawpy is not installed ("unsupported-format", with the pip command),
            or LibRaw cannot read the file ("corrupt").
    """
    try:
        import rawpy
    except ImportError as err:
        raise ImageDecodeError(label, "unsupported-format", RAW_EXTRA_HINT) from err
    try:
        with rawpy.imread(io.BytesIO(stream.read())) as raw:
            preview = _jpeg_preview(raw, rawpy)
            if preview is not None and _short_side(preview) >= min(min_side, RAW_PREVIEW_MIN_SIDE):
                return RawPicture(preview=preview, transpose=_RAW_FLIPS.get(int(raw.sizes.flip)))
            pixels = raw.postprocess(half_size=True, use_camera_wb=True, output_bps=8)
    except (rawpy.LibRawError, ValueError) as err:
        raise ImageDecodeError(label, "corrupt", f"LibRaw: {err}") from err
    return RawPicture(pixels=Image.fromarray(pixels))


def _jpeg_preview(raw: Any, rawpy: Any) -> bytes | None:
    try:
        thumb = raw.extract_thumb()
    except (rawpy.LibRawNoThumbnailError, rawpy.LibRawUnsupportedThumbnailError):
        return None
    return bytes(thumb.data) if thumb.format == rawpy.ThumbFormat.JPEG else None


def _short_side(jpeg: bytes) -> int:
    try:
        with Image.open(io.BytesIO(jpeg), formats=("JPEG",)) as image:
            return min(image.size)
    except Exception:  # noqa: BLE001 (an unreadable preview: demosaic instead)
        return 0
