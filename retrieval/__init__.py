"""mmsearch: cross-modal image/text search with CLIP embeddings in FAISS indexes.

The public API is small: open an index with `open_for_search` and query the returned
`SearchService`; build or update one with `open_for_indexing` + `index_images`. Nothing heavy
(torch, open_clip, faiss) is imported until it is used.
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
    from .app import open_for_indexing, open_for_search
    from .ingest import IndexReport, index_images
    from .service import SearchService

__version__ = "0.1.0"

_LAZY = {
    "open_for_indexing": "app",
    "open_for_search": "app",
    "index_images": "ingest",
    "IndexReport": "ingest",
    "SearchService": "service",
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
    "InvalidQueryError",
    "MmsearchError",
    "ModelIdentity",
    "ModelSpec",
    "ModelUnavailableError",
    "SearchService",
    "Skipped",
    "index_images",
    "open_for_indexing",
    "open_for_search",
]
