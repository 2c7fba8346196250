"""Compacting the change log beside writers: the slow part of a compaction without the writer
lock.

Folding the log into the next generation (commit.py) loads, changes, writes and hashes a whole
faiss file: O(n), about 2 s at 100,000 products on two cores. Under the writer lock, every
product write meanwhile waited for it (and got a 503 past its wait), so bulk upserts at 100k ran
at a quarter of their 10k rate. Here the faiss files are built outside the lock, from a snapshot:

1. read, in one SQLite read transaction (WAL: a consistent snapshot, writers carry on), the
   generation G, the log up to its last seq P, the vectors of the logged items as they stand,
   and the largest item id issued so far;
2. without any lock but this module's own (one compaction per index directory, across
   processes): load G's faiss file, remove the logged ids it holds, add the logged items'
   vectors, and save it under `.compact/`;
3. under the writer lock, briefly: if G is still current, move the files into place as
   generation G+1, delete the log rows up to P, record the snapshot's largest item id as the
   new base's (`base_max_id`), and commit. Log rows written after the snapshot stay: they
   describe changes the new base does not hold, and readers apply them to it as before
   (delta.py's rule holds: an id up to the base's largest id is in the base file).

When the generation moved meanwhile (an index run compacted, or a write found the log full and
compacted inline), the built files are discarded. The cases that need more than an incremental
update (a rebuild past RETRAIN_GROWTH, a re-tune, on-disk lists, merged duplicates, a collection
empty at G) are left to the full compaction under the writer lock, as before."""

from __future__ import annotations

import logging
import os
import shutil
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from .. import faults
from ..errors import IndexNotFoundError
from ..files import file_sha256, fsync_dir
from ..index import FaissIndex
from ..index.tuning import is_approximate
from ..locks import exclusive_lock
from ..types import COLLECTIONS, Ids, Vectors
from .collections import CollectionState, read_state, write_state
from .commit import RETRAIN_GROWTH, RETUNE_GROWTH, within_growth

if TYPE_CHECKING:
    from pathlib import Path

    from .store import IndexStore

logger = logging.getLogger(__name__)

# One compaction at a time per index directory (every `serve` on it may start one); held while
# the files are built, so a writer taking the writer lock knows whether `.compact/` is in use.
COMPACT_LOCK = ".compact.lock"
COMPACT_DIR = ".compact"


@dataclass
class _Change:
    state: CollectionState
    count: int  # items of the collection at the snapshot
    removed: list[int]  # logged ids the base file holds
    added: Ids  # logged ids that are items at the snapshot, with their vectors
    vectors: Vectors


@dataclass
class _Snapshot:
    generation: int
    seq: int  # the last log row folded in
    max_item_id: int  # every item up to it is in the new base (or gone)
    changes: dict[str, _Change] = field(default_factory=dict)


class _Unsupported(Exception):
    """This log needs the full compaction under the writer lock."""


def compact_beside_writers(store: IndexStore, lock_wait_s: float) -> bool | None:
    """Fold the change log into a new generation, building its faiss files while writers go
    on (see the module docstring). True when a new generation was committed; False when there
    was nothing to fold, another compaction is under way, or the generation moved meanwhile;
    None when this log needs the full compaction under the writer lock (commit.py).

    Raises:
        IndexBusyError: the writer lock stayed taken for `lock_wait_s` (the files built are
            discarded; the log stays and readers keep applying it).
    """
    with Compaction(store) as compaction:
        ready = compaction.build()
        if not ready:
            return ready
        return compaction.swap(lock_wait_s)


class Compaction:
    """One compaction beside writers, in its two phases (a `with` block holds this module's
    lock from `build` to the end; tests interleave writes between the phases)."""

    def __init__(self, store: IndexStore) -> None:
        self.store = store
        self.snapshot: _Snapshot | None = None
        self._built: dict[str, tuple[Path, str, str]] = {}
        self._work = store.directory / COMPACT_DIR
        self._stack = ExitStack()

    def __enter__(self) -> Compaction:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.snapshot is not None:
            shutil.rmtree(self._work, ignore_errors=True)
        self._stack.close()

    def build(self) -> bool | None:
        """Read the snapshot and write the next generation's changed faiss files under
        `.compact/`, without the writer lock. True when there is something to swap in; False
        when the log is empty, another compaction holds the lock, or the generation moved;
        None when only the full compaction can fold this log."""
        directory = self.store.directory
        if not self._stack.enter_context(exclusive_lock(directory / COMPACT_LOCK)):
            return False
        try:
            snapshot = _read_snapshot(self.store)
        except _Unsupported:
            return None
        if snapshot.seq == 0:
            return False
        self.snapshot = snapshot
        shutil.rmtree(self._work, ignore_errors=True)
        self._work.mkdir()
        for collection, change in snapshot.changes.items():
            try:
                index = _updated(self.store, snapshot, collection, change)
            except _Unsupported:
                return None
            except (IndexNotFoundError, FileNotFoundError):
                return False  # a commit moved the generation and removed G's file
            path = self._work / f"{collection}.faiss"
            index.save(path)
            self._built[collection] = (path, file_sha256(path), index.factory)
            faults.reached("faiss")
        return True

    def swap(self, lock_wait_s: float) -> bool:
        """Under the writer lock (waited for up to `lock_wait_s`), make the built files
        generation G+1 and drop the folded log; False when the generation moved meanwhile.

        Raises:
            IndexBusyError: the writer lock stayed taken.
        """
        if self.snapshot is None:
            raise RuntimeError("Compaction.swap before a successful build")
        with self.store.writer_lock(lock_wait_s):
            return _swap(self.store, self.snapshot, self._built)


