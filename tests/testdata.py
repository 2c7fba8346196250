"""Test inputs built on the fly: the tiny open_clip model, random-noise images, the sample JPEGs,
a product catalog. Plain functions, imported by conftest.py's fixtures and by helper modules."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmarks.make_model import write_random_model
from retrieval.config import EmbedConfig

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


# The CoCa counterpart, for captions: coca_ViT-B-32's layout (attentional pooler, output tokens,
# a multimodal text decoder) shrunk like the model above.
TINY_COCA_CONFIG = {
    "model_cfg": {
        "embed_dim": 64,  # CoCa's decoder reads image tokens projected to embed_dim: = its width
        "vision_cfg": {
            "image_size": 32,
            "layers": 1,
            "width": 64,
            "head_width": 32,
            "patch_size": 8,
            "attentional_pool": True,
            "attn_pooler_heads": 2,
            "output_tokens": True,
        },
        "text_cfg": {
            "context_length": 76,
            "vocab_size": 49408,
            "width": 64,
            "heads": 2,
            "layers": 1,
            "embed_cls": True,
            "output_tokens": True,
        },
        "multimodal_cfg": {
            "context_length": 76,
            "vocab_size": 49408,
            "width": 64,
            "heads": 2,
            "layers": 1,
            "attn_pooler_heads": 2,
        },
        "custom_text": True,
    },
    "preprocess_cfg": TINY_MODEL_CONFIG["preprocess_cfg"],
}


def write_tiny_coca(folder: Path, seed: int = 0) -> Path:
    """The tiny CoCa model with seeded random weights, written as a local-dir folder."""
    return write_random_model(folder, TINY_COCA_CONFIG, seed=seed)


def write_tiny_model(folder: Path, seed: int = 0) -> Path:
    """The tiny model with seeded random weights, written as a local-dir folder."""
    return write_random_model(folder, TINY_MODEL_CONFIG, seed=seed)


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


def shared_images_or_skip(count: int) -> list[Path]:
    """The first `count` JPEGs of ../shared/datasets/imagenet-sample, or skip the test."""
    folder = SHARED_IMAGES / "images"
    if not folder.is_dir():
        pytest.skip(
            f"real images not available: {folder} is missing (present in CI and the dev checkout)"
        )
    return sorted(folder.glob("*.JPEG"))[:count]


CATEGORIES = ["shoes", "shirts", "hats"]


def write_catalog(folder: Path, count: int = 9, *, extra: list[dict] | None = None) -> Path:
    """`count` products, each with two images, in 3 categories with rising prices."""
    images = make_images(folder / "img", count * 2, seed=3)
    rows = [
        {
            "id": f"SKU-{n:03d}",
            "title": f"{CATEGORIES[n % 3]} model {n}",
            "image": f"img/{images[2 * n].name}|img/{images[2 * n + 1].name}",
            "category": CATEGORIES[n % 3],
            "price": f"{10 + 5 * n}.5",
            "brand": "acme" if n % 2 else "zenith",
        }
        for n in range(count)
    ] + (extra or [])
    path = folder / "products.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def cpu_config(**fields: object) -> EmbedConfig:
    """The EmbedConfig the CLI builds on the CPU from this test's environment (conftest pins
    the backend to torch and points the export and hash caches at temporary folders): for the
    tests that call the library directly, which reads no environment variables itself."""
    from retrieval.cli.environment import read_settings

    return read_settings().embed_config(device="cpu", **fields)
