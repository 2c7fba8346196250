"""Product search's own rules: which products pass the filters (typed columns: booleans and
numbers compare as such), and each product's score from its title and its best image."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import InvalidQueryError
from ..storage.catalog import Catalog, Item, filter_products, product_columns
from ..storage.schema import parse_boolean, parse_number
from ..types import IMAGES


def allowed_products(catalog: Catalog, filters: Mapping[str, Any]) -> list[str] | None:
    """Ids of the products that pass `filters` (column=value, column_min/_max), or None for
    no filters."""
    if not filters:
        return None
    columns = product_columns(catalog.db)
    equals: dict[str, Any] = {}
    ranges: dict[str, tuple[float | None, float | None]] = {}
    for name, value in filters.items():
        column, bound = name, None
        for suffix in ("_min", "_max"):
            if name.endswith(suffix) and name.removesuffix(suffix) in columns:
                column, bound = name.removesuffix(suffix), suffix
        if column not in columns:
            known = ", ".join(sorted(columns)) or "none"
            raise InvalidQueryError(f"unknown filter {name!r}; product columns: {known}")
        if bound is None:
            equals[column] = _typed_filter(name, columns[column], value)
            continue
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise InvalidQueryError(f"filter {name} needs a number, got {value!r}") from None
        low, high = ranges.get(column, (None, None))
        ranges[column] = (number, high) if bound == "_min" else (low, number)
    return filter_products(catalog.db, equals, ranges, columns)


def score_products(
    catalog: Catalog, dim: int, vector: np.ndarray, product_ids: list[str], weight: float
) -> list[tuple[float, Item]]:
    """Each product's score, best first: weight * title similarity + (1 - weight) * its best
    image's similarity, exactly from the stored vectors; with the item that shows it."""
    ids = catalog.item_ids_for_products(product_ids)
    items = catalog.get_items(ids.tolist())
    vectors = catalog.get_vectors_by_id(ids.tolist(), dim)
    sims = vectors @ np.asarray(vector, dtype=np.float32)
    best_image: dict[str, tuple[float, Item]] = {}
    title: dict[str, float] = {}
    title_item: dict[str, Item] = {}
    for item_id, sim in zip(ids.tolist(), sims.tolist(), strict=True):
        item = items[item_id]
        pid = item.product_id or ""
        if item.collection == IMAGES:
            if pid not in best_image or sim > best_image[pid][0]:
                best_image[pid] = (sim, item)
        else:
            title[pid], title_item[pid] = sim, item
    scored = []
    for pid in product_ids:
        image_sim, image_item = best_image.get(pid, (None, None))
        title_sim = title.get(pid)
        if image_sim is None and title_sim is None:
            continue
        if image_sim is None:
            score = title_sim if weight > 0 else None
        elif title_sim is None:
            score = image_sim if weight < 1 else None
        else:
            score = weight * title_sim + (1 - weight) * image_sim
        if score is None:
            continue
        item = image_item if image_item is not None else title_item[pid]
        scored.append((float(score), item))
    scored.sort(key=lambda pair: (-pair[0], pair[1].product_id or ""))
    return scored


def _typed_filter(name: str, kind: str, value: Any) -> Any:
    """An equality filter's value as its column's type: `true`/`false` (query strings, CLI) and
    JSON booleans both mean a boolean; numbers compare as numbers."""
    if kind == "boolean":
        parsed = parse_boolean(value)
        if parsed is None:
            raise InvalidQueryError(f"filter {name} needs true or false, got {value!r}")
        return parsed
    if kind == "number":
        number = parse_number(value)
        return number if number is not None else str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return value


__all__ = ["allowed_products", "score_products"]
