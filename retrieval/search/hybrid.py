"""Search modes and reciprocal rank fusion: how keyword (BM25) and semantic (CLIP) rankings
become one ranking. Pure functions; the service runs the two searches and calls `fuse`."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Generic, TypeVar

from ..types import Hit

SEMANTIC = "semantic"
KEYWORD = "keyword"
HYBRID = "hybrid"
MODES = (SEMANTIC, KEYWORD, HYBRID)

# Reciprocal rank fusion: score(d) = sum over rankings of 1 / (RRF_K + rank(d)), ranks from 1.
# 60 is the constant of Cormack, Clarke & Buettcher (SIGIR 2009), who found it robust across
# collections, and the default of Elasticsearch, OpenSearch and Azure AI Search. A large k
# flattens the curve, so one list's top hit cannot outvote an item that both lists rank well:
# with k=60, ranks (1, absent) score 1/61 = 0.0164 while ranks (3, 3) score 2/63 = 0.0317.
# RRF uses ranks only, so BM25 and cosine scores never need to be put on one scale.
RRF_K = 60
# Each ranking contributes its top HYBRID_DEPTH (or k + offset, if more): an item ranked below
# 100 in both lists scores under 2/160, below any item that either list ranks in its top 19.
HYBRID_DEPTH = 100

K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True)
class Fused(Generic[K]):
    """One fused result: its key, RRF score, and its 1-based rank in each ranking that has it."""

    key: K
    score: float
    ranks: dict[str, int]


def fuse(rankings: Mapping[str, Sequence[K]], k: int = RRF_K) -> list[Fused[K]]:
    """Reciprocal rank fusion of best-first rankings (signal name -> keys), best first.

    Ties (equal score) go to the item with the better best rank, then to the signal named
    first in `rankings`, so the order is deterministic.

    >>> [f.key for f in fuse({"semantic": ["a", "b"], "keyword": ["b", "c"]})]
    ['b', 'a', 'c']
    """
    ranks: dict[K, dict[str, int]] = {}
    for signal, keys in rankings.items():
        for rank, key in enumerate(keys, start=1):
            ranks.setdefault(key, {}).setdefault(signal, rank)
    order = {signal: n for n, signal in enumerate(rankings)}
    fused = [
        Fused(key, sum(1.0 / (k + rank) for rank in by_signal.values()), by_signal)
        for key, by_signal in ranks.items()
    ]

    def sort_key(item: Fused[K]) -> tuple[float, int, int]:
        best_signal = min(item.ranks, key=lambda s: (item.ranks[s], order[s]))
        return (-item.score, item.ranks[best_signal], order[best_signal])

    return sorted(fused, key=sort_key)


def fuse_hits(
    rankings: Mapping[str, Sequence[Hit]],
    key: Callable[[Hit], Hashable],
    *,
    k: int,
    offset: int = 0,
) -> list[Hit]:
    """One page of the RRF fusion of hit lists: each hit keeps the fields of the first ranking
    that has it, and gets the fused rank, the RRF score and `signals` (its rank per ranking).
    `key` says when two hits are the same result (an item id, or a product id)."""
    first: dict[Hashable, Hit] = {}
    for hits in rankings.values():
        for hit in hits:
            first.setdefault(key(hit), hit)
    fused = fuse({signal: [key(hit) for hit in hits] for signal, hits in rankings.items()})
    return [
        replace(first[f.key], rank=offset + n + 1, score=f.score, signals=f.ranks)
        for n, f in enumerate(fused[offset : offset + k])
    ]


__all__ = [
    "HYBRID",
    "HYBRID_DEPTH",
    "KEYWORD",
    "MODES",
    "RRF_K",
    "SEMANTIC",
    "Fused",
    "fuse",
    "fuse_hits",
]
