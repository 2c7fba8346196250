"""A base generation plus a log of changes: how a small write avoids rewriting a faiss file.

A product write (PUT, PATCH with images, DELETE, a bulk upsert) appends to the catalog's
`delta_log` the item ids whose vectors left the current generation's faiss file (op 0) and the
ids whose current vectors are not in it (op 1), in the SQLite transaction that changes the items,
so a 2xx is as durable as the write itself. A replaced image logs both: its old vector is hidden,
its new one is searched from the log. The ops are kept for people reading the log.

Every reader applies the log on its next query (`Catalog.position` tells it cheaply whether the
generation or the log moved): it searches the base faiss index with the removed ids excluded
inside faiss, searches the added vectors exactly (they are few), and merges the two by score
(`merge_hits`), filters applied on both sides, so k hits come back whenever k exist. Compaction
(commit.py) folds the log into the next generation's files and empties it in the transaction
that flips the generation; readers keep answering from the old files until then.

Readers need no op order: a logged id's current vector is whatever the catalog holds (none when
the item is gone), and it was in the base file exactly when it is at most the largest item id
at the base's commit (`base_max_id`: item ids only grow and are never reused). So readers and
`mmsearch check` know what the base must hold without listing it."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from ..config import DELTA_COMPACT_FRACTION, DELTA_COMPACT_MAX, DELTA_COMPACT_MIN
from ..index import FaissIndex
from ..types import Ids, SearchParams, Vectors

REMOVED, ADDED = 0, 1


@dataclass
class Delta:
    """One collection's log, applied: what a reader adds to and hides from the base index."""

    # Ids whose base vectors must not be returned: every logged id the base file holds.
    hidden: set[int] = field(default_factory=set)
    # Ids served from the log: row in `vectors`; rows of ids changed since are dead (-1).
    rows: dict[int, int] = field(default_factory=dict)
    ids: Ids = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    vectors: Vectors | None = None

    def __bool__(self) -> bool:
        return bool(self.hidden or self.rows)

    @property
    def added(self) -> int:
        return len(self.rows)

    def apply(self, logged: Iterable[int], base_max_id: int) -> list[int]:
        """Forget what is known of these logged ids (their vectors are reloaded from the
        catalog, which holds the truth: a deleted item has none); the ids to reload, sorted.
        An id up to `base_max_id` (the largest item id when the base was written) is in the
        base file: new items get larger ids, and ids are never reused."""
        touched = set(logged)
        for item_id in touched:
            if item_id <= base_max_id:
                self.hidden.add(item_id)
            row = self.rows.pop(item_id, None)
            if row is not None:
                self.ids[row] = -1
        return sorted(touched)

    def extend(self, ids: Ids, vectors: Vectors) -> None:
        """Add the loaded vectors of newly added ids (after `apply`)."""
        if not len(ids):
            return
        start = len(self.ids)
        for n, item_id in enumerate(ids.tolist()):
            old = self.rows.pop(item_id, None)
            if old is not None:
                self.ids[old] = -1
            self.rows[item_id] = start + n
        self.ids = np.concatenate([self.ids, np.asarray(ids, dtype=np.int64)])
        dim = vectors.shape[1]
        base = self.vectors if self.vectors is not None else np.zeros((0, dim), np.float32)
        self.vectors = np.concatenate([base, np.asarray(vectors, dtype=np.float32)])

    def search(
        self, queries: Vectors, k: int, allowed_ids: Ids | None = None
    ) -> tuple[np.ndarray, Ids]:
        """Exact top-k (scores, ids) over the live added vectors, padded with -inf / -1."""
        nq = len(queries)
        scores = np.full((nq, k), -np.inf, dtype=np.float32)
        found = np.full((nq, k), -1, dtype=np.int64)
        if self.vectors is None or not self.rows:
            return scores, found
        live = self.ids >= 0
        if allowed_ids is not None:
            live &= np.isin(self.ids, np.asarray(allowed_ids, dtype=np.int64))
        rows = np.flatnonzero(live)
        if not rows.size:
            return scores, found
        all_scores = np.asarray(queries, dtype=np.float32) @ self.vectors[rows].T
        ids = self.ids[rows]
        take = min(k, rows.size)
        # Descending score, ties by ascending id (as index/exact.py): a deterministic order.
        order = np.lexsort((np.broadcast_to(ids, all_scores.shape), -all_scores), axis=-1)
        order = order[:, :take]
        scores[:, :take] = np.take_along_axis(all_scores, order, axis=1)
        found[:, :take] = ids[order]
        return scores, found


