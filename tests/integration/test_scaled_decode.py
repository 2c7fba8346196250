"""Scaled decoding (images.DecodeTarget): large photos decode at the size the model's resize
needs, upright and in the right colours, and embed like the full decode."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from clirun import invoke, json_lines
from open_clip.transform import image_transform
from PIL import Image
from testdata import shared_images_or_skip

from benchmarks.make_model import write_random_model
from benchmarks.photo_library import SIZE_12MP, jpeg_bytes, upscale_photo
from retrieval.embedders.loader import decode_target
from retrieval.embedders.open_clip import OpenClipEmbedder
from retrieval.images import load_image
from retrieval.scaling import SCALED_DECODE_MARGIN, DecodeTarget
from retrieval.types import ModelSpec

TARGET = DecodeTarget(224)  # ViT-B-32's: shortest side to 224, margin 1.5 -> >= 336 px kept


def _encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def _gradient(size: tuple[int, int]) -> Image.Image:
    """Smooth colours, so a scaled decode must match a downsized full decode closely."""
    width, height = size
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :].repeat(height, 0)
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None].repeat(width, 1)
    pixels = np.stack([x, y, 255 - x], axis=-1).astype(np.uint8)
    return Image.fromarray(pixels)


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        (SIZE_12MP, (504, 378)),  # 1/8: 378 >= 336
        ((6000, 4000), (750, 500)),  # 1/8
        ((1600, 1200), (800, 600)),  # 1200 // 336 = 3 -> the DCT scale below it, 1/2
        ((1000, 672), (500, 336)),  # exactly the margin: 1/2
        ((1000, 671), (1000, 671)),  # just under: full size
        ((500, 375), (500, 375)),  # a sample-sized photo is untouched
    ],
)
def test_jpeg_decodes_at_the_smallest_dct_scale_that_keeps_the_margin(
    size: tuple[int, int], expected: tuple[int, int]
) -> None:
    data = _encode(_gradient(size), "JPEG", quality=90)
    image = load_image(data, target=TARGET)
    assert (image.size, image.mode) == (expected, "RGB")
    assert min(image.size) >= min(224 * SCALED_DECODE_MARGIN, *size)


@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "TIFF"])
def test_other_formats_are_box_reduced_after_decoding(fmt: str) -> None:
    source = _gradient((1400, 1010))  # 1010 // 336 = 3
    image = load_image(_encode(source, fmt), target=TARGET)
    assert image.size == (467, 337)
    expected = np.asarray(source.reduce(3), dtype=np.int16)
    assert np.abs(np.asarray(image, dtype=np.int16) - expected).max() <= (4 if fmt == "WEBP" else 0)


def test_longest_fit_scales_by_the_long_side() -> None:
    data = _encode(_gradient((2400, 700)), "PNG")
    assert load_image(data, target=DecodeTarget(224, "longest")).size == (343, 100)  # 2400 // 336
    assert load_image(data, target=DecodeTarget(224, "shortest")).size == (1200, 350)  # 700 // 336


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_scaled_decode_turns_exif_rotated_photos_upright(orientation: int) -> None:
    upright = Image.new("RGB", (1200, 1600), (0, 0, 255))
    upright.paste((255, 0, 0), (0, 0, 1200, 400))  # red band along the top
    data = jpeg_bytes(upright, orientation)
    full = load_image(data)
    scaled = load_image(data, target=TARGET)
    assert full.size == (1200, 1600) and scaled.size == (600, 800)
    assert np.allclose(scaled.getpixel((300, 50)), (255, 0, 0), atol=8)
    assert np.allclose(scaled.getpixel((300, 750)), (0, 0, 255), atol=8)
    reduced = np.asarray(full.reduce(2), dtype=np.int16)
    assert np.abs(np.asarray(scaled, dtype=np.int16) - reduced).mean() < 1.0


@pytest.mark.parametrize(
    ("image", "fmt", "colour"),
    [
        (Image.new("L", (1400, 1000), 90), "JPEG", (90, 90, 90)),
        (Image.new("CMYK", (1400, 1000), (0, 255, 255, 0)), "JPEG", (255, 0, 0)),
        (Image.new("I;16", (1400, 1000), 32768), "PNG", (128, 128, 128)),
        (Image.new("RGBA", (1400, 1000), (10, 200, 10, 0)), "PNG", (255, 255, 255)),
        (Image.new("P", (1400, 1000), 3), "GIF", None),
    ],
    ids=["grey-jpeg", "cmyk-jpeg", "16-bit-png", "transparent-png", "palette-gif"],
)
def test_scaled_decode_converts_every_mode_as_the_full_decode(
    image: Image.Image, fmt: str, colour: tuple[int, int, int] | None
) -> None:
    data = _encode(image, fmt)
    full, scaled = load_image(data), load_image(data, target=TARGET)
    assert scaled.mode == "RGB" and min(scaled.size) < min(full.size)
    expected = colour or full.getpixel((0, 0))
    assert np.allclose(scaled.getpixel((10, 10)), expected, atol=2)
    assert np.allclose(full.getpixel((10, 10)), expected, atol=2)


def test_decode_target_reads_open_clips_resize_modes() -> None:
    targets = {
        mode: decode_target(image_transform(224, is_train=False, resize_mode=mode))
        for mode in ("shortest", "longest", "squash")
    }
    assert targets == {
        "shortest": DecodeTarget(224, "shortest"),
        "longest": DecodeTarget(224, "longest"),
        "squash": DecodeTarget(224, "squash"),
    }
    assert decode_target(lambda image: image) is None  # an unknown transform: full decode


@pytest.mark.parametrize(
    "bad", [{"size": 0}, {"size": 224, "margin": 0.5}, {"size": 8, "fit": "x"}]
)
def test_decode_target_rejects_nonsense(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="DecodeTarget"):
        DecodeTarget(**bad)  # type: ignore[arg-type]


# --- agreement with the full decode, through the real embedder -------------------------------

# A ViT with ViT-B-32's input (224 px, patch 32) but two narrow layers: the resize ratios of a
# real model at a fraction of its cost.
B32_INPUT_CONFIG = {
    "model_cfg": {
        "embed_dim": 64,
        "vision_cfg": {"image_size": 224, "layers": 2, "width": 128, "patch_size": 32},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2,
                     "layers": 1},
    },
    "preprocess_cfg": {"interpolation": "bicubic", "resize_mode": "shortest"},
}  # fmt: skip


@pytest.fixture(scope="module")
def b32_input_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    folder = tmp_path_factory.mktemp("models") / "b32-input"
    return "local-dir:" + str(write_random_model(folder, B32_INPUT_CONFIG, seed=3))


def _embedders(model: str) -> tuple[OpenClipEmbedder, OpenClipEmbedder]:
    spec = ModelSpec(model, None)
    common = {"device": "cpu", "backend": "torch", "num_workers": 0}
    return (
        OpenClipEmbedder.load(spec, decode="cpu", **common),
        OpenClipEmbedder.load(spec, decode="full", **common),
    )


@pytest.mark.slow
def test_scaled_decode_embeds_like_the_full_decode_on_large_photos(
    b32_input_model: str, tmp_path: Path
) -> None:
    sources = shared_images_or_skip(1000)[::125]
    large = []
    for number, source in enumerate(sources):
        path = tmp_path / f"IMG_{number}.jpg"
        orientation = (1, 6)[number % 2]
        path.write_bytes(jpeg_bytes(upscale_photo(source, SIZE_12MP, seed=number), orientation))
        large.append(path)
    scaled, full = _embedders(b32_input_model)
    assert (scaled.preprocessing, full.preprocessing) == ("pil:scaled", "pil")
    for paths in (large, sources):  # 12 MP photos and the sample's own (mostly untouched)
        cosine = (scaled.encode_image_sources(paths) * full.encode_image_sources(paths)).sum(1)
        assert cosine.min() >= 0.995 and cosine.mean() >= 0.999, cosine


def test_index_records_the_decoding_path(tiny_model: str, tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "big.jpg").write_bytes(_encode(_gradient((1600, 1200)), "JPEG"))
    (report,) = json_lines("index", folder, "--model", tiny_model, "--json")
    assert report["embedded"] == 1
    assert json.loads(invoke("info", "--json").stdout)["preprocessing"] == ["pil:scaled"]
    (tmp_path / "more").mkdir()
    (tmp_path / "more" / "other.png").write_bytes(_encode(_gradient((300, 200)), "PNG"))
    json_lines("index", tmp_path / "more", "--decode", "full", "--json")
    assert json.loads(invoke("info", "--json").stdout)["preprocessing"] == ["pil", "pil:scaled"]
