"""Product search's own rules: which products pass the filters (merch.py), and each product's
score from its title and its best image."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ..storage import product_sql
from ..storage.catalog import Catalog, Item, product_columns
from ..types import IMAGES
from .merch import parse_conditions


def passing_products(
    catalog: Catalog, filters: Mapping[str, Any], product_ids: list[str]
) -> set[str]:
    """Which of `product_ids` pass `filters` (their rows looked up by SKU, no table scan)."""
    conditions = parse_conditions(filters, product_columns(catalog.db))
    return set(product_sql.select_ids(catalog.db, conditions, ids=product_ids))


def allowed_items(catalog: Catalog, filters: Mapping[str, Any]) -> np.ndarray | None:
    """Ids of the items of the products that pass `filters`, ascending; None for no filters."""
    if not filters:
        return None
    conditions = parse_conditions(filters, product_columns(catalog.db))
    return np.asarray(product_sql.select_item_ids(catalog.db, conditions), dtype=np.int64)


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


__all__ = ["allowed_items", "passing_products", "score_products"]
