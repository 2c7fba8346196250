"""Vector indexes: a faiss implementation keyed by stable int64 ids and an exact numpy oracle.
This package is the only part of mmsearch that imports faiss."""

from __future__ import annotations

from retrieval.index.exact import Scores, exact_search
from retrieval.index.faiss_index import (
    INDEX_TYPES,
    FaissIndex,
    check_index_type,
    gpu_available,
    resolve_index_type,
)
from retrieval.index.neighbours import range_pairs

__all__ = [
    "INDEX_TYPES",
    "FaissIndex",
    "check_index_type",
    "Scores",
    "exact_search",
    "gpu_available",
    "range_pairs",
    "resolve_index_type",
]
