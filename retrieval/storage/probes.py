"""Tuning probes that look like what users type, for recall tuning (index/tuning.py).

The collection's own stored vectors are easy queries: a stored text's nearest neighbours sit in
a tight cluster around it, so an IVF index finds them with few probes, and a recall measured
with them (0.96) did not hold for short user queries (0.925 measured on a 60,000-text IVF
index, benchmarks/tuning_probes.py). So tuning also searches with:

- `text_spans`: short spans (2 to 4 words) of the index's own texts (texts, product titles,
  image captions), embedded by the model's text tower, as a shopper types them;
- `recorded`: the query vectors a server received (`mmsearch serve --record-queries`), a
  reservoir sample kept in the index directory (recorded_queries.npy).

The text tower is passed in by the write path (ingest's Indexer), so storage and index/ load
no model themselves.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..files import atomic_path
from ..types import IMAGES, TEXTS, Vectors
from .catalog import Catalog

logger = logging.getLogger(__name__)

TEXT_SPANS = "text_spans"
RECORDED = "recorded"
RECORDED_FILE = "recorded_queries.npy"
# Spans embedded per tuning: 1,000 leave a recall standard error of ~0.003 (0.0024 measured at
# 0.96, benchmarks/tuning_probes.py), and cost one text-tower pass over 1,000 short texts
# (seconds on a CPU for ViT-B-32) once per re-tune, which only approximate indexes (50,000+
# vectors by default) have.
SPAN_PROBES = 1000
SPAN_WORDS = (2, 4)  # words per span: what a search box receives
# Query vectors a server keeps: 1,000 x 512 float32 is 2 MiB on disk, and as many as
# SPAN_PROBES, so recorded queries weigh like the spans when both exist.
RECORDED_QUERIES = 1000
# Recorded queries tune only from this many on: the recall of fewer than 100 queries is known
# to +-0.03 or worse, and its lower confidence bound would force a needlessly wide search.
MIN_RECORDED = 100
# A server rewrites the sample at most this often (and when it closes).
RECORD_FLUSH_S = 30.0
SEED = 1234

TextEmbedder = Callable[[list[str]], Vectors]


def sample_texts(catalog: Catalog, collection: str, count: int, seed: int = SEED) -> list[str]:
    """Up to `count` texts users would search `collection` with: its own texts for TEXTS;
    image captions and indexed texts (product titles among them: each product's title is a
    text item) for IMAGES (seeded sample)."""
    collections = ("texts",) if collection == TEXTS else ("images", "texts")
    sql = (
        "SELECT text FROM items WHERE text IS NOT NULL AND collection IN "
        f"({', '.join('?' * len(collections))}) ORDER BY id"
    )
    texts = [row[0] for row in catalog.db.execute(sql, collections) if row[0].strip()]
    rng = random.Random(seed)
    return rng.sample(texts, count) if len(texts) > count else texts


def text_spans(texts: list[str], seed: int = SEED) -> list[str]:
    """One span of 2-4 consecutive words from each text (the whole text when shorter)."""
    rng = random.Random(seed)
    spans = []
    for text in texts:
        words = text.split()
        size = rng.randint(*SPAN_WORDS)
        start = rng.randint(0, max(0, len(words) - size))
        spans.append(" ".join(words[start : start + size]))
    return spans


def span_probes(
    catalog: Catalog, collection: str, embed: TextEmbedder, count: int = SPAN_PROBES
) -> Vectors | None:
    """Embedded spans of the collection's texts (None: no texts to cut them from)."""
    if collection not in (TEXTS, IMAGES):
        return None
    spans = text_spans(sample_texts(catalog, collection, count))
    if not spans:
        return None
    return np.asarray(embed(spans), dtype=np.float32)


def read_recorded(directory: Path, dim: int) -> Vectors | None:
    """The recorded query vectors of an index directory, if any of this dimension."""
    path = Path(directory) / RECORDED_FILE
    try:
        vectors = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        logger.warning("%s is unreadable (%s); tuning without recorded queries", path, err)
        return None
    if vectors.ndim != 2 or vectors.shape[1] != dim or not len(vectors):
        return None
    return np.asarray(vectors, dtype=np.float32)


def tuning_probes(
    catalog: Catalog, directory: Path, collection: str, dim: int, embed: TextEmbedder | None
) -> dict[str, Vectors]:
    """Probe kind -> query vectors for tuning `collection`: text spans (when a text embedder
    is given) and recorded queries (when a server kept MIN_RECORDED or more)."""
    probes: dict[str, Vectors] = {}
    if embed is not None:
        try:
            spans = span_probes(catalog, collection, embed)
        except Exception as err:  # noqa: BLE001
            # Probes only refine the tuning: a model that cannot embed them now (weights
            # gone, out of memory) must not fail the commit, which tunes with the rest.
            logger.warning("tuning %s without text-span probes: %s", collection, err)
            spans = None
        if spans is not None and len(spans):
            probes[TEXT_SPANS] = spans
    recorded = read_recorded(directory, dim)
    if recorded is not None and len(recorded) >= MIN_RECORDED:
        probes[RECORDED] = recorded
    return probes


class QueryRecorder:
    """A reservoir sample (Vitter's algorithm R) of the query vectors a server receives, saved
    atomically to the index directory: every query seen so far has the same chance to be in
    it, however long the server runs. A restarted server continues from the saved sample as if
    its queries were the first ones seen."""

    def __init__(self, directory: Path, dim: int, size: int = RECORDED_QUERIES) -> None:
        self.path = Path(directory) / RECORDED_FILE
        self.size = size
        kept = read_recorded(directory, dim)
        self._vectors = np.zeros((size, dim), dtype=np.float32)
        self._count = 0 if kept is None else min(len(kept), size)
        if kept is not None:
            self._vectors[: self._count] = kept[: self._count]
        self._seen = self._count
        self._rng = np.random.default_rng()
        self._lock = threading.Lock()
        self._dirty = False
        self._flushed = time.monotonic()

    def add(self, vector: np.ndarray) -> None:
        """Offer one query vector to the sample (and save it when RECORD_FLUSH_S passed)."""
        with self._lock:
            self._seen += 1
            if self._count < self.size:
                slot = self._count
                self._count += 1
            else:
                slot = int(self._rng.integers(self._seen))
                if slot >= self.size:
                    return
            self._vectors[slot] = np.asarray(vector, dtype=np.float32).reshape(-1)
            self._dirty = True
            due = time.monotonic() - self._flushed >= RECORD_FLUSH_S
        if due:
            self.flush()

    def flush(self) -> None:
        """Write the sample now if it changed (temp file, then rename)."""
        with self._lock:
            if not self._dirty:
                return
            sample = self._vectors[: self._count].copy()
            self._dirty = False
            self._flushed = time.monotonic()
        try:
            with atomic_path(self.path) as tmp, open(tmp, "wb") as handle:
                np.save(handle, sample, allow_pickle=False)
        except OSError as err:  # a full or read-only disk must not fail the query
            logger.warning("could not save recorded queries to %s: %s", self.path, err)

    @property
    def count(self) -> int:
        return self._count


__all__ = [
    "RECORDED",
    "RECORDED_FILE",
    "TEXT_SPANS",
    "QueryRecorder",
    "read_recorded",
    "span_probes",
    "text_spans",
    "tuning_probes",
]
