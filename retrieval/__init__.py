"""mmsearch: cross-modal image/text search with CLIP embeddings in FAISS indexes.

The public API is small: open an index with `open_for_search` and query the returned
`SearchService` (a context manager) with a `SearchRequest`; build or update one with
`open_for_indexing` + `sync_images_and_texts` (or, for any writer, an `Indexer`: the one write
path). Nothing heavy (torch, open_clip, faiss) is
imported until it is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import (
    ImageDecodeError,
    IndexBusyError,
    IndexMismatchError,
    IndexNotFoundError,
    InvalidQueryError,
    MmsearchError,
    ModelUnavailableError,
)
from .types import Hit, ModelIdentity, ModelSpec, Skipped

if TYPE_CHECKING:
    from .compose import open_for_indexing, open_for_search
    from .ingest.indexer import Indexer
    from .ingest.sync import IndexReport, sync_images_and_texts
    from .search.requests import SearchRequest, SearchResult
    from .search.service import SearchService

__version__ = "0.1.0"

_LAZY = {
    "open_for_indexing": "compose",
    "open_for_search": "compose",
    "sync_images_and_texts": "ingest.sync",
    "IndexReport": "ingest.sync",
    "Indexer": "ingest.indexer",
    "SearchRequest": "search.requests",
    "SearchResult": "search.requests",
    "SearchService": "search.service",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(name)
    from importlib import import_module

    return getattr(import_module(f".{module}", __name__), name)


__all__ = [
    "Hit",
    "ImageDecodeError",
    "IndexBusyError",
    "IndexMismatchError",
    "IndexNotFoundError",
    "IndexReport",
    "Indexer",
    "InvalidQueryError",
    "MmsearchError",
    "ModelIdentity",
    "ModelSpec",
    "ModelUnavailableError",
    "SearchRequest",
    "SearchResult",
    "SearchService",
    "Skipped",
    "open_for_indexing",
    "open_for_search",
    "sync_images_and_texts",
]
