"""A folder of hostile paths around the image zoo: deep nesting, unicode and newline names, a
name that is not UTF-8, links out of the folder and at special files, and PNG bombs built by
streaming (no multi-GB buffer in the test). Not a test module: `make_hostile_folder` writes it
and returns the outcome each file name must get, like imagezoo.make_image_zoo."""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

from imagezoo import IGNORED, make_image_zoo
from PIL import Image

DEEP_LEVELS = 40
BAD_UTF8 = os.fsdecode(b"bad\xff\xfename.png")


def png_bomb(path: Path, width: int, height: int) -> None:
    """A real 8-bit grey PNG of width x height black pixels: megabytes on disk, width*height
    bytes once decoded. Written row by row so the test never holds the pixels."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body)
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    packer = zlib.compressobj(1)  # zeros shrink ~1000x at any level
    row = b"\0" * (width + 1)  # filter byte + pixels
    parts = [packer.compress(row) for _ in range(height)]
    data = b"".join(parts) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")
    )


def _image(path: Path, shade: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (24, 20), (shade, 255 - shade, shade // 2)).save(path)


def make_hostile_folder(root: Path, outside: Path) -> dict[str, str | None]:
    """Write the folder under `root` (and link targets under `outside`); return relative path
    -> expected skip reason (None: indexed, IGNORED: not even reported)."""
    expected = {f"zoo/{name}": reason for name, reason in make_image_zoo(root / "zoo").items()}
    deep = Path(*[f"level{n:02d}" for n in range(DEEP_LEVELS)]) / "deep.png"
    names = {
        str(deep): None,
        "фото_日本_🙂.png": None,
        "cafe\u0301.png": None,
        "new\nline.png": None,
        " leading space.png": None,
        BAD_UTF8: "bad-name",
    }
    for shade, name in enumerate(names):
        _image(root / name, 10 * shade)
    expected.update(names)
    outside.mkdir(parents=True, exist_ok=True)
    _image(outside / "far.png", 200)
    (root / "link_out.png").symlink_to(outside / "far.png")
    expected["link_out.png"] = None  # a link to an image elsewhere is followed, like a folder
    os.mkfifo(outside / "pipe")
    os.mkfifo(root / "fifo.png")
    (root / "fifo_link.jpg").symlink_to(outside / "pipe")
    (root / "zero.jpg").symlink_to("/dev/zero")
    (root / "broken.png").symlink_to(outside / "missing.png")
    for name in ("fifo.png", "fifo_link.jpg", "zero.jpg", "broken.png"):
        expected[name] = "not-a-file"
    (root / "devnull.txt").symlink_to("/dev/null")
    expected["devnull.txt"] = IGNORED
    # 182 Mpx of real compressed pixels, just over the cap: refused from the header, never decoded.
    png_bomb(root / "bomb_real.png", 13_500, 13_500)
    expected["bomb_real.png"] = "decompression-bomb"
    return expected
