"""The commit path of an index directory (mixed into storage/store.py's IndexStore): inside the
writer's catalog transaction, build or update each collection's faiss index for the next
generation (incrementally, rebuilt, or sharded on disk), tune its search parameters, and flip
the generation. The transaction's COMMIT makes it all visible at once."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import faults
from ..errors import InvalidQueryError
from ..files import file_sha256
from ..index import FaissIndex
from ..index.ondisk import build_ondisk_ivf, ondisk_factory
from ..index.tuning import (
    DEFAULT_TARGET_RECALL,
    TUNE_TEXT_QUERIES,
    is_approximate,
    sample_rows,
    tune,
    tune_streamed,
)
from ..types import COLLECTIONS, IMAGES, TEXTS
from .collections import read_state, write_state
from .delta import ADDED, REMOVED, max_rows_for
from .probes import TextEmbedder, tuning_probes
from .reading import ReadPath

logger = logging.getLogger(__name__)

# Adding to an IVF index without retraining degrades its clustering as the data drifts; past
# this growth factor since the last training we rebuild from the stored vectors instead.
RETRAIN_GROWTH = 2.0
# Tuned nprobe/efSearch hold while the index stays within this factor of the size it was tuned
# at (recall drifts slowly with n); past it the next commit re-measures.
RETUNE_GROWTH = 1.25


def within_growth(n: int, reference: int, growth: float) -> bool:
    """Whether `n` vectors are within a factor `growth` of `reference` either way: an index
    built (RETRAIN_GROWTH) or tuned (RETUNE_GROWTH) for `reference` still fits `n`. Shared by
    the commit here and the compaction beside writers (compaction.py), which must decide alike."""
    return reference / growth <= n <= reference * growth


@dataclass
class CollectionChanges:
    """Item ids whose vectors must leave or enter one collection's faiss index."""

    removed: list[int] = field(default_factory=list)
    added: list[int] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.removed or self.added)


