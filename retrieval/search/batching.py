"""Micro-batching of concurrent text-query embeddings, plus an LRU cache of query vectors.

A server answers many small text queries at once. Embedding each in its own forward pass wastes
the model: one pass over 16 texts costs little more than a pass over one. `BatchingTextEncoder`
queues texts from any number of threads, and one worker thread embeds what has gathered (waiting
at most `max_wait_s` after the oldest arrival for companions) in one stacked call. Identical
query texts are answered from an LRU cache without touching the model."""

from __future__ import annotations

import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

import numpy as np

from ..config import DEFAULT_CACHE_SIZE, DEFAULT_MAX_BATCH, DEFAULT_MAX_WAIT_S, BatchConfig
from ..embedders.protocols import QueryEmbedder
from ..types import Vectors

TextEncode = Callable[[list[str]], Vectors]
"""Embeds a list of texts into an (n, dim) array of normalised float32 rows."""


@dataclass(frozen=True)
class BatchStats:
    """Counters since start: forward passes, texts embedded, cache hits and misses."""

    batches: int
    texts_embedded: int
    cache_hits: int
    cache_misses: int
    cache_entries: int


class _Pending:
    """Texts of one caller waiting for their vectors."""

    __slots__ = ("texts", "future", "enqueued")

    def __init__(self, texts: list[str]) -> None:
        self.texts = texts
        self.future: Future[Vectors] = Future()
        self.enqueued = time.monotonic()


