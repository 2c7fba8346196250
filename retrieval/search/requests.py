"""What a search asks and what it answers: SearchRequest (text, image or composed parts; target,
page, filters, cutoff, collapse, mode) and SearchResult (the one answer shape of `mmsearch query
--json` and the HTTP search endpoints), with the checks every request passes."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import MAX_K
from ..errors import InvalidQueryError
from ..types import PRODUCTS, Hit
from .merch import Boost, Facet, Sort
from .queries import DEFAULT_DUPLICATE_THRESHOLD, QueryPart

# Product search scores each product by w * title similarity + (1 - w) * best image similarity.
# Text-to-image cosine scores of CLIP sit lower than text-to-text ones, so an even split already
# lets a strong title match lift a product; callers tune it per request.
DEFAULT_TEXT_WEIGHT = 0.5


@dataclass(frozen=True)
class SearchRequest:
    """One search: by text or by image, over images, texts or products, with optional filters
    (products only): `{"category": "shoes", "price_min": 10, "price_max": 50}`."""

    text: str | None = None
    image: Path | bytes | None = None
    target: str | None = None  # None: products when the index has a catalog, else images
    k: int = 10
    offset: int = 0
    filters: Mapping[str, Any] = field(default_factory=dict)
    text_weight: float = DEFAULT_TEXT_WEIGHT
    # How the query echo names an image given as bytes (an upload's file name, "base64");
    # an image given as a path is echoed as its absolute path.
    image_name: str | None = None
    # A composed query (instead of text/image): weighted parts, see search/queries.py.
    parts: tuple[QueryPart, ...] = ()
    # "More like this": the stored vector of this item is a part, and the item is left out.
    like: int | None = None
    min_score: float | None = None  # drop hits whose cosine score is below this
    collapse: bool = False  # fold near-duplicates of a better hit into it (images, texts)
    duplicate_threshold: float = DEFAULT_DUPLICATE_THRESHOLD
    # semantic (CLIP), keyword (BM25) or hybrid (both, fused); None: hybrid for text queries
    # of an index with a product catalog, else semantic.
    mode: str | None = None
    # Products (merch.py): facet counts beside the results, sort keys (relevance when none),
    # business boosts. A product request with none of text, image, parts and like browses.
    facets: tuple[Facet, ...] = ()
    sort: tuple[Sort, ...] = ()
    boosts: tuple[Boost, ...] = ()

    @property
    def composed(self) -> bool:
        return bool(self.parts) or self.like is not None

    @property
    def browse(self) -> bool:
        """No query at all: list the products passing the filters."""
        return self.text is None and self.image is None and not self.composed

    @property
    def merchandised(self) -> bool:
        return bool(self.facets or self.sort or self.boosts)

    def echo(self, target: str) -> dict[str, Any]:
        """The `query` part of a result: what was searched, with the target resolved."""
        echo: dict[str, Any] = {"target": target, "k": self.k, "offset": self.offset}
        if self.composed:
            echo.update(self._composed_echo())
        elif self.text is not None:
            echo["text"] = self.text
        elif self.image is None:
            pass  # browsing
        elif isinstance(self.image, Path):
            echo["image"] = str(self.image.absolute())
        else:
            echo["image"] = self.image_name
        if self.filters:
            echo["filters"] = dict(self.filters)
        if target == PRODUCTS and self.text is not None:
            echo["text_weight"] = self.text_weight
        if self.min_score is not None:
            echo["min_score"] = self.min_score
        if self.collapse:
            echo["collapse"] = True
        if self.facets:
            echo["facets"] = [facet.echo() for facet in self.facets]
        if self.sort:
            echo["sort"] = [key.echo() for key in self.sort]
        if self.boosts:
            echo["boosts"] = [boost.echo() for boost in self.boosts]
        return echo

    def _composed_echo(self) -> dict[str, Any]:
        echo: dict[str, Any] = {}
        if self.parts:
            echo["parts"] = [part.echo() for part in self.parts]
        if self.like is not None:
            echo["like"] = self.like
        return echo


@dataclass(frozen=True)
class SearchResult:
    """One page of hits and the query as the service understood it: the one answer shape of
    `mmsearch query --json` and the HTTP search endpoints."""

    query: dict[str, Any]
    hits: list[Hit]
    has_more: bool = False  # a next page (offset + k) has at least one hit
    # Browsing and merchandised product searches: how many products match in all, and the
    # requested facets' counts (merch.facet_counts).
    total: int | None = None
    facets: dict[str, list[dict[str, Any]]] | None = None

    def to_dict(self, **extra: Any) -> dict[str, Any]:
        """`{"query": {...}, "results": [...], "has_more": bool}`, with `total` and `facets`
        when known, then `extra` (e.g. the HTTP `took_ms`)."""
        results = [hit.to_dict() for hit in self.hits]
        out = {"query": self.query, "results": results, "has_more": self.has_more}
        if self.total is not None:
            out["total"] = self.total
        if self.facets is not None:
            out["facets"] = self.facets
        return {**out, **extra}

    def to_json(self, **extra: Any) -> str:
        """Compact JSON of to_dict(): the exact bytes both front ends send."""
        return json.dumps(
            self.to_dict(**extra), ensure_ascii=False, allow_nan=False, separators=(",", ":")
        )


def check_k(k: int, offset: int = 0) -> None:
    """Reject result counts that cannot be meant."""
    if not 1 <= k <= MAX_K:
        raise InvalidQueryError(f"k must be between 1 and {MAX_K}, got {k}")
    if offset < 0 or offset + k > MAX_K * 10:
        raise InvalidQueryError(f"offset must be between 0 and {MAX_K * 10 - k}, got {offset}")


__all__ = ["DEFAULT_TEXT_WEIGHT", "SearchRequest", "SearchResult", "check_k"]
