"""The one write path. Every change to an index (a folder sync, a text list, a product catalog,
Ray's embeddings, a repair) goes through an `Indexer`: it holds the writer lock for its lifetime,
hands each writer a `ChangeSet` through which every item is added, replaced or removed (so the
faiss files always learn of it), and commits a generation by one rule.

    with Indexer(store, embedder_factory) as indexer:
        report = sync_images_and_texts(indexer, roots)     # ingest.py
        report = write_products(indexer, rows)             # product_writes.py

Crash contract (store.py): the item changes and the generation flip are one SQLite transaction;
vectors embedded before it are cached under their content keys, so a killed run loses no model
work and leaves the previous generation readable."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

from .. import faults
from ..storage.catalog import Catalog, Item
from ..storage.store import CollectionChanges, IndexStore
from ..types import COLLECTIONS

logger = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]
"""on_progress(stage, advance, total): called as work completes; total is fixed per stage."""


@dataclass
class ChangeSet:
    """The item changes of one commit. Writers change items only through these methods, so no
    change can reach the catalog without reaching the faiss files in the same commit."""

    catalog: Catalog
    collections: dict[str, CollectionChanges] = field(
        default_factory=lambda: {collection: CollectionChanges() for collection in COLLECTIONS}
    )
    # Content keys that removed or re-keyed items used: the only vectors this commit may leave
    # unused (a writer that does not sweep the whole vector table drops just these).
    released: set[str] = field(default_factory=set)

    def __bool__(self) -> bool:
        return any(self.collections.values())

    def add(self, collection: str, key: str, **fields: Any) -> int:
        """A new item (fields as Catalog.add_item); its id."""
        item_id = self.catalog.add_item(collection, key, **fields)
        self.collections[collection].added.append(item_id)
        return item_id

    def replace(self, item: Item, *, key: str, size: int | None, mtime_ns: int | None) -> None:
        """New bytes for an existing item: its id stays, its vector and caption change."""
        self.released.add(item.key)
        self.catalog.update_item(item.id, key=key, size=size, mtime_ns=mtime_ns)
        self.catalog.set_text(item.id, None)  # the old caption described the old bytes
        change = self.collections[item.collection]
        change.removed.append(item.id)
        change.added.append(item.id)

    def replace_text(self, item: Item, *, key: str, text: str) -> None:
        """A new text for an existing text item (a product's edited title): its id stays."""
        self.released.add(item.key)
        self.catalog.update_item(item.id, key=key, size=None, mtime_ns=None)
        self.catalog.set_text(item.id, text)
        change = self.collections[item.collection]
        change.removed.append(item.id)
        change.added.append(item.id)

    def touch(self, item: Item, *, size: int | None, mtime_ns: int | None) -> None:
        """Same bytes, new size/mtime on disk (a copy over it, a `touch`): no vector changes."""
        self.catalog.update_item(item.id, key=item.key, size=size, mtime_ns=mtime_ns)

    def rename(self, item: Item, path: str) -> None:
        """The same file under its identity (files.py) instead of another spelling: the id and
        vector stay."""
        self.catalog.db.execute("UPDATE items SET path=? WHERE id=?", (path, item.id))

    def remove(self, items: Iterable[Item]) -> int:
        """Delete items; how many."""
        items = list(items)
        self.released.update(item.key for item in items)
        self.catalog.delete_items(item.id for item in items)
        for item in items:
            self.collections[item.collection].removed.append(item.id)
        return len(items)


class Indexer:
    """Owns one write to an index: the writer lock (taken on enter), the embedder factory that
    writers load the model through (only when something needs embedding), and the commit."""

    def __init__(
        self,
        store: IndexStore,
        embedder_factory: Callable[[], Any] | None = None,
        *,
        index_types: dict[str, str] | None = None,
        on_progress: Progress | None = None,
        lock_wait_s: float = 0.0,
        sweep_vectors: bool = True,
        delta: bool = False,
    ) -> None:
        self.store = store
        # True: item changes go to the change log (storage/delta.py) until it is full, so a
        # small write rewrites no faiss file (serve's product writes); False: every commit
        # compacts the log into a new generation (index runs).
        self.delta = delta
        self.lock_wait_s = lock_wait_s
        # True: each commit drops every stored vector no item uses (an index run); False: only
        # those the commit released, so a small write does not scan the whole vector table.
        self.sweep_vectors = sweep_vectors
        self._embedder_factory = embedder_factory
        if embedder_factory is not None:
            # Tuning probes with short texts embedded by the text tower (storage/probes.py);
            # the model loads only if a commit re-tunes an approximate index.
            store.probe_embedder = lambda texts: self.embedder().encode_texts(texts)
        self.index_types = index_types
        self.on_progress = on_progress
        self._exit: ExitStack | None = None

    def __enter__(self) -> Indexer:
        stack = ExitStack()
        stack.enter_context(self.store.writer_lock(self.lock_wait_s))
        self._exit = stack
        return self

    def __exit__(self, *exc: Any) -> None:
        # The exception goes into the lock's context, which names SQLite errors (a full disk,
        # a lock, damage) for the index directory.
        stack, self._exit = self._exit, None
        if stack is not None:
            stack.__exit__(*exc)

    def embedder(self) -> Any:
        if self._embedder_factory is None:
            raise RuntimeError("this Indexer was made without an embedder factory")
        return self._embedder_factory()

    @contextmanager
    def change(self, *, rebuild: bool = False) -> Iterator[ChangeSet]:
        """One catalog transaction: the writer changes items through the yielded ChangeSet;
        on leaving, the next generation is committed when `must_commit` says so, vectors no
        item uses are dropped, and files of old generations are removed. `rebuild`: build
        every faiss file afresh from the stored vectors (`mmsearch check --repair`)."""
        if self._exit is None:
            raise RuntimeError("use the Indexer in a `with` block: it holds the writer lock")
        store = self.store
        try:
            with store.catalog.transaction():
                changes = ChangeSet(store.catalog)
                yield changes
                if rebuild or self.must_commit(changes):
                    store.commit(
                        changes.collections,
                        index_types=self.index_types,
                        force_rebuild=rebuild,
                        delta=self.delta and not rebuild,
                    )
                store.catalog.drop_unused_vectors(None if self.sweep_vectors else changes.released)
                faults.reached("commit")
        except BaseException:
            store.adopt_committed(False)
            raise
        store.adopt_committed(True)
        faults.reached("committed")
        store.cleanup()

    def must_commit(self, changes: ChangeSet) -> bool:
        """The one commit rule: a new generation (or, for a delta writer, a change log entry)
        when items changed, when the run asks for another index layout (--index-type,
        --ondisk/--in-memory), when ids of merged duplicates wait to leave the faiss files,
        when the index has no generation yet, or when an index run finds a change log to
        compact."""
        store = self.store
        return bool(
            changes
            or self.index_types
            or store.options.ondisk is not None
            or store.catalog.generation == 0
            or any(store.catalog.orphan_ids(collection) for collection in COLLECTIONS)
            or (not self.delta and store.catalog.delta_size() > 0)
        )

    def compact(self) -> bool:
        """Fold the change log into a new generation now (whatever its size); whether there
        was one to fold. Readers keep answering from the old generation until the commit."""
        if not self.store.catalog.delta_size():
            return False
        delta, self.delta = self.delta, False
        try:
            with self.change():
                pass
        finally:
            self.delta = delta
        return True


__all__ = ["ChangeSet", "Indexer", "Progress"]
