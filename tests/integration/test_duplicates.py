"""Near-duplicates: the faiss range search against brute force, the greedy grouping by hand, and
`mmsearch duplicates` on planted copies among the sample photos."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from clirun import invoke, run_ok
from fastapi.testclient import TestClient
from httpkit import open_app
from PIL import Image
from testdata import shared_images_or_skip

from retrieval.index import range_pairs
from retrieval.search.duplicates import find_duplicates, group_pairs
from retrieval.storage.store import IndexStore
from retrieval.types import IMAGES


def planted_vectors(n: int, dim: int, groups: int, seed: int = 0) -> np.ndarray:
    """`n` random unit vectors, the last 2 * `groups` of them noisy copies of the first ones."""
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    for g in range(groups):
        for copy in range(2):
            noise = rng.standard_normal(dim).astype(np.float32) * 0.02 * (copy + 1)
            vectors[n - 2 * groups + 2 * g + copy] = vectors[g] + noise
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def brute_pairs(vectors: np.ndarray, threshold: float) -> set[tuple[int, int]]:
    sims = vectors @ vectors.T
    rows, cols = np.nonzero(np.triu(sims >= threshold, 1))
    return set(zip(rows.tolist(), cols.tolist(), strict=True))


@pytest.mark.parametrize("screen_dim", [16, 64])
def test_range_pairs_equal_brute_force(screen_dim: int) -> None:
    """Screened in a 16-d projection or compared in full (64-d): the same pairs."""
    vectors = planted_vectors(3000, 64, groups=40)
    left, right, scores = range_pairs(vectors, 0.95, screen_dim=screen_dim)
    got = set(zip(left.tolist(), right.tolist(), strict=True))
    want = brute_pairs(vectors, 0.95)
    assert len(want) >= 40 * 2  # the planted pairs are there to find
    assert got == want
    want_scores = [vectors[a] @ vectors[b] for a, b in zip(left, right, strict=True)]
    np.testing.assert_allclose(scores, want_scores, atol=1e-5)


def test_group_pairs_takes_neighbours_of_the_best_first() -> None:
    # 0~1, 1~2 (a chain), 3~4; row 1 ranks best, so it takes 0 and 2; 0 and 2 are not alike.
    left, right = np.array([0, 1, 3]), np.array([1, 2, 4])
    scores = np.array([0.97, 0.96, 0.99])
    rank = {0: 2, 1: 0, 2: 3, 3: 4, 4: 1}.__getitem__
    groups = group_pairs(left, right, scores, rank)
    assert groups == [[(1, 1.0), (0, 0.97), (2, 0.96)], [(4, 1.0), (3, 0.99)]]


def write_planted(folder: Path, sources: list[Path]) -> list[set[str]]:
    """Copy the photos and plant variants of the first three; the planted groups by file name."""
    folder.mkdir(parents=True)
    for source in sources:
        shutil.copyfile(source, folder / source.name)
    copy, resized, recompressed = sources[:3]
    shutil.copyfile(copy, folder / f"copy_{copy.name}")
    with Image.open(resized) as image:
        rgb = image.convert("RGB")
        rgb.resize((rgb.width // 2, rgb.height // 2)).save(folder / "half.jpg", quality=90)
    with Image.open(recompressed) as image:
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, "JPEG", quality=30)
        (folder / "q30.jpg").write_bytes(buffer.getvalue())
        image.convert("RGB").resize((image.width * 3 // 4, image.height * 3 // 4)).save(
            folder / "small_q30.jpg", quality=30
        )
    return [
        {copy.name, f"copy_{copy.name}"},
        {resized.name, "half.jpg"},
        {recompressed.name, "q30.jpg", "small_q30.jpg"},
    ]


# The tiny random-weight model maps every photo close to one direction: distinct sample photos
# score up to ~0.9992 against each other, and a light crop 0.990-0.9996, so neither the default
# 0.95 nor any other threshold separates crops from distinct photos with it (real CLIP scores
# distinct photos well under 0.95). Identical bytes, resized and recompressed copies score
# > 0.99995 even with random weights, so this test plants those and uses a threshold that the
# distinct photos are checked to stay under; the default threshold is tested on CLIP-like
# vectors above.
PIXEL_THRESHOLD = 0.9999


def test_duplicates_finds_planted_copies_among_sample_photos(
    tiny_model: str, tmp_path: Path
) -> None:
    sources = shared_images_or_skip(60)
    planted = write_planted(tmp_path / "photos", sources)
    index = tmp_path / "index"
    run_ok("index", tmp_path / "photos", "--model", tiny_model, "--index", index, "--quiet")
    with IndexStore.open(index, readonly=True) as store:
        ids, vectors = store.catalog.get_vectors(IMAGES, store.identity.dim)
        names = {item.id: Path(item.path or "").name for item in store.catalog.iter_items(IMAGES)}
        report = find_duplicates(store, PIXEL_THRESHOLD)
    # The test means something only if distinct photos stay under the threshold.
    distinct = [n for n, i in enumerate(ids) if not any(names[int(i)] in g for g in planted)]
    sims = vectors[distinct] @ vectors[distinct].T
    np.fill_diagonal(sims, -1)
    assert sims.max() < PIXEL_THRESHOLD
    found = [{Path(m.path or "").name for m in group.items} for group in report.groups]
    assert sorted(found, key=sorted) == sorted(planted, key=sorted)
    by_first = {Path(g.items[0].path or "").name: g for g in report.groups}
    # The best representative comes first: the full-size original over its shrunk copies.
    assert sources[1].name in by_first and sources[2].name in by_first
    assert all(m.score >= PIXEL_THRESHOLD for g in report.groups for m in g.items)
    assert report.groups[0].items[0].score == 1.0 and len(report.groups[0].items) == 3

    printed = json.loads(run_ok("duplicates", "--threshold", PIXEL_THRESHOLD, "--json",
                                "--index", index))  # fmt: skip
    assert printed == report.to_dict()
    assert printed["threshold"] == PIXEL_THRESHOLD
    table = run_ok("duplicates", "--threshold", PIXEL_THRESHOLD, "--index", index)
    assert table.startswith("group 1 (3 images)")

    with open_app(index) as (app, _), TestClient(app) as client:
        answer = client.get("/duplicates", params={"threshold": PIXEL_THRESHOLD})
        assert answer.status_code == 200 and answer.json() == printed
        assert client.get("/duplicates", params={"threshold": 1.5}).status_code == 422
        assert "/duplicates" in client.get("/openapi.json").json()["paths"]


def test_duplicates_rejects_a_bad_threshold(tiny_model: str, image_folder: Path) -> None:
    run_ok("index", image_folder, "--model", tiny_model, "--quiet")
    result = invoke("duplicates", "--threshold", "1.5")
    assert result.exit_code == 2
    assert result.stderr.startswith("error: --threshold must be a cosine")
