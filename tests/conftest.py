"""Shared fixtures: a tiny real open_clip model as a `local-dir:` folder, and state in tmp_path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmarks.make_model import write_random_model

SHARED_IMAGES = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "imagenet-sample"

# Small enough to run a forward pass in milliseconds, real enough to exercise open_clip's
# ViT, text transformer, tokenizer and preprocessing code paths.
TINY_MODEL_CONFIG = {
    "model_cfg": {
        "embed_dim": 32,
        "vision_cfg": {
            "image_size": 32,
            "layers": 2,
            "width": 64,
            "head_width": 32,
            "patch_size": 8,
        },
        "text_cfg": {
            "context_length": 77,
            "vocab_size": 49408,
            "width": 64,
            "heads": 2,
            "layers": 2,
        },
    },
    "preprocess_cfg": {
        "mean": [0.48145466, 0.4578275, 0.40821073],
        "std": [0.26862954, 0.26130258, 0.27577711],
        "interpolation": "bicubic",
        "resize_mode": "shortest",
    },
}


def write_tiny_model(folder: Path, seed: int = 0) -> Path:
    """The tiny model with seeded random weights, written as a local-dir folder."""
    return write_random_model(folder, TINY_MODEL_CONFIG, seed=seed)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir: Path) -> str:
    """The `--model` value for the tiny model."""
    return f"local-dir:{tiny_model_dir}"


@pytest.fixture(autouse=True)
def isolated_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point every piece of state (index dir, caches) at tmp_path, stay offline, and run the
    model on the CPU so results compare exactly on machines with a GPU too."""
    monkeypatch.setenv("MMSEARCH_INDEX", str(tmp_path / "indexes" / "default"))
    monkeypatch.setenv("MMSEARCH_DEVICE", "cpu")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def make_images(
    folder: Path, count: int, *, seed: int = 0, size: tuple[int, int] = (48, 40)
) -> list[Path]:
    """Write `count` distinct random-noise PNGs (deterministic)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for number in range(count):
        pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
        path = folder / f"img_{number:03d}.png"
        Image.fromarray(pixels).save(path)
        paths.append(path)
    return paths


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "photos"
    make_images(folder, 12)
    return folder


def shared_images_or_skip(count: int) -> list[Path]:
    """The first `count` JPEGs of ../shared/datasets/imagenet-sample, or skip the test."""
    folder = SHARED_IMAGES / "images"
    if not folder.is_dir():
        pytest.skip(
            f"real images not available: {folder} is missing (present in CI and the dev checkout)"
        )
    return sorted(folder.glob("*.JPEG"))[:count]
