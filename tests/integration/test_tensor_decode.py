"""The batched torchvision decode path (`--decode gpu`), run on the CPU: its tensor preprocessing
against the Pillow reference (pixels and embeddings), EXIF orientation, the files it hands to the
CPU workers, and that every input position comes back exactly once."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from clirun import invoke, json_lines
from imagezoo import make_image_zoo
from open_clip.transform import image_transform
from PIL import Image
from testdata import shared_images_or_skip
from torchvision.io import ImageReadMode, decode_jpeg

from retrieval.embedders.open_clip import OpenClipEmbedder
from retrieval.embedders.tensor_decode import (
    JpegBatchDecoder,
    TensorPreprocess,
    _Read,
    jpeg_orientation,
    orient,
)
from retrieval.images import load_image
from retrieval.types import ModelSpec, Skipped

# Pillow's fixed-point resampling weights against torch's float ones: measured 1/255 on the
# sample photos, 2/255 at a few pixels of the hard-edged synthetic ones; the mean stays ~0.01/255.
MAX_PIXEL_DIFF, MEAN_PIXEL_DIFF = 2.0 / 255, 0.02 / 255
# pytest resets warning filters per test; tensor_decode.py explains why this one is noise.
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities")

# The targets for embeddings of the same files through both paths.
MIN_COSINE, MEAN_COSINE = 0.995, 0.999


def _photo(seed: int, size: tuple[int, int]) -> Image.Image:
    """A photo-like picture: smooth gradients, hard-edged blocks and some noise."""
    rng = np.random.default_rng(seed)
    width, height = size
    ys, xs = np.mgrid[0:height, 0:width]
    pixels = np.stack(
        [xs * 255 / width, ys * 255 / height, (xs + ys) * 127 / (width + height)], axis=-1
    )
    for _ in range(6):
        x, y = rng.integers(0, width - 8), rng.integers(0, height - 8)
        pixels[y : y + rng.integers(4, height // 2), x : x + rng.integers(4, width // 2)] = (
            rng.integers(0, 256, 3)
        )
    pixels += rng.normal(0, 6, pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _write_jpegs(folder: Path, count: int, first_seed: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    sizes = [(120, 90), (90, 130), (200, 200), (77, 51), (40, 300)]
    paths = []
    for number in range(count):
        path = folder / f"photo_{number:02d}.jpg"
        _photo(first_seed + number, sizes[number % len(sizes)]).save(path, quality=90)
        paths.append(path)
    return paths


def _pixel_diffs(preprocess, paths: list[Path]) -> tuple[float, float]:
    """Largest and mean difference, in [0, 1] pixel units, between the tensor path and
    Pillow's."""
    tensor = TensorPreprocess(preprocess)
    batches = list(JpegBatchDecoder(tensor).batches(paths, batch_size=4))
    assert all(not batch.fallback for batch in batches)
    pixels = torch.cat([batch.pixels for batch in batches])
    reference = torch.stack([preprocess(load_image(path)) for path in paths])
    std = torch.tensor(preprocess.transforms[-1].std).view(1, 3, 1, 1)
    diffs = (pixels - reference).abs() * std
    return float(diffs.max()), float(diffs.mean())


@pytest.mark.parametrize("resize_mode", ["shortest", "longest"])
@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
def test_tensor_preprocess_matches_pillow_pixels(
    tmp_path: Path, resize_mode: str, interpolation: str
) -> None:
    paths = _write_jpegs(tmp_path, 10)
    preprocess = image_transform(
        64, is_train=False, resize_mode=resize_mode, interpolation=interpolation
    )
    largest, mean = _pixel_diffs(preprocess, paths)
    assert largest <= MAX_PIXEL_DIFF + 1e-6 and mean <= MEAN_PIXEL_DIFF


def test_tensor_preprocess_matches_pillow_on_sample_photos() -> None:
    paths = shared_images_or_skip(24)
    preprocess = image_transform(224, is_train=False)  # ViT-B-32's: bicubic, shortest, 224
    largest, mean = _pixel_diffs(preprocess, paths)
    assert largest <= 1.0 / 255 + 1e-6 and mean <= MEAN_PIXEL_DIFF


def _embed_by_position(embedder: OpenClipEmbedder, paths: list[Path]):
    vectors: dict[int, np.ndarray] = {}
    skipped: list[tuple[int, Skipped]] = []

    def on_batch(positions, batch_vectors, skips) -> None:
        for position, vector in zip(positions, batch_vectors, strict=True):
            assert position not in vectors, f"position {position} embedded twice"
            vectors[position] = vector
        skipped.extend(skips)

    embedder.embed_image_files(paths, on_batch)
    return vectors, skipped


