"""Find image files on disk and decode them into RGB: the one place that knows about file
formats, broken files and pixel modes. PIL and the standard library only, so that importing it
never pulls in torch."""

from __future__ import annotations

import errno
import io
import logging
import math
import os
import stat
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO, TypeVar, cast

from PIL import Image, ImageOps, UnidentifiedImageError

from . import faults
from .errors import ImageDecodeError, InputFileError
from .files import canonical_root, is_within
from .formats import (
    IMAGE_EXTENSIONS,
    RAW_PREVIEW_MIN_SIDE,
    image_formats,
    is_raw,
    missing_decoder,
    open_raw,
)
from .scaling import DecodeTarget, draft_jpeg
from .types import Skipped

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Pillow's own hard limit (2 x Image.MAX_IMAGE_PIXELS): ~179 Mpx is 512 MiB once decoded to RGB,
# and still admits 100-200 Mpx camera and panorama files. A lower cap cannot be loosened past
# Pillow's global limit, which it applies in Image.open before we see the header.
MAX_IMAGE_PIXELS = 178_956_970

# 16-bit and float pixels are rescaled to 8 bits from the smallest usual range holding the data.
_CONVENTIONAL_RANGES: tuple[tuple[float, float], ...] = ((0.0, 1.0), (0.0, 255.0), (0.0, 65535.0))
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
# Premultiplied-alpha modes convert to RGB only through their straight-alpha twin.
_STRAIGHT_ALPHA = {"La": "LA", "RGBa": "RGBA"}
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA"})
_WHITE = (255, 255, 255)
_BYTES_LABEL = "<bytes>"


def is_image_path(path: str | Path) -> bool:
    """True when the file name ends in one of IMAGE_EXTENSIONS, in any letter case."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


SkipCallback = Callable[[Path, str, str], None]
"""on_skip(path, reason, detail): an entry with an image name that is not a file to read
(reason "not-a-file"), or a folder that cannot be listed (reason "unreadable")."""
IgnoreCallback = Callable[[Path], None]
"""on_ignore(path): a regular file the walk passed over because its name is not an image's."""


def walk_images(
    root: Path, on_skip: SkipCallback | None = None, on_ignore: IgnoreCallback | None = None
) -> Iterator[Path]:
    """Yield the image files under `root` (or `root` itself), sorted by name, each named by the
    identity rule of files.py: below the real path of `root`, as walked.

    Symlinks whose target lies inside the root are not followed (the target is yielded under its
    own name); those pointing outside are, once per folder. Entries with image names that are not
    regular files (FIFOs, devices, sockets, links to them, broken links) are never yielded, so
    nothing blocks reading them; `on_skip` hears of each one with reason "not-a-file", and of
    each folder below the root that cannot be listed with reason "unreadable". `on_ignore` hears
    of each (non-hidden) regular file without an image extension, so a run can say what it left
    out."""
    root = canonical_root(root)
    if root.is_dir():
        try:
            os.scandir(root).close()
        except OSError as err:
            raise InputFileError(
                f"{root}: cannot read this directory ({err.strerror}); check its permissions"
            ) from err
        return _walk_directory(root, on_skip, on_ignore)
    if root.is_file():
        # Named explicitly, so it is yielded whatever its extension: a `.mov` given on the
        # command line should come back as a Skipped with a reason, not vanish silently.
        return iter([root])
    if os.path.lexists(root):
        raise InputFileError(
            f"{root}: not a regular file or directory (a broken link or a device?); "
            "pass an image file or a folder of images"
        )
    raise InputFileError(f"{root}: no such file or directory; check the path for typos")


