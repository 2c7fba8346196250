"""A shop's product listings: browsing (filters, no query) and merchandised query searches
(facets, sort, boosts over the products at or above the relevance cutoff). The service hands
in how to rank products for a query (service.py); everything here is about the matched set.

What a merchandised query search answers (README "Shop integration"):
- the matched set is the query's best products (at most MERCH_DEPTH) that pass the filters and
  score at or above the cutoff: `min_score` when given; else, when facets or sort are asked
  for, the score of the best product passing the filters on columns without a facet, minus
  DEFAULT_FACET_MARGIN (a cosine; so ticking a facet value does not move the cutoff; in hybrid
  mode it cuts the semantic ranking, and every keyword match stays); with boosts alone and no
  min_score, the best MERCH_START_DEPTH products;
- boosts rescore that set (merch.boosted), then sort keys (if any) order it, SKU breaking ties;
- `total` is its size, `results` one page of it, and facet counts are over it, each facet
  counted with its own column's filters left out."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from ..errors import InvalidQueryError
from ..storage import product_sql
from ..storage.catalog import Catalog, Item, product_columns
from ..types import IMAGES, Hit
from .hits import hit_from_item
from .merch import (
    CatalogCache,
    boosted,
    check_boosts,
    facet_counts,
    filter_column,
    parse_conditions,
    sort_keys,
)
from .requests import SearchRequest, check_k

# Rank a query's products under these filters (best first, at most MERCH_DEPTH), cutting the
# semantic ranking at this cosine, or when None and the flag is set at the best score minus
# DEFAULT_FACET_MARGIN; answers the hits, the cutoff used, and whether the ranking holds every
# product at or above it (False: stopped at MERCH_DEPTH).
Ranker = Callable[[Mapping[str, Any], float | None, bool], tuple[list[Hit], float | None, bool]]


@dataclass(frozen=True)
class Listing:
    """One page of a product listing, the size of the whole listing, and facet counts."""

    hits: list[Hit]
    has_more: bool
    total: int
    facets: dict[str, list[dict[str, Any]]] | None


def browse(catalog: Catalog, request: SearchRequest, cache: CatalogCache) -> Listing:
    """The products passing the filters, in sort order (SKU when none), one page of them,
    with their count and facets. Each shows its main image (the first listed) or its title."""
    check_k(request.k, request.offset)
    if request.min_score is not None:
        raise InvalidQueryError("min_score is a cutoff on query scores: give a query to use it")
    db = catalog.db
    columns = product_columns(db)
    conditions = parse_conditions(request.filters, columns)
    keys = sort_keys(request.sort, columns)
    # One scan for the filters on columns without a facet; the rest (and the sort, the count,
    # the facets) work on those rows only. A category page reads its 2% of the table once.
    faceted = {facet.column for facet in request.facets}
    outer = [cond for cond in conditions if cond.column not in faceted]
    inner = [cond for cond in conditions if cond.column in faceted]
    base = product_sql.select_rowids(db, outer) if outer else None
    passing = product_sql.select_rowids(db, inner, base) if inner or base is None else base
    ids = product_sql.select_ids(
        db, [], order=keys, rowids=passing, limit=request.k + 1, offset=request.offset
    )
    total = len(passing)
    facets = None
    if request.facets:
        facets = facet_counts(
            db, request.facets, inner, columns, None, cache, base, cache_key=repr(conditions)
        )
    shown = _main_items(catalog, ids[: request.k])
    records = catalog.get_product_records(ids[: request.k])
    hits = []
    for pid in ids[: request.k]:
        item = shown.get(pid)
        if item is None or pid not in records:  # deleted between the two reads
            continue
        metadata = {**records[pid].metadata, "product_id": pid}
        hits.append(
            hit_from_item(item, rank=request.offset + len(hits) + 1, score=0.0, metadata=metadata)
        )
    return Listing(hits, len(ids) > request.k, total, facets)


def _main_items(catalog: Catalog, product_ids: list[str]) -> dict[str, Item]:
    """Each product's first image item (its main image), or its title item."""
    shown: dict[str, Item] = {}
    for pid, items in catalog.get_product_items(product_ids).items():
        images = [item for item in items if item.collection == IMAGES]
        shown[pid] = images[0] if images else items[0]
    return shown


def merchandise(
    catalog: Catalog,
    request: SearchRequest,
    rank: Ranker,
    cache: CatalogCache,
) -> Listing:
    """A query search's matched set (module docstring) boosted, sorted, paged and faceted;
    `rank` runs the query under given filters and cutoff."""
    db = catalog.db
    columns = product_columns(db)
    keys = sort_keys(request.sort, columns)
    check_boosts(request.boosts, columns)
    # One ranking serves the results and the facets: under the filters on columns no facet
    # counts, then narrowed by SQL to the rest; ranked alone only when the narrowed set is
    # short of the page and the first ranking stopped at MERCH_DEPTH.
    faceted = {facet.column for facet in request.facets}
    relaxed = {
        name: value
        for name, value in request.filters.items()
        if filter_column(name, columns)[0] not in faceted
    }
    margin = bool(request.facets or request.sort)
    base, cutoff, complete = rank(relaxed, request.min_score, margin)
    conditions = parse_conditions(request.filters, columns)
    hits = base
    if len(relaxed) < len(request.filters):
        passing = set(product_sql.select_ids(db, conditions, ids=[_sku(hit) for hit in base]))
        hits = [hit for hit in base if _sku(hit) in passing]
        if not complete and len(hits) <= request.offset + request.k:
            hits = rank(request.filters, cutoff, False)[0]
    if request.boosts:
        hits = [
            replace(hit, score=boosted(hit.score, hit.metadata, request.boosts)) for hit in hits
        ]
        hits.sort(key=lambda hit: (-hit.score, _sku(hit)))
    if keys:
        order = product_sql.select_ids(db, [], order=keys, ids=[_sku(hit) for hit in hits])
        position = {pid: n for n, pid in enumerate(order)}
        hits.sort(key=lambda hit: position.get(_sku(hit), len(position)))
    end = request.offset + request.k
    page = hits[request.offset : end]
    page = [replace(hit, rank=request.offset + n + 1) for n, hit in enumerate(page)]
    facets = None
    if request.facets:
        ids = [_sku(hit) for hit in base]
        facets = facet_counts(db, request.facets, conditions, columns, ids, cache)
    return Listing(page, len(hits) > end, len(hits), facets)


def _sku(hit: Hit) -> str:
    return str(hit.metadata.get("product_id", ""))


__all__ = ["Listing", "Ranker", "browse", "merchandise"]
