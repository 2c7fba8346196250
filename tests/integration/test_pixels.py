"""The torch-free preprocessing (embedders/pixels.py) against open_clip's own inference transform:
the same pixels for any image size, resize mode and interpolation, and on the sample photos."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from open_clip.transform import image_transform
from PIL import Image
from testdata import shared_images_or_skip

from retrieval.embedders.loader import decode_target
from retrieval.embedders.pixels import PixelPreprocess
from retrieval.images import load_image

MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)
# The same Pillow resize and float32 steps as open_clip: equal up to float rounding (the issue
# allows 1/255 per pixel; measured 0).
TOLERANCE = 1e-6


def _pair(size: int, resize_mode: str, interpolation: str):
    ours = PixelPreprocess.from_recorded(
        {
            "image_size": size,
            "mean": list(MEAN),
            "std": list(STD),
            "interpolation": interpolation,
            "resize_mode": resize_mode,
        }
    )
    theirs = image_transform(
        size,
        is_train=False,
        mean=MEAN,
        std=STD,
        resize_mode=resize_mode,
        interpolation=interpolation,
    )
    return ours, theirs


def _image(seed: int, width: int, height: int, mode: str) -> Image.Image:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    ys, xs = np.mgrid[0:height, 0:width]
    pixels[..., 0] = (xs * 255 // max(1, width - 1)).astype(np.uint8)  # a gradient to resample
    return Image.fromarray(pixels).convert(mode)


@settings(max_examples=60, deadline=None)
@given(
    width=st.integers(1, 700),
    height=st.integers(1, 700),
    size=st.sampled_from([32, 224]),
    resize_mode=st.sampled_from(["shortest", "longest", "squash"]),
    interpolation=st.sampled_from(["bicubic", "bilinear"]),
    mode=st.sampled_from(["RGB", "L"]),
    seed=st.integers(0, 2**16),
)
def test_pixels_equal_open_clips_transform(
    width: int, height: int, size: int, resize_mode: str, interpolation: str, mode: str, seed: int
) -> None:
    ours, theirs = _pair(size, resize_mode, interpolation)
    image = _image(seed, width, height, mode).convert("RGB")
    try:
        want = theirs(image).numpy()
    except ValueError:  # a side rounds to 0 pixels (1x64 fit into 32x32): the same refusal
        with pytest.raises(ValueError):
            ours(image)
        return
    got = ours(image)
    assert got.shape == want.shape == (3, size, size) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=TOLERANCE, rtol=0)


def test_pixels_equal_open_clips_on_the_sample_photos_decoded_scaled() -> None:
    paths = shared_images_or_skip(40)
    ours, theirs = _pair(224, "shortest", "bicubic")
    assert ours.target == decode_target(theirs)  # the same scaled decoding as the model path
    for path in paths:
        image = load_image(path, target=ours.target)
        np.testing.assert_allclose(ours(image), theirs(image).numpy(), atol=TOLERANCE, rtol=0)


def test_unknown_preprocessing_is_refused_so_the_model_loads() -> None:
    recorded = {"image_size": 224, "mean": list(MEAN), "std": list(STD)}
    assert PixelPreprocess.from_recorded(recorded) is not None
    assert PixelPreprocess.from_recorded({**recorded, "resize_mode": "random"}) is None
    assert PixelPreprocess.from_recorded({**recorded, "interpolation": "lanczos"}) is None
    assert PixelPreprocess.from_recorded({**recorded, "mean": []}) is None


@pytest.mark.parametrize("resize_mode", ["shortest", "longest", "squash"])
def test_stack_is_a_batch(resize_mode: str) -> None:
    ours, _ = _pair(32, resize_mode, "bicubic")
    images = [_image(n, 40 + n, 90 - n, "RGB") for n in range(3)]
    stacked = ours.stack(images)
    assert stacked.shape == (3, 3, 32, 32)
    np.testing.assert_array_equal(stacked[1], ours(images[1]))
    assert ours.stack([]).shape == (0, 3, 32, 32)