def _walk_directory(
    root: Path, on_skip: SkipCallback | None, on_ignore: IgnoreCallback | None
) -> Iterator[Path]:
    # Identity is (device, inode) of the resolved directory, so a folder reached through two
    # links outside the root is entered once and never loops.
    visited = {_identity(root)}
    root_name = str(root)
    stack = [iter(_sorted_entries(root, on_skip))]
    while stack:
        entry = next(stack[-1], None)
        if entry is None:
            stack.pop()
            continue
        # Hidden files too: macOS `._photo.jpg` AppleDouble files carry image names but no image.
        if entry.name.startswith("."):
            continue
        try:
            if _links_inside(entry, root_name):
                # Its target is inside the root and is walked under its own name: following
                # the link would give the same file a second identity (files.py, rule 3).
                logger.debug("not following %s: its target is inside %s", entry.path, root)
                continue
            is_dir = entry.is_dir()
            is_file = not is_dir and entry.is_file()
            key = _identity(Path(entry.path)) if is_dir else None
        except OSError as err:
            logger.warning("skipping %s: %s", entry.path, err)
            continue
        if key is not None:
            if key in visited:
                logger.debug("skipping %s: directory already walked", entry.path)
                continue
            visited.add(key)
            faults.reached("walk")
            stack.append(iter(_sorted_entries(Path(entry.path), on_skip)))
        elif is_file and is_image_path(entry.name):
            yield Path(entry.path)
        elif on_skip is not None and is_image_path(entry.name):
            on_skip(Path(entry.path), "not-a-file", _special_kind(entry.path))
        elif on_ignore is not None and is_file:
            on_ignore(Path(entry.path))


def _links_inside(entry: os.DirEntry[str], root: str) -> bool:
    """True for a symlink to an existing file or folder inside `root` (a broken link is not:
    it is reported as not-a-file)."""
    return (
        entry.is_symlink()
        and os.path.exists(entry.path)
        and is_within(os.path.realpath(entry.path), root)
    )


