"""Finding and decoding images: every zoo file's outcome, pixel-mode conversions, and the walk."""

from __future__ import annotations

import io
import os
import random
import warnings
from pathlib import Path

import pytest
from PIL import Image

from retrieval import images
from retrieval.errors import ImageDecodeError, InputFileError
from retrieval.images import IMAGE_EXTENSIONS, MAX_IMAGE_PIXELS, load_image, walk_images
from tests.imagezoo import BLUE, IGNORED, RED, _png_header_only, make_image_zoo


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str | None]]:
    directory = tmp_path_factory.mktemp("zoo")
    return directory, make_image_zoo(directory)


def _outcome(path: Path) -> str | None:
    try:
        image = load_image(path)
    except ImageDecodeError as err:
        return err.reason
    assert image.mode == "RGB"
    return None


def _close(actual: object, expected: tuple[int, ...], tolerance: int = 6) -> bool:
    assert isinstance(actual, tuple), actual
    return all(abs(a - e) <= tolerance for a, e in zip(actual, expected, strict=True))


# --- the zoo -------------------------------------------------------------------------------


def test_every_zoo_file_gets_its_expected_outcome(zoo: tuple[Path, dict[str, str | None]]) -> None:
    directory, expected = zoo
    decodable = {name: reason for name, reason in expected.items() if reason != IGNORED}
    actual = {name: _outcome(directory / name) for name in decodable}
    assert actual == decodable


def test_walk_yields_every_zoo_image_and_ignores_notes(
    zoo: tuple[Path, dict[str, str | None]],
) -> None:
    directory, expected = zoo
    walked = [path.name for path in walk_images(directory)]
    assert sorted(walked) == sorted(name for name, reason in expected.items() if reason != IGNORED)
    assert "notes.txt" in expected and "UPPER.JPG" in walked


