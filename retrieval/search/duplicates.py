"""Near-duplicate groups over an index's stored image vectors (resized, recompressed or lightly
cropped copies of one photo), found with a faiss range search (retrieval/index/neighbours.py).

Grouping is greedy around representatives, not connected components: the best image that is
not yet grouped takes every ungrouped image within the threshold of it, so each member scores
>= threshold against its group's representative (components would chain A~B~C into one group
even when A and C are far apart). "Best" is the most pixels (read from the file header), then
the largest file, then the lowest id: the original rather than a shrunk or cropped copy."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from ..errors import InvalidQueryError
from ..index import range_pairs
from ..storage.store import IndexStore
from ..types import IMAGES
from .queries import DEFAULT_DUPLICATE_THRESHOLD


@dataclass(frozen=True)
class DuplicateMember:
    """One image of a group; `score` is its cosine to the representative (1.0 for itself)."""

    id: int
    path: str | None
    score: float


@dataclass(frozen=True)
class DuplicateGroup:
    """Near-identical images, the best representative first."""

    items: tuple[DuplicateMember, ...]


@dataclass(frozen=True)
class DuplicatesReport:
    """`mmsearch duplicates --json`: the threshold and the groups, largest first."""

    threshold: float
    groups: tuple[DuplicateGroup, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "groups": [
                {
                    "items": [
                        {"id": m.id, "path": m.path, "score": round(m.score, 6)} for m in g.items
                    ]
                }
                for g in self.groups
            ],
        }


def find_duplicates(
    store: IndexStore, threshold: float = DEFAULT_DUPLICATE_THRESHOLD
) -> DuplicatesReport:
    """Groups of near-duplicate images in `store` (images scoring >= `threshold` against their
    group's representative); images without a near-duplicate are in no group."""
    if not 0.0 < threshold <= 1.0:
        raise InvalidQueryError(f"--threshold must be a cosine in (0, 1], got {threshold}")
    ids, vectors = store.catalog.get_vectors(IMAGES, store.identity.dim)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    vectors = vectors / np.where(norms > 0, norms, 1.0)
    left, right, scores = range_pairs(vectors, threshold)
    items = store.catalog.get_items(np.unique(ids[np.concatenate([left, right])]).tolist())

    def quality(row: int) -> tuple[int, int, int]:
        item = items[int(ids[row])]
        return (-_pixels(item.path), -(item.size or 0), int(ids[row]))

    groups = group_pairs(left, right, scores, quality)
    return DuplicatesReport(
        threshold,
        tuple(
            DuplicateGroup(
                tuple(
                    DuplicateMember(int(ids[row]), items[int(ids[row])].path, score)
                    for row, score in group
                )
            )
            for group in groups
        ),
    )


def group_pairs(
    left: np.ndarray,
    right: np.ndarray,
    scores: np.ndarray,
    rank: Callable[[int], Any],
) -> list[list[tuple[int, float]]]:
    """Greedy groups from scored pairs of rows: rows sorted by `rank` (smallest is best) each
    take their not yet grouped neighbours. Each group is [(row, score to its first row)],
    best first then by score; groups come largest first, then by their best row's rank."""
    neighbours: dict[int, dict[int, float]] = {}
    for a, b, score in zip(left.tolist(), right.tolist(), scores.tolist(), strict=True):
        neighbours.setdefault(a, {})[b] = score
        neighbours.setdefault(b, {})[a] = score
    grouped: set[int] = set()
    groups = []
    for row in sorted(neighbours, key=rank):
        if row in grouped:
            continue
        members = [(other, s) for other, s in neighbours[row].items() if other not in grouped]
        if not members:
            continue
        members.sort(key=lambda pair: (-pair[1], rank(pair[0])))
        grouped.update([row, *(other for other, _ in members)])
        groups.append([(row, 1.0), *members])
    groups.sort(key=lambda group: (-len(group), rank(group[0][0])))
    return groups


def _pixels(path: str | None) -> int:
    """Width x height from the image header (0 when it cannot be read any more)."""
    if not path:
        return 0
    try:
        with Image.open(path) as image:
            return int(image.size[0] * image.size[1])
    except Exception:  # noqa: BLE001 (a file gone or broken since indexing ranks last)
        return 0
