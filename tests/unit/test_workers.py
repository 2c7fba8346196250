"""Decode workers sized by measurement: the pure sizing rule, and an index run that measures its
first batch, sizes its workers from it, and still reports every position exactly once."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from testdata import make_images

from retrieval.embedders.loader import decode_workers_for, usable_cores
from retrieval.embedders.open_clip import OpenClipEmbedder
from retrieval.types import ModelSpec, Skipped


@pytest.mark.parametrize(
    ("decode_s", "model_s", "cores", "workers"),
    [
        (0.005, 0.130, 2, 1),  # sample JPEGs, ViT-B-32 fp32: one worker keeps up
        (0.035, 0.060, 2, 1),  # 12 MP scaled decode against a bf16 model: 0.74 cores
        (0.190, 0.130, 2, 2),  # 12 MP full decode: decoding is the larger share
        (0.005, 0.130, 16, 1),
        (0.190, 0.130, 16, 10),
        (0.300, 0.000, 8, 8),  # a model costing no CPU (an accelerator): every core decodes
        (0.0, 0.130, 4, 1),  # nothing measured: one worker, as the old default on small hosts
        (0.190, 0.130, 1, 0),  # one core: decode in-process
    ],
)
def test_workers_cover_decodings_share_of_the_cpu(
    decode_s: float, model_s: float, cores: int, workers: int
) -> None:
    assert decode_workers_for(decode_s, model_s, cores) == workers


def test_more_decoding_never_means_fewer_workers() -> None:
    for cores in (2, 4, 16, 64):
        counts = [decode_workers_for(ms / 1000, 0.1, cores) for ms in range(0, 2000, 7)]
        assert counts == sorted(counts) and counts[0] >= 1 and counts[-1] <= cores


def _embed(embedder: OpenClipEmbedder, paths: list[Path]) -> tuple[np.ndarray, list[Skipped]]:
    vectors = np.full((len(paths), embedder.dim), np.nan, dtype=np.float32)
    skipped: list[Skipped] = []
    seen: list[int] = []

    def on_batch(positions: list[int], batch: np.ndarray, skips: list) -> None:
        vectors[positions] = batch
        seen.extend(positions + [p for p, _ in skips])
        skipped.extend(skip for _, skip in skips)

    embedder.embed_image_files(paths, on_batch)
    assert sorted(seen) == list(range(len(paths)))
    return vectors, skipped


def test_an_unsized_run_measures_its_first_batch_and_embeds_like_a_fixed_one(
    tiny_model: str, tmp_path: Path
) -> None:
    paths = make_images(tmp_path, 13)
    (tmp_path / "broken.png").write_bytes(b"not a png")  # in the first batch
    (tmp_path / "empty.png").write_bytes(b"")  # in a worker's batch
    paths = [paths[0], tmp_path / "broken.png", *paths[1:9], tmp_path / "empty.png", *paths[9:]]
    spec = ModelSpec(tiny_model, None)
    common = {
        "device": "cpu",
        "backend": "torch",
        "batch_size": 4,
        "hash_cache": tmp_path / "hashes.json",
    }
    sized = OpenClipEmbedder.load(spec, **common)
    fixed = OpenClipEmbedder.load(spec, num_workers=0, **common)
    assert sized.size_workers and not fixed.size_workers
    ours, our_skips = _embed(sized, paths)
    reference, reference_skips = _embed(fixed, paths)
    assert 1 <= sized.num_workers <= max(1, usable_cores()) and fixed.num_workers == 0
    np.testing.assert_allclose(ours, reference, atol=1e-6)
    assert our_skips == reference_skips
    assert [(Path(s.path).name, s.reason) for s in our_skips] == [
        ("broken.png", "not-an-image"),
        ("empty.png", "empty"),
    ]