def test_zoo_is_deterministic(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    assert make_image_zoo(first) == make_image_zoo(second)
    for path in first.iterdir():
        assert path.read_bytes() == (second / path.name).read_bytes(), path.name


def test_decode_errors_name_the_file(zoo: tuple[Path, dict[str, str | None]]) -> None:
    directory, _ = zoo
    with pytest.raises(ImageDecodeError) as caught:
        load_image(directory / "truncated.jpg")
    assert caught.value.path == str(directory / "truncated.jpg")
    assert str(directory / "truncated.jpg") in str(caught.value)
    assert "truncated" in str(caught.value)


# --- pixels come out right ------------------------------------------------------------------


def test_exif_orientation_turns_the_image_upright(zoo: tuple[Path, dict[str, str | None]]) -> None:
    image = load_image(zoo[0] / "exif_rotated.jpg")
    assert image.size == (32, 64)  # stored 64x32
    assert _close(image.getpixel((16, 5)), RED)
    assert _close(image.getpixel((16, 58)), BLUE)


def test_16_bit_grey_maps_mid_grey_to_mid_grey(zoo: tuple[Path, dict[str, str | None]]) -> None:
    image = load_image(zoo[0] / "gray16.png")
    assert image.getpixel((5, 5)) == (128, 128, 128)
    assert image.getpixel((0, 0)) == (255, 255, 255)


def test_transparent_rgba_pixels_become_white(zoo: tuple[Path, dict[str, str | None]]) -> None:
    image = load_image(zoo[0] / "rgba.png")
    assert image.getpixel((1, 1)) == (255, 255, 255)
    assert image.getpixel((6, 6)) == BLUE
    # Half-transparent red over white is composited, not thresholded.
    assert _close(image.getpixel((0, 0)), (255, 127, 127), tolerance=1)


def test_transparent_palette_and_la_pixels_become_white(
    zoo: tuple[Path, dict[str, str | None]],
) -> None:
    palette = load_image(zoo[0] / "palette_transparent.png")
    assert palette.getpixel((1, 1)) == (255, 255, 255)
    assert palette.getpixel((6, 6)) == RED
    la = load_image(zoo[0] / "la.png")
    assert la.getpixel((1, 1)) == (255, 255, 255)
    assert la.getpixel((6, 6)) == (0, 0, 0)


def test_cmyk_float_and_bilevel_files_keep_their_colours(
    zoo: tuple[Path, dict[str, str | None]],
) -> None:
    assert _close(load_image(zoo[0] / "cmyk.jpg").getpixel((3, 3)), RED)
    assert load_image(zoo[0] / "float.tif").getpixel((3, 3)) == (128, 128, 128)
    assert load_image(zoo[0] / "bilevel.png").getpixel((3, 3)) == (255, 255, 255)


@pytest.mark.parametrize("name", ["animated.gif", "animated.webp"])
def test_animations_give_their_first_frame(
    zoo: tuple[Path, dict[str, str | None]], name: str
) -> None:
    assert load_image(zoo[0] / name).getpixel((8, 8)) == RED


def test_one_pixel_image_is_valid(zoo: tuple[Path, dict[str, str | None]]) -> None:
    image = load_image(zoo[0] / "tiny_1x1.png")
    assert image.size == (1, 1) and image.getpixel((0, 0)) == (10, 20, 30)


@pytest.mark.parametrize(
    ("mode", "value", "expected"),
    [
        ("1", 1, (255, 255, 255)),
        ("L", 200, (200, 200, 200)),
        ("P", 0, (0, 0, 0)),
        ("I;16", 32768, (128, 128, 128)),
        ("I;16B", 65535, (255, 255, 255)),
        ("I", 32768, (128, 128, 128)),  # 16-bit data in a 32-bit image
        ("I", 100, (100, 100, 100)),  # 8-bit data in a 32-bit image
        ("F", 0.5, (128, 128, 128)),  # 0..1 floats
        ("F", 200.0, (200, 200, 200)),  # 0..255 floats
        ("RGBX", (1, 2, 3, 0), (1, 2, 3)),
        ("RGBa", (10, 20, 30, 255), (10, 20, 30)),
        ("La", (90, 255), (90, 90, 90)),
        ("PA", (0, 0), (255, 255, 255)),
        ("CMYK", (0, 0, 0, 0), (255, 255, 255)),
        ("YCbCr", (255, 128, 128), (255, 255, 255)),
        ("HSV", (0, 0, 255), (255, 255, 255)),
    ],
)
def test_every_pillow_mode_converts_to_rgb(
    mode: str, value: int | float | tuple[int, ...], expected: tuple[int, int, int]
) -> None:
    converted = images._to_rgb(Image.new(mode, (3, 2), value))
    assert converted.mode == "RGB" and converted.size == (3, 2)
    assert _close(converted.getpixel((1, 1)), expected, tolerance=1)


def test_out_of_range_floats_are_stretched_not_clipped() -> None:
    image = Image.new("F", (2, 1), -1000.0)
    image.putpixel((1, 0), 1000.0)
    converted = images._to_rgb(image)
    assert converted.getpixel((0, 0)) == (0, 0, 0)
    assert converted.getpixel((1, 0)) == (255, 255, 255)


# --- sources, limits and resources ----------------------------------------------------------


def test_bytes_decode_like_files(zoo: tuple[Path, dict[str, str | None]]) -> None:
    data = (zoo[0] / "photo.jpeg").read_bytes()
    assert load_image(data).tobytes() == load_image(zoo[0] / "photo.jpeg").tobytes()
    with pytest.raises(ImageDecodeError) as caught:
        load_image(b"")
    assert caught.value.reason == "empty" and caught.value.path == "<bytes>"


def test_missing_file_and_directory_are_unreadable(tmp_path: Path) -> None:
    for source in (tmp_path / "missing.jpg", tmp_path, str(tmp_path / "missing.png")):
        with pytest.raises(ImageDecodeError) as caught:
            load_image(source)
        assert caught.value.reason == "unreadable"


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads any file")
def test_file_without_read_permission_is_unreadable(tmp_path: Path) -> None:
    path = tmp_path / "secret.png"
    Image.new("RGB", (4, 4)).save(path)
    path.chmod(0)
    with pytest.raises(ImageDecodeError) as caught:
        load_image(path)
    assert caught.value.reason == "unreadable"


def test_max_pixels_is_checked_from_the_header(zoo: tuple[Path, dict[str, str | None]]) -> None:
    with pytest.raises(ImageDecodeError) as caught:
        load_image(zoo[0] / "photo.jpeg", max_pixels=64 * 48 - 1)
    assert caught.value.reason == "decompression-bomb"
    assert "64x48" in caught.value.detail
    assert load_image(zoo[0] / "photo.jpeg", max_pixels=64 * 48).size == (64, 48)


def test_header_between_pillow_limits_is_rejected_without_a_warning() -> None:
    # 120 Mpx is past Pillow's warning threshold but under its hard error, so our own
    # limit must catch it, from the header alone (the file is a few dozen bytes).
    header = _png_header_only(12_000, 10_000)
    assert len(header) < 100
    with warnings.catch_warnings(record=True) as caught_warnings:
        warnings.simplefilter("always")
        with pytest.raises(ImageDecodeError) as caught:
            load_image(header, max_pixels=100_000_000)
    assert caught.value.reason == "decompression-bomb"
    assert not [
        w for w in caught_warnings if issubclass(w.category, Image.DecompressionBombWarning)
    ]


def test_default_limit_matches_pillows_hard_limit() -> None:
    pillow_default_warning_limit = 1024 * 1024 * 1024 // 4 // 3
    assert pillow_default_warning_limit * 2 == MAX_IMAGE_PIXELS


def test_invalid_max_pixels_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="max_pixels"):
        load_image(b"x", max_pixels=0)


