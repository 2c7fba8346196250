"""Micro-batching of text queries and the LRU caches, against a counting fake encoder."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from retrieval.search.batching import BatchConfig, BatchingEmbedder, BatchingTextEncoder, LruCache

DIM = 8


class FakeEncoder:
    """Deterministic vectors per text; records every call's batch; can fail on a marker text."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.calls: list[list[str]] = []
        self.delay_s = delay_s
        self.lock = threading.Lock()

    def __call__(self, texts: list[str]) -> np.ndarray:
        with self.lock:
            self.calls.append(list(texts))
        if any(text == "boom" for text in texts):
            raise ValueError("cannot embed boom")
        time.sleep(self.delay_s)
        return np.stack([vector_for(text) for text in texts]) if texts else np.zeros((0, DIM))

    @property
    def texts_seen(self) -> int:
        return sum(len(call) for call in self.calls)


def vector_for(text: str) -> np.ndarray:
    seed = sum(text.encode()) + len(text)
    vector = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
    return vector / np.linalg.norm(vector)


def test_concurrent_queries_share_forward_passes_and_get_their_own_rows() -> None:
    fake = FakeEncoder(delay_s=0.02)
    encoder = BatchingTextEncoder(fake, max_batch=64, max_wait_s=0.01, cache_size=0)
    texts = [f"query {n}" for n in range(32)]
    with ThreadPoolExecutor(32) as pool:
        results = list(pool.map(lambda text: encoder.encode([text]), texts))
    encoder.close()
    for text, rows in zip(texts, results, strict=True):
        assert rows.shape == (1, DIM) and rows.dtype == np.float32
        np.testing.assert_array_equal(rows[0], vector_for(text))
    assert fake.texts_seen == 32
    assert len(fake.calls) < 32 / 2  # batched: far fewer passes than queries
    assert encoder.stats().batches == len(fake.calls)


def test_batches_never_exceed_max_batch() -> None:
    fake = FakeEncoder(delay_s=0.01)
    encoder = BatchingTextEncoder(fake, max_batch=4, max_wait_s=0.02, cache_size=0)
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda n: encoder.encode([f"t{n}"]), range(16)))
    encoder.close()
    assert max(len(call) for call in fake.calls) <= 4
    assert fake.texts_seen == 16


def test_a_lone_query_waits_at_most_about_max_wait() -> None:
    encoder = BatchingTextEncoder(FakeEncoder(), max_wait_s=0.005, cache_size=0)
    encoder.encode(["warm the worker thread"])
    started = time.perf_counter()
    encoder.encode(["alone"])
    assert time.perf_counter() - started < 0.1
    encoder.close()


def test_repeated_queries_come_from_the_cache() -> None:
    fake = FakeEncoder()
    encoder = BatchingTextEncoder(fake, cache_size=8)
    first = encoder.encode(["red shoes", "blue hat"])
    again = encoder.encode(["blue hat", "red shoes", "red shoes"])
    np.testing.assert_array_equal(again, first[[1, 0, 0]])
    assert fake.texts_seen == 2
    stats = encoder.stats()
    assert (stats.cache_hits, stats.cache_misses, stats.cache_entries) == (3, 2, 2)
    again[0, 0] = 42.0  # callers get their own copy; the cached vector is untouched
    np.testing.assert_array_equal(encoder.encode(["blue hat"])[0], first[1])
    encoder.close()


def test_cache_size_zero_embeds_every_time() -> None:
    fake = FakeEncoder()
    encoder = BatchingTextEncoder(fake, cache_size=0)
    for _ in range(3):
        encoder.encode(["same"])
    encoder.close()
    assert fake.texts_seen == 3


def test_duplicate_texts_in_one_call_are_embedded_once() -> None:
    fake = FakeEncoder()
    encoder = BatchingTextEncoder(fake, cache_size=0)
    rows = encoder.encode(["a", "b", "a"])
    encoder.close()
    np.testing.assert_array_equal(rows[0], rows[2])
    assert fake.texts_seen == 2


def test_one_failing_query_does_not_fail_its_batch_companions() -> None:
    fake = FakeEncoder(delay_s=0.01)
    encoder = BatchingTextEncoder(fake, max_wait_s=0.05, cache_size=0)

    def run(text: str) -> object:
        try:
            return encoder.encode([text])
        except ValueError as err:
            return err

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(run, ["fine 1", "boom", "fine 2", "fine 3"]))
    encoder.close()
    assert isinstance(results[1], ValueError)
    for text, result in zip(
        ["fine 1", "fine 2", "fine 3"], results[0:1] + results[2:], strict=True
    ):
        assert isinstance(result, np.ndarray)
        np.testing.assert_array_equal(result[0], vector_for(text))


def test_closed_encoder_refuses_work() -> None:
    encoder = BatchingTextEncoder(FakeEncoder())
    encoder.encode(["x"])
    encoder.close()
    encoder.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        encoder.encode(["y"])


def test_lru_cache_evicts_least_recently_used_by_weight() -> None:
    cache: LruCache[str, bytes] = LruCache(10, weigh=len)
    cache.put("a", b"1234")
    cache.put("b", b"1234")
    assert cache.get("a") == b"1234"  # a is now the most recent
    cache.put("c", b"1234")  # 12 > 10: evicts b
    assert cache.get("b") is None and cache.get("a") and cache.get("c")
    cache.put("huge", b"x" * 11)  # larger than the whole cache: not stored, nothing evicted
    assert cache.get("huge") is None and len(cache) == 2


def test_batching_embedder_loads_lazily_and_passes_images_through() -> None:
    loads = []

    class Inner:
        def encode_texts(self, texts: list[str], batch_size: int = 256) -> np.ndarray:
            return np.stack([vector_for(t) for t in texts])

        def encode_image_sources(self, sources: list[object]) -> np.ndarray:
            return np.ones((len(sources), DIM), dtype=np.float32)

    def load() -> Inner:
        loads.append(1)
        return Inner()

    embedder = BatchingEmbedder(load, BatchConfig(cache_size=4))
    assert loads == []
    np.testing.assert_array_equal(embedder.encode_texts(["a"])[0], vector_for("a"))
    assert embedder.encode_image_sources([b"png"]).shape == (1, DIM)
    assert loads == [1]
    embedder.close()