@pytest.fixture(scope="module")
def embedders(tiny_model: str) -> tuple[OpenClipEmbedder, OpenClipEmbedder]:
    """(tensor path, Pillow path decoding every pixel) over the same tiny model, on the CPU."""
    spec = ModelSpec(tiny_model, None)
    common = {"device": "cpu", "backend": "torch", "batch_size": 5, "num_workers": 0}
    return (
        OpenClipEmbedder.load(spec, decode="gpu", **common),
        OpenClipEmbedder.load(spec, decode="full", **common),
    )


def test_embeddings_agree_with_pillow_path(embedders, tmp_path: Path) -> None:
    tensor, pil = embedders
    assert (tensor.preprocessing, pil.preprocessing) == ("tensor:cpu", "pil")
    try:
        paths = shared_images_or_skip(40)
    except pytest.skip.Exception:
        paths = _write_jpegs(tmp_path, 20)
    ours, _ = _embed_by_position(tensor, paths)
    reference, _ = _embed_by_position(pil, paths)
    assert sorted(ours) == sorted(reference) == list(range(len(paths)))
    cosines = np.array([float(ours[p] @ reference[p]) for p in range(len(paths))])
    assert cosines.min() >= MIN_COSINE and cosines.mean() >= MEAN_COSINE, cosines


def _oriented_jpeg(orientation: int) -> bytes:
    """An asymmetric picture (a different colour in each corner) tagged with `orientation`."""
    image = Image.new("RGB", (48, 24), (40, 40, 40))
    image.paste((255, 0, 0), (0, 0, 12, 8))
    image.paste((0, 255, 0), (36, 0, 48, 8))
    image.paste((0, 0, 255), (0, 16, 12, 24))
    exif = Image.Exif()
    exif[0x0112] = orientation
    out = io.BytesIO()
    image.save(out, "JPEG", exif=exif.tobytes(), quality=95)
    return out.getvalue()


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pillow(orientation: int) -> None:
    data = _oriented_jpeg(orientation)
    assert jpeg_orientation(data) == orientation
    decoded = decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), ImageReadMode.RGB)
    upright = orient(decoded, orientation).permute(1, 2, 0).numpy()
    expected = np.asarray(load_image(data))
    assert upright.shape == expected.shape
    assert np.array_equal(upright, expected)  # libjpeg-turbo on both sides: bit-identical


def test_oriented_files_embed_like_pillow(embedders, tmp_path: Path) -> None:
    paths = []
    for orientation in range(1, 9):
        path = tmp_path / f"o{orientation}.jpg"
        path.write_bytes(_oriented_jpeg(orientation))
        paths.append(path)
    ours, _ = _embed_by_position(embedders[0], paths)
    reference, _ = _embed_by_position(embedders[1], paths)
    assert min(float(ours[p] @ reference[p]) for p in range(len(paths))) >= MIN_COSINE


