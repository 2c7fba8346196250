"""benchmarks/sharded_scale.py's pieces that its 10M figures rest on, at tiny n: shards drawn
from their own seeds are the same whatever n, the streamed exact top-k equals one exact search
over all rows, and the shard reader returns the rows of the ids it is asked for."""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np

from benchmarks.sharded_scale import (
    draw_queries,
    draw_shard,
    shard_path,
    shard_reader,
    streamed_truth,
    top_k_merge,
    worker_generate,
)


def test_a_shard_is_the_same_whatever_n_and_differs_from_the_next() -> None:
    first = draw_shard(1, 300)
    assert first.dtype == np.float16 and first.shape == (300, 512)
    np.testing.assert_array_equal(first, draw_shard(1, 300))
    assert not np.array_equal(first, draw_shard(2, 300))
    norms = np.linalg.norm(first.astype(np.float32), axis=1)
    np.testing.assert_allclose(norms, 1, atol=2e-3)


def test_streamed_truth_equals_one_exact_search_over_all_shards() -> None:
    shards = [draw_shard(s, 400).astype(np.float32) for s in range(3)]
    queries = draw_queries(20)
    flat = faiss.IndexFlatIP(512)
    flat.add(np.vstack(shards))
    expected_scores, expected = flat.search(queries, 10)
    scores, ids = streamed_truth(queries, shards, 10)
    np.testing.assert_array_equal(ids, expected)
    np.testing.assert_allclose(scores, expected_scores, atol=1e-5)


def test_top_k_merge_keeps_the_best_and_prefers_the_earlier_list_on_ties() -> None:
    scores, ids = top_k_merge(
        np.array([[0.9, 0.5]]), np.array([[1, 2]]), np.array([[0.7, 0.5]]), np.array([[8, 9]]), 3
    )
    np.testing.assert_array_equal(ids, [[1, 8, 2]])
    np.testing.assert_allclose(scores, [[0.9, 0.7, 0.5]])


def test_generated_shards_read_back_by_global_id(tmp_path: Path) -> None:
    for worker in range(2):
        assert worker_generate(tmp_path, 600, 200, worker, 2)["shards"] in (1, 2)
    assert worker_generate(tmp_path, 600, 200, 0, 1)["shards"] == 0  # resumed: nothing to do
    read = shard_reader(tmp_path, 200)
    ids = np.array([0, 5, 199, 200, 450, 599])
    expected = np.vstack([np.load(shard_path(tmp_path, 200, int(i) // 200))[i % 200] for i in ids])
    np.testing.assert_array_equal(read(ids), expected.astype(np.float32))