K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class LruCache(Generic[K, V]):
    """Thread-safe least-recently-used map holding at most `capacity` units, where each value
    weighs `weigh(value)` units (1 by default: a count); capacity 0 stores nothing."""

    def __init__(self, capacity: int, weigh: Callable[[V], int] = lambda _: 1) -> None:
        if capacity < 0:
            raise ValueError(f"cache capacity must be >= 0, got {capacity}")
        self.capacity = capacity
        self._weigh = weigh
        self._entries: OrderedDict[K, tuple[V, int]] = OrderedDict()
        self._used = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: K) -> V | None:
        """The cached value (now most recently used), or None."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return entry[0]

    def put(self, key: K, value: V) -> None:
        """Store `value`, evicting least recently used entries past `capacity`."""
        weight = self._weigh(value)
        if weight > self.capacity:
            return  # would evict everything and still not fit
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._used -= old[1]
            self._entries[key] = (value, weight)
            self._used += weight
            while self._used > self.capacity:
                _, (_, dropped) = self._entries.popitem(last=False)
                self._used -= dropped


class BatchingTextEncoder:
    """Thread-safe `encode(texts)` that merges concurrent calls into shared forward passes.

    Example:
        encoder = BatchingTextEncoder(embedder.encode_texts, max_batch=32, cache_size=1024)
        vectors = encoder.encode(["red shoes"])  # (1, dim), from any thread
        encoder.close()
    """

    def __init__(
        self,
        encode: TextEncode,
        *,
        max_batch: int = DEFAULT_MAX_BATCH,
        max_wait_s: float = DEFAULT_MAX_WAIT_S,
        cache_size: int = DEFAULT_CACHE_SIZE,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if max_wait_s < 0:
            raise ValueError(f"max_wait_s must be >= 0, got {max_wait_s}")
        self._encode = encode
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.cache: LruCache[str, np.ndarray] = LruCache(cache_size)
        self._queue: queue.SimpleQueue[_Pending | None] = queue.SimpleQueue()
        self._worker: threading.Thread | None = None
        # Guards starting the worker and the closed flag, so no text is queued behind the stop.
        self._state_lock = threading.Lock()
        self._closed = False
        self._batches = 0
        self._texts_embedded = 0

    @classmethod
    def from_config(cls, encode: TextEncode, config: BatchConfig) -> BatchingTextEncoder:
        """An encoder with the settings of `config`."""
        return cls(
            encode,
            max_batch=config.max_batch,
            max_wait_s=config.max_wait_s,
            cache_size=config.cache_size,
        )

    def encode(self, texts: Sequence[str]) -> Vectors:
        """(len(texts), dim) vectors; blocks until the shared pass that holds them has run."""
        texts = list(texts)
        rows: list[np.ndarray | None] = [self.cache.get(text) for text in texts]
        missing = list(dict.fromkeys(t for t, row in zip(texts, rows, strict=True) if row is None))
        if missing:
            fresh = dict(zip(missing, self._submit(missing), strict=True))
            rows = [fresh[t] if row is None else row for t, row in zip(texts, rows, strict=True)]
        if not rows:
            return self._encode([])
        return np.stack([row for row in rows if row is not None]).astype(np.float32, copy=False)

    def _submit(self, texts: list[str]) -> Vectors:
        pending = _Pending(texts)
        with self._state_lock:
            if self._closed:
                raise RuntimeError("BatchingTextEncoder is closed")
            if self._worker is None:
                # Started lazily so that building a service (e.g. for the CLI) starts no thread.
                self._worker = threading.Thread(
                    target=self._run, name="mmsearch-text-batcher", daemon=True
                )
                self._worker.start()
            self._queue.put(pending)
        return pending.future.result()

    def stats(self) -> BatchStats:
        """A snapshot of the counters."""
        return BatchStats(
            batches=self._batches,
            texts_embedded=self._texts_embedded,
            cache_hits=self.cache.hits,
            cache_misses=self.cache.misses,
            cache_entries=len(self.cache),
        )

    def close(self) -> None:
        """Stop the worker after the queued texts are embedded; later calls raise."""
        with self._state_lock:
            if self._closed:
                return
            self._closed = True
            worker = self._worker
            if worker is not None:
                self._queue.put(None)
        if worker is not None:
            worker.join()

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch, stop = self._gather(first)
            self._embed(batch)
            if stop:
                return

    def _gather(self, first: _Pending) -> tuple[list[_Pending], bool]:
        """`first` plus whatever else arrives before its wait runs out or the batch is full."""
        batch, count = [first], len(first.texts)
        # The deadline counts from the oldest caller's arrival, so texts that queued up during
        # the previous pass go at once instead of waiting again.
        deadline = first.enqueued + self.max_wait_s
        while count < self.max_batch:
            try:
                item = self._queue.get(timeout=max(deadline - time.monotonic(), 0.0))
            except queue.Empty:
                break
            if item is None:
                return batch, True
            batch.append(item)
            count += len(item.texts)
        return batch, False

    def _embed(self, batch: list[_Pending]) -> None:
        texts = list(dict.fromkeys(text for pending in batch for text in pending.texts))
        try:
            vectors = self._encode(texts)
        except BaseException as err:  # noqa: BLE001 (handed to every waiting caller)
            if len(batch) > 1:
                # One caller's text must not fail the others': retry them one by one.
                for pending in batch:
                    self._embed([pending])
                return
            batch[0].future.set_exception(err)
            return
        self._batches += 1
        self._texts_embedded += len(texts)
        by_text = dict(zip(texts, vectors, strict=True))
        for text, vector in by_text.items():
            stored = np.array(vector, dtype=np.float32, copy=True)
            stored.flags.writeable = False  # shared by every later caller: nobody may edit it
            self.cache.put(text, stored)
        for pending in batch:
            pending.future.set_result(np.stack([by_text[text] for text in pending.texts]))


class BatchingEmbedder:
    """A QueryEmbedder whose text queries go through a BatchingTextEncoder; images pass through.

    It lets a SearchService batch and cache text queries without knowing about it. The model
    loads on first use, as with any embedder factory:
    `embedder = BatchingEmbedder(load_model, BatchConfig())`, then
    `SearchService(store, lambda: embedder, text_batcher=embedder.texts)`, which stops the
    batcher when the service closes.
    """

    def __init__(self, load: Callable[[], QueryEmbedder], config: BatchConfig) -> None:
        self._load = load
        self._inner: QueryEmbedder | None = None
        self._load_lock = threading.Lock()
        self.texts = BatchingTextEncoder.from_config(
            lambda texts: self.inner.encode_texts(texts), config
        )

    @property
    def inner(self) -> QueryEmbedder:
        """The wrapped embedder, loaded once on first use."""
        # Image queries (request threads) and the batching worker may both get here first.
        with self._load_lock:
            if self._inner is None:
                self._inner = self._load()
            return self._inner

    def encode_texts(self, texts: list[str], batch_size: int = 0) -> Vectors:
        """Vectors for `texts`, batched with other threads' queries (batch_size is unused)."""
        return self.texts.encode(texts)

    def encode_image_sources(self, sources: list[Path | bytes]) -> Vectors:
        """Image queries are not batched: each carries its own decode, which dominates."""
        return self.inner.encode_image_sources(sources)

    def close(self) -> None:
        """Stop the batching worker."""
        self.texts.close()