class CommitPath(ReadPath):
    """Writing the next generation (see IndexStore; writers reach it through ingest's Indexer)."""

    _saved: dict[str, FaissIndex | None]
    _rebuilt: bool
    # The model's text tower, set by the write path (ingest's Indexer) so tuning can probe
    # with short texts as users type them (storage/probes.py); None: stored vectors only.
    probe_embedder: TextEmbedder | None = None

    # -- writing ------------------------------------------------------------------------------
    def commit(
        self,
        changes: dict[str, CollectionChanges],
        *,
        index_types: dict[str, str] | None = None,
        force_rebuild: bool = False,
        delta: bool = False,
    ) -> bool:
        """Inside an open catalog transaction: with `delta`, append the changes to the change
        log (delta.py) when it stays under its limit (`max_rows_for`); otherwise write the next
        generation's faiss files with the log folded in (a compaction) and flip the
        generation. The caller's transaction commit makes it all visible at once. Whether a
        new generation was written."""
        if (
            delta
            and not force_rebuild
            and not index_types
            and self.options.ondisk is None
            and self.catalog.generation > 0
            and self._append_delta(changes)
        ):
            return False
        changes = self._with_logged(changes)
        self.catalog.clear_delta()
        self.catalog.record_base_max_id()
        old = self.catalog.generation
        new = old + 1
        dim = self.identity.dim
        for collection in COLLECTIONS:
            requested = (index_types or {}).get(collection) or self.index_type(collection)
            write_state(self.catalog, collection, index_type=requested)
            change = changes.get(collection, CollectionChanges())
            orphans = self.catalog.orphan_ids(collection)
            if orphans:
                change = CollectionChanges(change.removed + orphans, change.added)
                self.catalog.clear_orphans(collection)
            current_path = self._faiss_path(collection, old)
            built_for = read_state(self.catalog, collection).built_for
            if (
                not change
                and not force_rebuild
                and built_for == requested
                and current_path.is_file()
                and self._wants_ondisk(collection) == bool(self._ivfdata(collection))
            ):
                # Nothing changed in this collection: the next generation shares the file
                # (a hard link) instead of loading and rewriting a possibly large index.
                os.link(current_path, self._faiss_path(collection, new))
                cached = self._indexes.get(collection)
                if cached is not None and cached[0] == old:
                    self._saved[collection] = cached[1]
                faults.reached("faiss")
                continue
            self._rebuilt = True
            index = self._next_index(
                collection, change, requested, dim, force_rebuild=force_rebuild
            )
            checksum = ""
            if index is not None:
                self._tune(collection, index, dim, rebuilt=self._rebuilt)
                faults.reached("faiss")
                index.save(self._faiss_path(collection, new))
                checksum = file_sha256(self._faiss_path(collection, new))
                write_state(self.catalog, collection, factory=index.factory)
                if not self.options.use_gpu and not index.on_disk:
                    self._saved[collection] = index
            # Checked by every reader that loads the file and by `mmsearch check`.
            write_state(self.catalog, collection, sha256=checksum)
            faults.reached("faiss")
        self.catalog.set_meta("generation", str(new))
        self.catalog.set_meta("updated", str(time.time()))
        return True

    def _append_delta(self, changes: dict[str, CollectionChanges]) -> bool:
        """Log the changes (and ids of merged duplicates) instead of rewriting faiss files;
        False when the log would pass its limit (the caller compacts instead)."""
        rows: list[tuple[str, int, int]] = []
        for collection in COLLECTIONS:
            change = changes.get(collection, CollectionChanges())
            removed = change.removed + self.catalog.orphan_ids(collection)
            rows += [(collection, item_id, REMOVED) for item_id in removed]
            rows += [(collection, item_id, ADDED) for item_id in change.added]
        if not rows:
            return True
        if self.catalog.delta_size() + len(rows) > max_rows_for(self.base_vectors()):
            return False
        self.catalog.append_delta(rows)
        for collection in COLLECTIONS:
            self.catalog.clear_orphans(collection)
        self.catalog.set_meta("updated", str(time.time()))
        faults.reached("faiss")
        return True

    def base_vectors(self) -> int:
        """About how many vectors the faiss files hold: what each collection was last built
        with (within RETRAIN_GROWTH of its size), read from the catalog's records, not
        counted."""
        return sum(read_state(self.catalog, collection).built_n for collection in COLLECTIONS)

    def _with_logged(self, changes: dict[str, CollectionChanges]) -> dict[str, CollectionChanges]:
        """These changes plus the change log's, for a compaction: every logged id leaves the
        base file (unknown ids are ignored by removal), and those still items enter it with
        their current vectors."""
        logged: dict[str, set[int]] = {collection: set() for collection in COLLECTIONS}
        for _, collection, item_id, _ in self.catalog.read_delta():
            logged.setdefault(collection, set()).add(item_id)
        if not any(logged.values()):
            return changes
        merged = {}
        for collection in COLLECTIONS:
            change = changes.get(collection, CollectionChanges())
            touched = logged[collection]
            if not touched:
                merged[collection] = change
                continue
            base_max = self.catalog.base_max_id
            removed = sorted(set(change.removed) | {i for i in touched if i <= base_max})
            existing = set(self.catalog.get_items(sorted(touched | set(change.added))))
            added = sorted(existing & (touched | set(change.added)))
            merged[collection] = CollectionChanges(removed, added)
        return merged

    def adopt_committed(self, committed: bool) -> None:
        """After the transaction around `commit` ended: keep the indexes it saved as this
        store's cached copies of the new generation (`committed`), or forget them."""
        saved, self._saved = self._saved, {}
        if committed:
            generation = self.catalog.generation
            for collection, index in saved.items():
                self._indexes[collection] = (generation, index)

    def _next_index(
        self,
        collection: str,
        change: CollectionChanges,
        requested: str,
        dim: int,
        *,
        force_rebuild: bool,
    ) -> FaissIndex | None:
        count = self.catalog.count(collection)
        if count == 0:
            return None
        # No file at the current generation means the collection was empty there: build from
        # the stored vectors (get_index would rebuild it from the catalog, which already holds
        # this commit's additions, and `change.added` would then add them a second time).
        had_file = self._faiss_path(collection, self.catalog.generation).is_file()
        current = None if force_rebuild or not had_file else self.get_base_index(collection)
        if current is not None and current.read_only:  # mmapped: read it fully to update it
            current = FaissIndex.load(
                self._faiss_path(collection, self.catalog.generation),
                search_params=current.search_params,
            )
        # The cached reader copy is about to be mutated; never serve it again.
        self._indexes.pop(collection, None)
        self._live.pop(collection, None)
        state = read_state(self.catalog, collection)
        # Parameters such as nlist follow n, so an index built for n stays right for n/2..2n;
        # past that (or for another --index-type) rebuild, which also lets `auto` move from
        # exact to approximate search as a collection grows.
        ondisk = self._wants_ondisk(collection)
        incremental = (
            current is not None
            and not ondisk
            and not current.on_disk  # readers may have its .ivfdata mapped: never modify it
            and state.built_for == requested
            and (current.supports_remove or not change.removed)
            and within_growth(count, state.built_n, RETRAIN_GROWTH)
        )
        if incremental and current is not None:
            self._rebuilt = False
            if not change:
                return current
            if change.removed:
                current.remove(np.asarray(change.removed, dtype=np.int64))
            if change.added:
                vectors = self.catalog.get_vectors_by_id(change.added, dim)
                current.add(vectors, np.asarray(change.added, dtype=np.int64))
            return current
        if ondisk:
            index = self._build_ondisk(collection, requested, dim)
            if index is not None:
                return index
        ids, vectors = self.catalog.get_vectors(collection, dim)
        write_state(self.catalog, collection, built_n=len(ids), built_for=requested, ivfdata="")
        return FaissIndex.build(vectors, ids, requested)

    def _wants_ondisk(self, collection: str) -> bool:
        if collection != IMAGES:
            return False
        if self.options.ondisk is not None:
            return self.options.ondisk
        return read_state(self.catalog, collection).ondisk

    def _build_ondisk(self, collection: str, requested: str, dim: int) -> FaissIndex | None:
        """The sharded on-disk IVF build, reading vectors from the catalog one shard at a time;
        None (with a warning) when the collection is too small for an IVF index."""
        ids = self.catalog.get_ids(collection)
        try:
            factory = ondisk_factory(requested, len(ids), dim)
        except InvalidQueryError as err:
            logger.warning("%s: building in memory instead: %s", collection, err)
            return None
        new = self.catalog.generation + 1
        name = f"{collection}.{new}.ivfdata"
        index = build_ondisk_ivf(
            ids,
            lambda chunk: self.catalog.get_vectors_by_id(chunk, dim),
            dim,
            factory,
            self.directory / name,
            self._build_dir(collection),
            shard_size=self.options.ondisk_shard_size,
        )
        write_state(
            self.catalog,
            collection,
            built_n=len(ids),
            built_for=requested,
            ondisk=True,
            ivfdata=name,
        )
        return index

    def _build_dir(self, collection: str) -> Path:
        # Dot-named, so it is never taken for an index file; kept until the commit lands so
        # a killed build resumes from its trained index and finished shards.
        return self.directory / f".build-{collection}"

    def _tune(self, collection: str, index: FaissIndex, dim: int, *, rebuilt: bool) -> None:
        """Measure recall@10 and pick search parameters when the index was (re)built, grew
        past its tuning, or the target changed; otherwise keep the recorded ones."""
        if not is_approximate(index.faiss_index):
            write_state(self.catalog, collection, tuning=None)
            return
        old = self.tuning(collection)
        target = self.options.target_recall or (old.target_recall if old else DEFAULT_TARGET_RECALL)
        if (
            old is not None
            and not rebuilt
            and old.target_recall == target
            and within_growth(index.ntotal, old.tuned_n, RETUNE_GROWTH)
        ):
            index.set_search_params(old.params)
            return
        texts = None
        if collection == IMAGES and self.catalog.count(TEXTS):
            # Cross-modal queries (captions against images) are what users run. Only the
            # sampled texts are read (the sample `tune` would draw from all of them), so
            # tuning never holds every caption vector of a large collection.
            text_ids = self.catalog.get_ids(TEXTS)
            sampled = text_ids[sample_rows(len(text_ids), TUNE_TEXT_QUERIES)]
            texts = self.catalog.get_vectors_by_id(sampled, dim)
        probes = tuning_probes(self.catalog, self.directory, collection, dim, self.probe_embedder)
        if self._wants_ondisk(collection) and index.on_disk:
            # Built shard by shard: read the catalog in chunks so peak RSS follows the
            # chunk, not n (the same sample and exact truth as `tune`).
            result = tune_streamed(
                index,
                self.catalog.get_ids(collection),
                lambda chunk: self.catalog.get_vectors_by_id(chunk, dim),
                target_recall=target,
                text_queries=texts,
                probes=probes,
            )
        else:
            ids, vectors = self.catalog.get_vectors(collection, dim)
            result = tune(
                index, vectors, ids, target_recall=target, text_queries=texts, probes=probes
            )
        write_state(self.catalog, collection, tuning=result)
        if not result.reached:
            logger.warning(
                "%s: %s reaches recall@10 %.3f < target %.2f even at %s; use --index-type "
                "flat or hnsw for higher recall",
                collection,
                index.factory,
                result.recall_at_10,
                target,
                result.params.to_dict(),
            )