def _progressive_and_cmyk(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    photo = _photo(7, (64, 48))
    files = {
        "progressive": folder / "progressive.jpg",
        "cmyk": folder / "cmyk.jpg",
        "png": folder / "photo.png",
        "baseline": folder / "baseline.jpg",
        "gray": folder / "gray.jpg",
    }
    photo.save(files["progressive"], quality=90, progressive=True)
    photo.convert("CMYK").save(files["cmyk"], quality=90)
    photo.save(files["png"])
    photo.save(files["baseline"], quality=90)
    photo.convert("L").save(files["gray"], quality=90)  # decode_jpeg takes it, as RGB
    return files


def test_files_the_decoder_does_not_take_fall_back(tmp_path: Path) -> None:
    files = _progressive_and_cmyk(tmp_path)
    paths = list(files.values())
    decoder = JpegBatchDecoder(TensorPreprocess(image_transform(32, is_train=False)))
    (batch,) = decoder.batches(paths, batch_size=8)
    assert batch.positions == [3, 4]  # the baseline RGB and grayscale JPEGs
    assert batch.fallback == [0, 1, 2]


def test_a_batch_the_decoder_rejects_is_retried_file_by_file(tmp_path: Path) -> None:
    good = _write_jpegs(tmp_path, 2)
    decoder = JpegBatchDecoder(TensorPreprocess(image_transform(32, is_train=False)))
    reads = [
        _Read(0, torch.frombuffer(bytearray(good[0].read_bytes()), dtype=torch.uint8), 1),
        _Read(1, torch.frombuffer(bytearray(b"\xff\xd8\xffjunk\xff\xd9"), dtype=torch.uint8), 1),
        _Read(2, torch.frombuffer(bytearray(good[1].read_bytes()), dtype=torch.uint8), 1),
    ]
    batch = decoder._decode(reads)
    assert (batch.positions, batch.fallback) == ([0, 2], [1])


def test_zoo_skips_are_those_of_the_pillow_path_and_reported_once(
    embedders, tmp_path: Path
) -> None:
    expected = make_image_zoo(tmp_path / "zoo")
    files = _progressive_and_cmyk(tmp_path / "zoo")
    paths = [tmp_path / "zoo" / name for name, outcome in expected.items() if outcome != "ignored"]
    paths += list(files.values())
    tensor, pil = embedders
    ours, our_skips = _embed_by_position(tensor, paths)
    reference, reference_skips = _embed_by_position(pil, paths)
    by_name = {Path(skip.path).name: skip.reason for _, skip in our_skips}
    assert len(by_name) == len(our_skips)  # none reported twice
    assert by_name == {
        name: outcome for name, outcome in expected.items() if outcome not in (None, "ignored")
    }
    assert sorted(our_skips, key=lambda s: s[0]) == sorted(reference_skips, key=lambda s: s[0])
    # Every position exactly once: embedded or skipped.
    assert sorted([*ours, *(p for p, _ in our_skips)]) == list(range(len(paths)))
    assert sorted(ours) == sorted(reference)
    for position in ours:
        assert float(ours[position] @ reference[position]) >= MIN_COSINE, paths[position]


def test_batches_keep_input_order_and_cover_every_position(tmp_path: Path) -> None:
    jpegs = _write_jpegs(tmp_path / "j", 7)
    pngs = []
    for number in range(4):
        path = tmp_path / f"p{number}.png"
        _photo(100 + number, (30, 30)).save(path)
        pngs.append(path)
    paths = [jpegs[0], pngs[0], jpegs[1], jpegs[2], pngs[1], pngs[2], *jpegs[3:], pngs[3]]
    decoder = JpegBatchDecoder(TensorPreprocess(image_transform(32, is_train=False)), threads=3)
    batches = list(decoder.batches(paths, batch_size=3))
    assert len(batches) == 4
    for number, batch in enumerate(batches):
        chunk = set(range(3 * number, min(3 * number + 3, len(paths))))
        assert set(batch.positions) | set(batch.fallback) == chunk
        assert not set(batch.positions) & set(batch.fallback)
        assert batch.positions == sorted(batch.positions)
    fallback = [p for batch in batches for p in batch.fallback]
    assert [paths[p] for p in fallback] == pngs


def test_index_records_the_tensor_path_and_rejects_unknown_decode(
    tiny_model: str, tmp_path: Path
) -> None:
    folder = tmp_path / "photos"
    _write_jpegs(folder, 6)
    (report,) = json_lines("index", folder, "--model", tiny_model, "--decode", "gpu", "--json")
    assert report["embedded"] == 6
    info = json.loads(invoke("info", "--json").stdout)
    assert info["preprocessing"] == ["tensor:cpu"]
    _write_jpegs(tmp_path / "more", 2, first_seed=50)  # new bytes, so they are embedded
    json_lines("index", tmp_path / "more", "--decode", "full", "--json")
    assert json.loads(invoke("info", "--json").stdout)["preprocessing"] == ["pil", "tensor:cpu"]
    result = invoke("index", folder, "--decode", "nvjpeg")
    assert result.exit_code == 2
    assert "unknown --decode 'nvjpeg'" in result.output


def test_background_decoding_yields_the_same_batches_and_stops_when_closed(
    tmp_path: Path,
) -> None:
    paths = _write_jpegs(tmp_path, 9)
    decoder = JpegBatchDecoder(TensorPreprocess(image_transform(32, is_train=False)))
    direct = list(decoder.batches(paths, batch_size=2))
    ahead = list(decoder.batches_ahead(paths, batch_size=2))
    assert [b.positions for b in ahead] == [b.positions for b in direct]
    for ours, reference in zip(ahead, direct, strict=True):
        assert torch.equal(ours.pixels, reference.pixels)
    stream = decoder.batches_ahead(paths, batch_size=1)
    next(stream)
    stream.close()  # must join its thread rather than hang on the full queue
    missing = decoder.batches_ahead([tmp_path / "missing.jpg", *paths[:1]], batch_size=1)
    assert [b.fallback for b in missing] == [[0], []]
    with pytest.raises(ValueError, match="batch_size"):  # raised in the thread, seen here
        list(decoder.batches_ahead(paths, batch_size=0))
