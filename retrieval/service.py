"""SearchService: the one application object shared by the CLI and the HTTP app."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .catalog import COLLECTIONS, IMAGES, TEXTS
from .errors import InvalidQueryError
from .store import IndexStore
from .types import Hit, Ids, Vectors

logger = logging.getLogger(__name__)

# faiss answers any k, but a page of results past this is a mistake, not a query.
MAX_K = 1000


class QueryEmbedder(Protocol):
    """What searching needs from a model."""

    def encode_texts(self, texts: list[str], batch_size: int = ...) -> Vectors: ...

    def encode_image_sources(self, sources: list[Path | bytes]) -> Vectors: ...


class SearchService:
    """Embeds queries and searches one index directory."""

    def __init__(self, store: IndexStore, embedder_factory: Callable[[], QueryEmbedder]) -> None:
        self.store = store
        self._embedder_factory = embedder_factory
        self._lock = threading.Lock()

    @cached_property
    def embedder(self) -> QueryEmbedder:
        return self._embedder_factory()

    # -- embedding ----------------------------------------------------------------------------
    def embed_texts(self, texts: list[str]) -> Vectors:
        """Normalised query vectors for texts (rejects empty ones)."""
        for text in texts:
            if not text or not text.strip():
                raise InvalidQueryError("the query text is empty; pass some words to search for")
        return self.embedder.encode_texts([text.strip() for text in texts])

    def embed_image(self, source: Path | bytes) -> Vectors:
        """Normalised (1, dim) query vector for an image file or its bytes."""
        return self.embedder.encode_image_sources([source])

    # -- searching ----------------------------------------------------------------------------
    def search_vector(
        self,
        vector: np.ndarray,
        *,
        target: str = IMAGES,
        k: int = 10,
        offset: int = 0,
        allowed_ids: Ids | None = None,
    ) -> list[Hit]:
        """Top-k hits of `target` for one query vector, skipping the first `offset`."""
        check_k(k, offset)
        if target not in COLLECTIONS:
            raise InvalidQueryError(
                f"unknown target {target!r}; use one of {', '.join(COLLECTIONS)}"
            )
        with self._lock:
            index = self.store.get_index(target)
        if index is None:
            return []
        query = np.asarray(vector, dtype=np.float32).reshape(1, -1)
        scores, ids = index.search(query, k + offset, allowed_ids=allowed_ids)
        return self._hits(scores[0], ids[0], offset)

    def _hits(self, scores: np.ndarray, ids: np.ndarray, offset: int) -> list[Hit]:
        pairs = [(float(s), int(i)) for s, i in zip(scores, ids, strict=True) if i >= 0]
        pairs = pairs[offset:]
        items = self.store.catalog.get_items([i for _, i in pairs])
        hits = []
        for score, item_id in pairs:
            item = items.get(item_id)
            if item is None:
                continue
            hits.append(
                Hit(
                    rank=offset + len(hits) + 1,
                    score=score,
                    id=item_id,
                    path=item.path,
                    text=item.text,
                    metadata=self._metadata(item.product_id, item.metadata),
                )
            )
        return hits

    def _metadata(self, product_id: str | None, metadata: dict[str, Any]) -> dict[str, Any]:
        if product_id is None:
            return metadata
        product = self.store.catalog.get_product(product_id) or {}
        return {**product, **metadata, "product_id": product_id}

    def search_text(
        self, text: str, *, target: str = IMAGES, k: int = 10, offset: int = 0
    ) -> list[Hit]:
        """Text -> images (default) or text -> texts."""
        check_k(k, offset)
        return self.search_vector(self.embed_texts([text])[0], target=target, k=k, offset=offset)

    def search_image(
        self, source: Path | bytes, *, target: str = IMAGES, k: int = 10, offset: int = 0
    ) -> list[Hit]:
        """Image -> images (default) or image -> texts."""
        check_k(k, offset)
        return self.search_vector(self.embed_image(source)[0], target=target, k=k, offset=offset)

    def close(self) -> None:
        self.store.close()


def check_k(k: int, offset: int = 0) -> None:
    """Reject result counts that cannot be meant."""
    if not 1 <= k <= MAX_K:
        raise InvalidQueryError(f"k must be between 1 and {MAX_K}, got {k}")
    if offset < 0 or offset + k > MAX_K * 10:
        raise InvalidQueryError(f"offset must be between 0 and {MAX_K * 10 - k}, got {offset}")


__all__ = ["SearchService", "check_k", "MAX_K", "IMAGES", "TEXTS"]