def _special_kind(path: str) -> str:
    """What a non-regular entry is, for the skip report (stat never opens it, so a FIFO
    cannot block here)."""
    try:
        mode = os.stat(path).st_mode
    except OSError as err:
        link = " (a broken symbolic link)" if os.path.islink(path) else ""
        return f"{err.strerror or err}{link}"
    for test, kind in (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return kind + (" (through a symbolic link)" if os.path.islink(path) else "")
    return "not a regular file"


def open_regular(path: str | Path) -> BinaryIO:
    """Open a file for reading only if it is a regular file: O_NONBLOCK keeps a FIFO swapped in
    under an image's name from blocking the open, and fstat refuses FIFOs and devices (a link to
    /dev/zero would otherwise be read for ever)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file (a FIFO or a device?)", str(path))
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _identity(directory: Path) -> tuple[int, int]:
    info = directory.stat()
    return info.st_dev, info.st_ino


def _sorted_entries(directory: Path, on_skip: SkipCallback | None = None) -> list[os.DirEntry[str]]:
    # Listed in full and closed before yielding: a paused generator holds no file descriptor.
    try:
        with os.scandir(directory) as entries:
            return sorted(entries, key=lambda entry: entry.name)
    except OSError as err:
        logger.warning("skipping unreadable directory %s: %s", directory, err)
        if on_skip is not None:
            # Reported, so a sync keeps what it indexed there instead of taking it as deleted.
            on_skip(directory, "unreadable", f"cannot list this folder ({err.strerror or err})")
        return []


def load_image(
    source: str | Path | bytes,
    *,
    max_pixels: int = MAX_IMAGE_PIXELS,
    target: DecodeTarget | None = None,
    name: str | None = None,
    reduce_to: int | None = None,
) -> Image.Image:
    """Decode a file path or raw bytes into an upright RGB image, or raise ImageDecodeError.

    With a `target`, a large image comes back scaled down by a whole factor, still at least
    `target.margin` times the size the preprocessing resizes it to (see DecodeTarget). `name`
    is the file name raw bytes came from: it labels errors and routes camera RAW files (whose
    TIFF-like headers Pillow would otherwise read as their tiny thumbnail) by extension. With
    `reduce_to` (and no target), a JPEG is decoded at the smallest scale libjpeg offers that
    keeps both sides at least `reduce_to` pixels (thumbnails)."""
    if max_pixels < 1:
        raise ValueError(f"max_pixels must be a positive pixel count, got {max_pixels}")
    if isinstance(source, bytes):
        return _decode(io.BytesIO(source), name or _BYTES_LABEL, max_pixels, target, reduce_to)
    label = str(source)
    try:
        stream = open_regular(source)
    except OSError as err:
        raise ImageDecodeError(label, "unreadable", _describe(err)) from err
    with stream:
        return _decode(stream, label, max_pixels, target, reduce_to)


def decode_source(
    source: str | Path | bytes,
    label: str,
    preprocess: Callable[[Image.Image], T],
    max_pixels: int = MAX_IMAGE_PIXELS,
    *,
    target: DecodeTarget | None = None,
) -> T | Skipped:
    """Decode (scaled to `target`, when given) and preprocess one file or byte string; a failure
    comes back as a `Skipped` named `label` (shared by the DataLoader workers, the Ray actors of
    retrieval/distributed and the torch-free embedder of a light server's writes)."""
    try:
        name = label if isinstance(source, bytes) else None
        image = load_image(source, max_pixels=max_pixels, target=target, name=name)
    except ImageDecodeError as err:
        return Skipped(label, err.reason, err.detail)
    except Exception as err:  # MemoryError included: one huge file must not end the run
        return Skipped(label, "corrupt", f"{type(err).__name__}: {err}")
    try:
        return preprocess(image)
    except Exception as err:
        return Skipped(label, "corrupt", f"preprocess failed: {type(err).__name__}: {err}")


def open_header(stream: BinaryIO) -> Image.Image:
    """Image.open (which reads the header only) limited to formats.image_formats(). Pillow
    warns between its soft and hard pixel limits; every caller applies its own limit to the
    size, so the warning would only be noise on stderr. (catch_warnings is process-wide; a race
    with another thread can at worst leave this one warning category ignored.)"""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return Image.open(stream, formats=image_formats())


def header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) of an image from its header alone, or None when the bytes are not an
    image this module reads (load_image then reports why, with a reason)."""
    try:
        with open_header(io.BytesIO(data)) as image:
            return image.size
    except Exception:  # noqa: BLE001 (any decoder failure means "not readable here")
        return None


def _decode(
    stream: BinaryIO,
    label: str,
    max_pixels: int,
    target: DecodeTarget | None,
    reduce_to: int | None = None,
) -> Image.Image:
    head = stream.read(16)
    if not head:
        raise ImageDecodeError(label, "empty", "the file has 0 bytes")
    stream.seek(0)
    if is_raw(label):
        return _decode_raw(stream, label, max_pixels, target)
    try:
        image = open_header(stream)
    except MemoryError:
        raise
    except Exception as err:
        raise _open_error(label, err, head, stream) from err
    with image:
        width, height = image.size
        if width * height > max_pixels:
            raise ImageDecodeError(
                label,
                "decompression-bomb",
                f"{width}x{height} is over the limit of {max_pixels} pixels",
            )
        if target is not None:
            draft_jpeg(image, target)
        elif reduce_to is not None and image.format in ("JPEG", "MPO"):
            image.draft(None, (reduce_to, reduce_to))  # sets the DCT scale; decodes nothing
        try:
            # Decode every pixel now, so a truncated file fails here rather than inside preprocess.
            image.load()
        except MemoryError:
            raise
        except Exception as err:
            raise _load_error(label, err) from err
        upright = _exif_transpose(image, label)
    try:
        rgb = _to_rgb(upright)
    except ValueError as err:  # a mode Pillow cannot convert to RGB
        raise ImageDecodeError(label, "corrupt", f"mode {upright.mode}: {err}") from err
    # Reduced after the conversion: Image.reduce averages RGB values, but would average the
    # indices of a palette image or clip 16-bit ones.
    factor = target.reduction(*rgb.size) if target is not None else 1
    return rgb.reduce(factor) if factor > 1 else rgb


def _decode_raw(
    stream: BinaryIO, label: str, max_pixels: int, target: DecodeTarget | None
) -> Image.Image:
    """A camera RAW file through its embedded JPEG preview when large enough for `target`,
    else a half-size demosaic (formats.open_raw)."""
    need = math.ceil(target.size * target.margin) if target else RAW_PREVIEW_MIN_SIDE
    picture = open_raw(stream, label, need)
    if picture.preview is not None:
        image = _decode(io.BytesIO(picture.preview), label, max_pixels, target)
        return image.transpose(picture.transpose) if picture.transpose is not None else image
    pixels = picture.pixels
    if pixels is None:
        raise ImageDecodeError(label, "corrupt", "LibRaw returned neither a preview nor pixels")
    factor = target.reduction(*pixels.size) if target is not None else 1
    return pixels.reduce(factor) if factor > 1 else pixels


def _open_error(label: str, err: Exception, head: bytes, stream: BinaryIO) -> ImageDecodeError:
    if isinstance(err, Image.DecompressionBombError):
        return ImageDecodeError(label, "decompression-bomb", str(err))
    if isinstance(err, UnidentifiedImageError):
        missing = missing_decoder(label)
        if missing:
            return ImageDecodeError(label, "unsupported-format", missing)
        names = ", ".join(image_formats())
        return ImageDecodeError(label, "not-an-image", f"not a file of any of: {names}")
    if isinstance(err, OSError) and err.errno is not None:
        return ImageDecodeError(label, "unreadable", _describe(err))
    if _is_short_webp(head, stream):
        # libwebp refuses a cut-off file before any pixel is read, with a generic message.
        return ImageDecodeError(label, "truncated", "the WebP file ends before its declared size")
    return ImageDecodeError(label, "corrupt", _describe(err))


def _load_error(label: str, err: Exception) -> ImageDecodeError:
    if isinstance(err, Image.DecompressionBombError):
        return ImageDecodeError(label, "decompression-bomb", str(err))
    # Pillow's decode failures are bare OSErrors; one with an errno came from the disk itself.
    if isinstance(err, OSError) and err.errno is not None:
        return ImageDecodeError(label, "unreadable", _describe(err))
    if isinstance(err, EOFError) or "truncated" in str(err).lower():
        return ImageDecodeError(label, "truncated", _describe(err))
    return ImageDecodeError(label, "corrupt", _describe(err))


def _is_short_webp(head: bytes, stream: BinaryIO) -> bool:
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WEBP":
        return False
    declared = int.from_bytes(head[4:8], "little") + 8
    return stream.seek(0, io.SEEK_END) < declared


def _describe(err: BaseException) -> str:
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    return str(err) or type(err).__name__


def _exif_transpose(image: Image.Image, label: str) -> Image.Image:
    try:
        return ImageOps.exif_transpose(image)
    except Exception as err:
        # A mangled EXIF block should not cost a picture whose pixels decoded fine.
        logger.debug("%s: ignoring unreadable EXIF orientation: %s", label, err)
        return image.copy()


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB without losing the picture."""
    if image.mode == "RGB" and "transparency" not in image.info:
        return image
    if image.mode in _SIXTEEN_BIT_MODES:
        # Plain convert("L") clips 16-bit values, turning almost every pixel white.
        image = _rescale_to_8bit(image.convert("I"), (0.0, 65535.0))
    elif image.mode in ("I", "F"):
        image = _rescale_to_8bit(image, _value_range(image))
    image = image.convert(_STRAIGHT_ALPHA[image.mode]) if image.mode in _STRAIGHT_ALPHA else image
    if image.mode in _ALPHA_MODES or "transparency" in image.info:
        return _flatten_onto_white(image)
    return image.convert("RGB")


def _value_range(image: Image.Image) -> tuple[float, float]:
    low, high = cast("tuple[float, float]", image.getextrema())  # one band: (min, max)
    for range_low, range_high in _CONVENTIONAL_RANGES:
        if range_low <= low and high <= range_high and (image.mode == "F" or range_high > 1.0):
            return range_low, range_high
    return low, high


def _rescale_to_8bit(image: Image.Image, value_range: tuple[float, float]) -> Image.Image:
    low, high = value_range
    scale = 255.0 / (high - low) if high > low else 0.0
    # point() on I and F images takes only an affine map; +0.5 rounds instead of truncating.
    return image.point(lambda value: value * scale - low * scale + 0.5).convert("L")


def _flatten_onto_white(image: Image.Image) -> Image.Image:
    # Product shots and logos often ship on transparent backgrounds whose hidden colour is black
    # or junk; dropping alpha would show the object on that. White is how browsers and shop
    # pages present them, and so how CLIP mostly saw such images in training.
    rgba = image.convert("RGBA")
    flat = Image.new("RGB", rgba.size, _WHITE)
    flat.paste(rgba, mask=rgba.getchannel("A"))
    return flat
