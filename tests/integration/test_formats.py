"""Formats people have: HEIC/HEIF (pillow-heif) and AVIF read like JPEGs, in files, uploads and
`query --image`; camera RAW without the raw extra is reported with the pip command; files that
are not images are counted in the index summary, never silently dropped."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from clirun import invoke, json_lines, run_ok
from fastapi.testclient import TestClient
from httpkit import open_app
from PIL import Image
from testdata import make_images

from benchmarks.photo_library import write_dng
from retrieval.errors import ImageDecodeError
from retrieval.formats import RAW_EXTENSIONS, image_formats
from retrieval.images import header_size, load_image, walk_images
from retrieval.scaling import DecodeTarget

RED, BLUE = (255, 0, 0), (0, 0, 255)


def _red_top(size: tuple[int, int]) -> Image.Image:
    """Blue, with its top quarter red: which way is up survives any turn."""
    image = Image.new("RGB", size, BLUE)
    image.paste(RED, (0, 0, size[0], size[1] // 4))
    return image


def _heic(image: Image.Image, orientation: int = 1) -> bytes:
    if "HEIF" not in image_formats():  # registers pillow-heif's opener and saver
        pytest.skip("pillow-heif (a dependency) is not installed")
    exif = Image.Exif()
    if orientation != 1:
        exif[0x0112] = orientation
    buffer = io.BytesIO()
    # x265's ultrafast preset: a test photo encodes in milliseconds.
    image.save(buffer, "HEIF", quality=90, exif=exif.tobytes(), enc_params={"preset": "ultrafast"})
    return buffer.getvalue()


def _avif(image: Image.Image, orientation: int = 1) -> bytes:
    if "AVIF" not in image_formats():
        pytest.skip("this Pillow was built without AVIF")
    exif = Image.Exif()
    if orientation != 1:
        exif[0x0112] = orientation
    buffer = io.BytesIO()
    image.save(buffer, "AVIF", quality=90, exif=exif.tobytes())
    return buffer.getvalue()


def _is_upright_red_top(image: Image.Image) -> bool:
    width, height = image.size
    top = np.asarray(image.getpixel((width // 2, height // 10)))
    bottom = np.asarray(image.getpixel((width // 2, height * 9 // 10)))
    return bool(np.abs(top - RED).max() < 24 and np.abs(bottom - BLUE).max() < 24)


@pytest.mark.parametrize("encode", [_heic, _avif], ids=["heic", "avif"])
def test_phone_formats_decode_upright_from_files_and_bytes(encode, tmp_path: Path) -> None:
    upright = _red_top((96, 128))
    # Stored turned a quarter, with the EXIF orientation that turns it back (6: rotate right).
    data = encode(upright.transpose(Image.Transpose.ROTATE_90), 6)
    path = tmp_path / f"IMG_0001.{encode.__name__[1:].upper()}"
    path.write_bytes(data)
    for source in (path, data):
        image = load_image(source)
        assert image.mode == "RGB" and image.size == (96, 128)
        assert _is_upright_red_top(image)
    assert header_size(data) in ((96, 128), (128, 96))


@pytest.mark.parametrize("encode", [_heic, _avif], ids=["heic", "avif"])
def test_phone_formats_are_reduced_to_the_models_size(encode) -> None:
    data = encode(_red_top((1400, 1020)))  # 1020 // 336 = 3
    image = load_image(data, target=DecodeTarget(224))
    assert image.size == (467, 340) and _is_upright_red_top(image)


@pytest.fixture
def without_rawpy(monkeypatch: pytest.MonkeyPatch) -> None:
    """An install without the raw extra: `import rawpy` fails as it does there."""
    monkeypatch.setitem(sys.modules, "rawpy", None)


@pytest.mark.usefixtures("without_rawpy")
@pytest.mark.parametrize("suffix", sorted(RAW_EXTENSIONS))
def test_raw_files_without_the_extra_say_how_to_get_it(suffix: str, tmp_path: Path) -> None:
    path = tmp_path / f"DSC_0001{suffix.upper()}"
    path.write_bytes(b"II*\x00" + bytes(4096))
    with pytest.raises(ImageDecodeError) as caught:
        load_image(path)
    assert caught.value.reason == "unsupported-format"
    assert "pip install 'mmsearch[raw]'" in caught.value.detail


def test_walk_takes_phone_and_camera_extensions(tmp_path: Path) -> None:
    names = ["a.HEIC", "b.heif", "c.avif", "d.hif", "e.DNG", "f.cr3", "g.nef", "h.jpg"]
    for name in names + ["clip.mov", "notes.txt"]:
        (tmp_path / name).write_bytes(b"x")
    ignored: list[str] = []
    walked = [p.name for p in walk_images(tmp_path, on_ignore=lambda p: ignored.append(p.name))]
    assert walked == sorted(names) and ignored == ["clip.mov", "notes.txt"]


def test_index_reports_ignored_files_by_extension(tiny_model: str, tmp_path: Path) -> None:
    folder = tmp_path / "phone"
    make_images(folder, 2)
    (folder / "IMG_0002.HEIC").write_bytes(_heic(_red_top((64, 48))))
    (folder / "IMG_0003.avif").write_bytes(_avif(_red_top((64, 48))))
    for name in ("IMG_0004.MOV", "IMG_0005.mov", "notes.txt", "README"):
        (folder / name).write_bytes(b"not a photo")
    (folder / ".DS_Store").write_bytes(b"hidden files are not counted")
    summary = run_ok("index", folder, "--model", tiny_model)
    assert "indexed 4 (embedded 4" in summary
    assert "ignored 4 (.mov: 2, (no extension): 1, .txt: 1)" in summary
    (report,) = json_lines("index", folder, "--json")
    assert report["ignored"] == {".mov": 2, "(no extension)": 1, ".txt": 1}


def test_query_image_and_upload_take_heic(tiny_model: str, tmp_path: Path) -> None:
    folder = tmp_path / "phone"
    folder.mkdir()
    photo = _red_top((64, 48))
    (folder / "IMG_0001.HEIC").write_bytes(_heic(photo))
    make_images(folder, 3)
    index = tmp_path / "index"
    run_ok("index", folder, "--model", tiny_model, "--index", index)
    hits = json.loads(
        run_ok("query", "--image", folder / "IMG_0001.HEIC", "-k", "1", "--json", "--index", index)
    )["results"]
    assert Path(hits[0]["path"]).name == "IMG_0001.HEIC"
    with open_app(index) as (app, _), TestClient(app) as client:
        upload = client.post(
            "/search/image", params={"k": 1}, files={"file": ("q.heic", _heic(photo))}
        )
        assert upload.status_code == 200, upload.text
        assert Path(upload.json()["results"][0]["path"]).name == "IMG_0001.HEIC"


def test_a_broken_heic_is_reported_not_fatal(tiny_model: str, tmp_path: Path) -> None:
    folder = tmp_path / "phone"
    make_images(folder, 1)
    data = _heic(_red_top((64, 48)))
    (folder / "cut.heic").write_bytes(data[: len(data) // 2])
    result = invoke("index", folder, "--model", tiny_model, "--json")
    (report,) = [json.loads(line) for line in result.stdout.strip().splitlines()]
    assert report["embedded"] == 1
    assert [Path(s["path"]).name for s in report["skipped"]] == ["cut.heic"]


@pytest.mark.usefixtures("without_rawpy")
def test_raw_bytes_with_their_file_name_take_the_raw_path() -> None:
    """Ray actors decode bytes labelled with their path: a TIFF-based RAW must not be read as
    the thumbnail in its first TIFF directory."""
    tiff_like = _encode_tiff(_red_top((64, 48)))
    assert load_image(tiff_like).size == (64, 48)  # no name: Pillow reads it as a TIFF
    with pytest.raises(ImageDecodeError) as caught:
        load_image(tiff_like, name="/photos/DSC_0001.NEF")
    assert caught.value.reason == "unsupported-format" and caught.value.path.endswith(".NEF")


def _encode_tiff(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "TIFF")
    return buffer.getvalue()


def test_a_dng_without_preview_is_demosaiced_at_half_size(tmp_path: Path) -> None:
    pytest.importorskip("rawpy", reason="the raw extra is not installed: pip install '.[raw]'")
    rgb = np.zeros((400, 600, 3), np.uint8)
    rgb[:, :] = BLUE
    rgb[:100] = RED
    pytest.importorskip("tifffile", reason="writing test DNGs needs tifffile (dev)")
    path = write_dng(tmp_path / "DSC_0001.DNG", Image.fromarray(rgb))
    image = load_image(path)
    assert image.mode == "RGB" and image.size == (300, 200)
    assert _is_upright_red_top(image.point(lambda v: 255 if v > 127 else 0))
    assert load_image(path, target=DecodeTarget(32)).size == (75, 50)  # 200 // 48 = 4