def test_returned_image_outlives_its_file(tmp_path: Path) -> None:
    path = tmp_path / "photo.png"
    Image.new("RGB", (4, 4), RED).save(path)
    image = load_image(path)
    path.unlink()
    assert image.resize((2, 2)).getpixel((1, 1)) == RED


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to count descriptors")
def test_decoding_leaks_no_file_descriptors(zoo: tuple[Path, dict[str, str | None]]) -> None:
    directory, expected = zoo
    names = [name for name, reason in expected.items() if reason != IGNORED]
    _outcome(directory / names[0])  # let any lazy plugin import settle first
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(3):
        for name in names:
            _outcome(directory / name)
    assert len(os.listdir("/proc/self/fd")) == before


# --- walking --------------------------------------------------------------------------------


def _touch_image(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    Image.new("RGB", (2, 2)).save(buffer, "PNG")
    path.write_bytes(buffer.getvalue())
    return path


def test_walk_order_is_sorted_absolute_and_repeatable(tmp_path: Path) -> None:
    names = ["b/z.png", "b/a.jpg", "a.png", "c/d/e.webp", "B.PNG", "b0.png", "b/c/x.gif"]
    random.Random(7).shuffle(names)  # creation order must not matter
    for name in names:
        _touch_image(tmp_path / name)
    (tmp_path / "b" / "readme.md").write_text("not an image")
    first = list(walk_images(tmp_path))
    assert first == list(walk_images(tmp_path))
    assert all(path.is_absolute() for path in first)
    assert first == sorted(first, key=lambda path: path.parts)
    assert [path.relative_to(tmp_path).as_posix() for path in first] == [
        "B.PNG", "a.png", "b/a.jpg", "b/c/x.gif", "b/z.png", "b0.png", "c/d/e.webp",
    ]  # fmt: skip


def test_walk_matches_extensions_in_any_case(tmp_path: Path) -> None:
    suffixes = ("JPG", "Jpeg", "pNg", "WEBP", "Gif", "BMP", "Tif", "TIFF", "heic", "AVIF", "Dng")
    for suffix in suffixes + ("txt", "MOV"):
        _touch_image(tmp_path / f"file.{suffix}")
    walked = {path.suffix for path in walk_images(tmp_path)}
    assert walked == {f".{suffix}" for suffix in suffixes}
    assert {suffix.lower() for suffix in walked} <= IMAGE_EXTENSIONS


def test_walk_survives_a_symlink_loop_without_duplicates(tmp_path: Path) -> None:
    _touch_image(tmp_path / "a" / "b" / "photo.png")
    (tmp_path / "a" / "b" / "loop").symlink_to(tmp_path / "a")
    (tmp_path / "a" / "self").symlink_to(".")
    walked = list(walk_images(tmp_path))
    assert walked == [tmp_path / "a" / "b" / "photo.png"]


def test_walk_follows_a_linked_folder_once(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    _touch_image(outside / "far.png")
    root = tmp_path / "root"
    _touch_image(root / "real" / "photo.png")
    (root / "link").symlink_to(root / "real")
    (root / "elsewhere").symlink_to(outside)
    walked = [path.relative_to(root).as_posix() for path in walk_images(root)]
    # A link to a folder inside the root is not followed, though "link" sorts before "real":
    # the folder is named once, by its own name (issue 19, defect 3; files.py rule 3). A link
    # out of the root is followed and names its files through the link.
    assert walked == ["elsewhere/far.png", "real/photo.png"]


def test_walk_skips_hidden_folders_and_files(tmp_path: Path) -> None:
    _touch_image(tmp_path / ".thumbnails" / "thumb.png")
    _touch_image(tmp_path / "album" / ".git" / "objects" / "x.png")
    _touch_image(tmp_path / "album" / "._photo.jpg")  # macOS AppleDouble companion
    _touch_image(tmp_path / "album" / "photo.jpg")
    assert list(walk_images(tmp_path)) == [tmp_path / "album" / "photo.jpg"]


def test_walk_of_a_hidden_root_still_walks_it(tmp_path: Path) -> None:
    _touch_image(tmp_path / ".photos" / "photo.png")
    assert list(walk_images(tmp_path / ".photos")) == [tmp_path / ".photos" / "photo.png"]


def test_walk_ignores_broken_links(tmp_path: Path) -> None:
    (tmp_path / "gone.png").symlink_to(tmp_path / "missing.png")
    (tmp_path / "gone_dir").symlink_to(tmp_path / "missing")
    assert list(walk_images(tmp_path)) == []


def test_walk_of_a_single_file_yields_it_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _touch_image(tmp_path / "photo.PNG")
    monkeypatch.chdir(tmp_path)
    assert list(walk_images(Path("photo.PNG"))) == [tmp_path / "photo.PNG"]


def test_walk_of_a_missing_root_raises_at_once(tmp_path: Path) -> None:
    with pytest.raises(InputFileError, match="missing"):
        walk_images(tmp_path / "missing")  # no iteration needed


def test_walk_skips_unreadable_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _touch_image(tmp_path / "locked" / "secret.png")
    _touch_image(tmp_path / "open" / "photo.png")
    real_scandir = os.scandir

    def scandir(path: Path) -> object:
        if Path(path).name == "locked":
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    assert list(walk_images(tmp_path)) == [tmp_path / "open" / "photo.png"]
    with pytest.raises(InputFileError, match="permissions"):
        walk_images(tmp_path / "locked")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads any folder")
def test_walk_skips_folders_without_permission(tmp_path: Path) -> None:
    _touch_image(tmp_path / "locked" / "secret.png")
    _touch_image(tmp_path / "open" / "photo.png")
    (tmp_path / "locked").chmod(0)
    try:
        assert list(walk_images(tmp_path)) == [tmp_path / "open" / "photo.png"]
    finally:
        (tmp_path / "locked").chmod(0o755)
