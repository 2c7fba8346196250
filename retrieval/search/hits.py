"""The one way a stored item becomes a Hit, whichever search found it (semantic, keyword,
hybrid, products): an image's text is its caption, a text item's text is the text."""

from __future__ import annotations

from typing import Any

from ..storage.catalog import Item
from ..types import IMAGES, Hit


def hit_from_item(
    item: Item,
    *,
    rank: int,
    score: float,
    metadata: dict[str, Any],
    signals: dict[str, int] | None = None,
    duplicates: tuple[int, ...] | None = None,
) -> Hit:
    """A Hit for `item` at `rank` with `score`; `metadata` is what the hit shows (the item's
    own, merged with its product's, by the caller)."""
    image = item.collection == IMAGES
    return Hit(
        rank=rank,
        score=score,
        id=item.id,
        path=item.path,
        text=None if image else item.text,
        caption=item.text if image else None,
        metadata=metadata,
        signals=signals,
        duplicates=duplicates,
    )


__all__ = ["hit_from_item"]
