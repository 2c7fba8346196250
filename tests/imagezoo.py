"""A folder of broken and unusual image files, with the outcome each one must get.

Not a test module: `make_image_zoo(tmp_path)` writes the files and returns what the image layer
must do with each, so decoding, ingest and CLI tests can share one set of nasty inputs.
"""

from __future__ import annotations

import io
import random
import struct
import zlib
from pathlib import Path

from PIL import Image

IGNORED = "ignored"
"""Expected value for files that `walk_images` must not yield at all."""

RED = (255, 0, 0)
BLUE = (0, 0, 255)
MID_GREY_16 = 32768
BOMB_SIDE = 30_000
"""The bomb's header claims BOMB_SIDE x BOMB_SIDE pixels (900 Mpx) in a file of a few bytes."""


def make_image_zoo(directory: Path) -> dict[str, str | None]:
    """Write the zoo into `directory`; return file name -> expected skip reason (None: decodes)."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = random.Random(20240531)
    expected: dict[str, str | None] = {}
    for name, (data, outcome) in _zoo_files(rng).items():
        (directory / name).write_bytes(data)
        expected[name] = outcome
    return expected


def _zoo_files(rng: random.Random) -> dict[str, tuple[bytes, str | None]]:
    noise = _noise(rng, 64, 48)
    jpeg, png, webp = _encode(noise, "JPEG"), _encode(noise, "PNG"), _encode(noise, "WEBP")
    return {
        # Broken files, each with the reason it must be skipped for.
        "truncated.jpg": (jpeg[: len(jpeg) // 2], "truncated"),
        "truncated.png": (png[: len(png) // 2], "truncated"),
        "truncated.webp": (webp[: len(webp) // 2], "truncated"),
        "empty.jpg": (b"", "empty"),
        "text.jpg": (b"this is a shopping list, not a photo\n" * 8, "not-an-image"),
        "random.png": (rng.randbytes(2048), "not-an-image"),
        # Ghostscript must never see an upload: EPS is outside the decoders we allow.
        "postscript.jpg": (
            b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\nshowpage\n",
            "not-an-image",
        ),
        "corrupt.png": (_garble_idat(png), "corrupt"),
        "bomb.png": (_png_header_only(BOMB_SIDE, BOMB_SIDE), "decompression-bomb"),
        # Unusual but valid files, which must decode to RGB.
        "cmyk.jpg": (_encode(Image.new("CMYK", (32, 32), (0, 255, 255, 0)), "JPEG"), None),
        "gray16.png": (_encode(_gray16(), "PNG"), None),
        "gray.png": (_encode(Image.new("L", (16, 16), 128), "PNG"), None),
        "bilevel.png": (_encode(Image.new("1", (16, 16), 1), "PNG"), None),
        "float.tif": (_encode(Image.new("F", (16, 16), 0.5), "TIFF"), None),
        "palette_transparent.png": (
            _encode(_palette_with_transparency(), "PNG", transparency=0),
            None,
        ),
        "rgba.png": (_encode(_rgba(), "PNG"), None),
        "la.png": (_encode(_la(), "PNG"), None),
        "animated.gif": (_animated("GIF"), None),
        "animated.webp": (_animated("WEBP", lossless=True), None),
        "exif_rotated.jpg": (_exif_rotated(), None),
        "tiny_1x1.png": (_encode(Image.new("RGB", (1, 1), (10, 20, 30)), "PNG"), None),
        "UPPER.JPG": (_encode(noise, "JPEG"), None),
        "photo.webp": (webp, None),
        "photo.bmp": (_encode(noise, "BMP"), None),
        "photo.tiff": (_encode(noise, "TIFF"), None),
        "photo.jpeg": (jpeg, None),
        # Not an image name at all: walk_images must not yield it.
        "notes.txt": (b"holiday photos, 2023\n", IGNORED),
    }


def _encode(image: Image.Image, image_format: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, image_format, **options)
    return buffer.getvalue()


def _noise(rng: random.Random, width: int, height: int) -> Image.Image:
    # Noise does not compress, so cutting a file in half always lands inside the pixel data.
    return Image.frombytes("RGB", (width, height), rng.randbytes(width * height * 3))


def _garble_idat(png: bytes) -> bytes:
    data = bytearray(png)
    start = data.index(b"IDAT") + 20
    for offset in range(start, start + 40):
        data[offset] ^= 0xFF
    return bytes(data)


def _png_header_only(width: int, height: int) -> bytes:
    """A valid PNG signature and IHDR claiming width x height, with no pixel data at all."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def _gray16() -> Image.Image:
    """16-bit mid grey with one white pixel at (0, 0)."""
    image = Image.new("I;16", (16, 16), MID_GREY_16)
    image.putpixel((0, 0), 65535)
    return image


def _palette_with_transparency() -> Image.Image:
    """Left half palette index 0 (black, declared transparent), right half index 1 (red)."""
    image = Image.new("P", (8, 8), 0)
    image.putpalette([0, 0, 0, *RED] + [0, 0, 0] * 254)
    image.paste(1, (4, 0, 8, 8))
    return image


def _rgba() -> Image.Image:
    """Left half fully transparent black, right half opaque blue, (0, 0) half-transparent red."""
    image = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    image.paste((*BLUE, 255), (4, 0, 8, 8))
    image.putpixel((0, 0), (*RED, 128))
    return image


def _la() -> Image.Image:
    """Left half transparent black, right half opaque black."""
    image = Image.new("LA", (8, 8), (0, 0))
    image.paste((0, 255), (4, 0, 8, 8))
    return image


def _animated(image_format: str, **options: object) -> bytes:
    """Two frames, red then blue: decoders must return the red one."""
    frames = [Image.new("RGB", (16, 16), RED), Image.new("RGB", (16, 16), BLUE)]
    return _encode(
        frames[0], image_format, save_all=True, append_images=frames[1:], duration=100, **options
    )


def _exif_rotated() -> bytes:
    """Stored 64 wide x 32 tall, red left / blue right, with EXIF orientation 6 (turn 90° CW).

    Shown upright it is 32 wide x 64 tall, red on top and blue below.
    """
    image = Image.new("RGB", (64, 32), RED)
    image.paste(BLUE, (32, 0, 64, 32))
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation
    return _encode(image, "JPEG", exif=exif.tobytes(), quality=95)