def drop_abandoned(directory: Path) -> None:
    """Remove `.compact/` when no compaction holds it (one killed while building); called by a
    writer that has just taken the writer lock."""
    work = directory / COMPACT_DIR
    if not work.exists():
        return
    with exclusive_lock(directory / COMPACT_LOCK) as taken:
        if taken:
            shutil.rmtree(work, ignore_errors=True)


def _read_snapshot(store: IndexStore) -> _Snapshot:
    if store.options.ondisk is not None or store.options.use_gpu:
        raise _Unsupported
    catalog = store.catalog
    dim = store.identity.dim
    # A deferred read transaction: every read below sees one committed state (WAL), while
    # writers go on committing; it is ended before the slow part.
    catalog.db.execute("BEGIN")
    try:
        generation, seq = catalog.position()
        if generation == 0:
            raise _Unsupported
        row = catalog.db.execute("SELECT seq FROM sqlite_sequence WHERE name='items'").fetchone()
        snapshot = _Snapshot(generation, seq, int(row[0]) if row else 0)
        logged: dict[str, set[int]] = {collection: set() for collection in COLLECTIONS}
        for _, collection, item_id, _ in catalog.read_delta():
            logged.setdefault(collection, set()).add(item_id)
        base_max = catalog.base_max_id
        for collection in COLLECTIONS:
            state = read_state(catalog, collection)
            if catalog.orphan_ids(collection) or state.ondisk or state.ivfdata:
                raise _Unsupported
            touched = logged[collection]
            if not touched:
                continue
            existing = sorted(set(catalog.get_items(sorted(touched))))
            snapshot.changes[collection] = _Change(
                state=state,
                count=catalog.count(collection),
                removed=sorted(i for i in touched if i <= base_max),
                added=np.asarray(existing, dtype=np.int64),
                vectors=catalog.get_vectors_by_id(existing, dim),
            )
        return snapshot
    finally:
        catalog.db.execute("COMMIT")


def _updated(
    store: IndexStore, snapshot: _Snapshot, collection: str, change: _Change
) -> FaissIndex:
    """Generation G's faiss file of `collection` with the logged changes applied, as commit.py's
    incremental update would leave it."""
    state = change.state
    if state.built_for != state.index_type or not within_growth(
        change.count, state.built_n, RETRAIN_GROWTH
    ):
        raise _Unsupported  # a rebuild
    path = store.directory / f"{collection}.{snapshot.generation}.faiss"
    if not path.is_file():
        raise _Unsupported  # empty at G, or moved on: the full path knows which
    if state.sha256 and file_sha256(path) != state.sha256:
        raise _Unsupported  # the full path reads it again and reports the damage
    params = state.tuning.params if state.tuning is not None else None
    index = FaissIndex.load(path, search_params=params)
    if change.removed and not index.supports_remove:
        raise _Unsupported
    if change.removed:
        index.remove(np.asarray(change.removed, dtype=np.int64))
    if len(change.added):
        index.add(change.vectors, change.added)
    if is_approximate(index.faiss_index):
        tuned = state.tuning
        if tuned is None or not within_growth(index.ntotal, tuned.tuned_n, RETUNE_GROWTH):
            raise _Unsupported  # a re-tune
    return index


def _swap(store: IndexStore, snapshot: _Snapshot, built: dict[str, tuple[Path, str, str]]) -> bool:
    """Under the writer lock: make the built files generation G+1 and drop the folded log."""
    catalog = store.catalog
    directory = store.directory
    old, new = snapshot.generation, snapshot.generation + 1
    with catalog.transaction():
        if catalog.generation != old:
            return False  # an index run or an inline compaction got there first
        for collection in COLLECTIONS:
            target = directory / f"{collection}.{new}.faiss"
            target.unlink(missing_ok=True)  # a cut-off earlier attempt's
            if collection in built:
                path, sha256, factory = built[collection]
                os.replace(path, target)
                write_state(catalog, collection, sha256=sha256, factory=factory)
            elif (current := directory / f"{collection}.{old}.faiss").is_file():
                os.link(current, target)  # unchanged: shared, not rewritten
        fsync_dir(directory)
        faults.reached("faiss")
        catalog.db.execute("DELETE FROM delta_log WHERE seq <= ?", (snapshot.seq,))
        catalog.set_meta("base_max_id", str(snapshot.max_item_id))
        catalog.set_meta("generation", str(new))
        catalog.set_meta("updated", str(time.time()))
        faults.reached("commit")
    faults.reached("committed")
    store.cleanup()
    return True


__all__ = ["COMPACT_DIR", "COMPACT_LOCK", "Compaction", "compact_beside_writers", "drop_abandoned"]