def merge_hits(
    first: tuple[np.ndarray, Ids], second: tuple[np.ndarray, Ids], k: int
) -> tuple[np.ndarray, Ids]:
    """The top-k of two (scores, ids) results per query row, best first (ties: lower id),
    padded with -inf / -1. The two never share an id (the base hides what the log serves)."""
    scores = np.concatenate([first[0], second[0]], axis=1)
    ids = np.concatenate([first[1], second[1]], axis=1)
    scores = np.where(ids >= 0, scores, -np.inf)
    sort_ids = np.where(ids >= 0, ids, np.iinfo(np.int64).max)
    order = np.lexsort((sort_ids, -scores), axis=-1)[:, :k]
    merged_scores = np.take_along_axis(scores, order, axis=1).astype(np.float32)
    merged_ids = np.take_along_axis(ids, order, axis=1)
    merged_ids[~np.isfinite(merged_scores)] = -1
    return merged_scores, merged_ids


class LiveIndex:
    """A collection's current vectors: the base generation's faiss index with its delta
    applied. Searches as FaissIndex.search does (the same arguments and padding)."""

    def __init__(self, base: FaissIndex | None, delta: Delta) -> None:
        self.base = base
        self.delta = delta
        base_n = base.ntotal if base is not None else 0
        self.ntotal = base_n - len(delta.hidden) + delta.added
        self._hidden = np.fromiter(sorted(delta.hidden), dtype=np.int64, count=len(delta.hidden))

    @property
    def factory(self) -> str | None:
        return self.base.factory if self.base is not None else None

    @property
    def read_only(self) -> bool:
        """Whether the base is searched through a read-only memory map."""
        return self.base.read_only if self.base is not None else False

    @property
    def search_params(self) -> SearchParams:
        """The base's tuned search parameters (none without a base: the log is searched
        exactly)."""
        return self.base.search_params if self.base is not None else SearchParams()

    def search(
        self, queries: Vectors, k: int, *, allowed_ids: Ids | None = None
    ) -> tuple[np.ndarray, Ids]:
        queries = np.ascontiguousarray(np.asarray(queries, dtype=np.float32))
        if self.base is not None:
            base_hits = self.base.search(
                queries,
                k,
                allowed_ids=allowed_ids,
                excluded_ids=self._hidden if self._hidden.size else None,
            )
        else:
            base_hits = (
                np.full((len(queries), k), -np.inf, dtype=np.float32),
                np.full((len(queries), k), -1, dtype=np.int64),
            )
        if not self.delta.rows:
            return base_hits
        return merge_hits(base_hits, self.delta.search(queries, k, allowed_ids), k)


def compact_rows_for(vectors: int) -> int:
    """Log rows past which `serve` compacts in the background, for faiss files of `vectors`
    vectors (config.DELTA_COMPACT_FRACTION: a compaction's O(n) cost per logged row stays
    constant while readers' exact search of the log stays small)."""
    return min(DELTA_COMPACT_MAX, max(DELTA_COMPACT_MIN, vectors // DELTA_COMPACT_FRACTION))


def max_rows_for(vectors: int) -> int:
    """Log rows a write may not take the log past (it compacts inline instead): twice the
    background threshold, so a background compaction has room to finish first."""
    return 2 * compact_rows_for(vectors)


def base_count(catalog_count: int, orphans: int, delta: Delta) -> int:
    """How many vectors the base faiss file must hold for a catalog of `catalog_count` items
    of a collection (with `orphans` merged-away ids still in the file) and this delta (its
    added rows: the logged items that exist)."""
    return catalog_count + orphans + len(delta.hidden) - delta.added


__all__ = [
    "ADDED",
    "REMOVED",
    "Delta",
    "LiveIndex",
    "base_count",
    "compact_rows_for",
    "max_rows_for",
    "merge_hits",
]
