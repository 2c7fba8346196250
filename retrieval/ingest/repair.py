"""`mmsearch check --repair`: fix what storage/integrity.py reports as repairable, through the
one write path (indexer.py): rewrite the manifest from the catalog's copy, REINDEX a catalog
whose damage is confined to its indexes, keep one item per file, rebuild faiss files from the
stored vectors as a new generation, delete stray files and stored images no product uses (past
an hour old). It never drops a file's only item."""

from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path

from ..errors import IndexCorruptError
from ..files import is_within_any, write_atomic
from ..storage.blobs import UNUSED_BLOB_GRACE_S, drop_unused_blobs
from ..storage.catalog import Catalog
from ..storage.integrity import (
    CheckReport,
    check_index,
    identity_groups,
    identity_of,
)
from ..storage.store import CATALOG, MANIFEST, MANIFEST_META, IndexStore
from .indexer import ChangeSet, Indexer


def repair_index(directory: Path) -> CheckReport:
    """Repair what `check_index` reports as repairable, then check again.

    Raises:
        IndexBusyError: an index run holds the writer lock.
        IndexNotFoundError: `directory` holds no index.
    """
    directory = Path(directory)
    before = check_index(directory)
    kinds = {problem.kind for problem in before.problems if problem.repairable}
    repaired: list[str] = []
    if "sqlite" in kinds:
        repaired += _repair_sqlite(directory)
        before = check_index(directory)
        kinds = {problem.kind for problem in before.problems if problem.repairable}
        if "sqlite" in kinds:
            before.repaired = repaired
            return before
    if "manifest" in kinds:
        repaired.append(_rewrite_manifest(directory))
    if kinds - {"sqlite", "manifest"}:
        faiss = {"faiss-missing", "faiss-checksum", "faiss-unreadable", "faiss-mismatch"}
        with IndexStore.open(directory) as store, Indexer(store) as indexer:
            if kinds & (faiss | {"duplicate", "identity", "orphans"}):
                with indexer.change(rebuild=bool(kinds & faiss)) as changes:
                    repaired += _merge_identities(changes, store.catalog)
                repaired.append(
                    f"rebuilt the faiss indexes from the stored vectors as generation "
                    f"{store.catalog.generation}"
                    if kinds & faiss
                    else f"committed generation {store.catalog.generation}"
                )
            store.cleanup()
            if "stray-file" in kinds:
                repaired.append("deleted stray files of other generations or interrupted writes")
    if before.counts.get("unused_blobs"):
        with IndexStore.open(directory) as store, Indexer(store):
            deleted, freed = drop_unused_blobs(directory, store.catalog.blob_names(), time.time())
        if deleted:
            repaired.append(
                f"deleted {deleted} stored images no product uses ({freed / 2**20:.1f} MiB); "
                f"those under {UNUSED_BLOB_GRACE_S / 3600:.0f} h old are kept (a write may be "
                "about to use them)"
            )
    after = check_index(directory)
    after.repaired = repaired
    return after


def _repair_sqlite(directory: Path) -> list[str]:
    """REINDEX rebuilds every SQLite index from its table: it cures damage confined to them.
    Damaged table pages hold data that cannot be rebuilt from the index's own records."""
    try:
        db = sqlite3.connect(directory / CATALOG, isolation_level=None)
        try:
            db.execute("REINDEX")
        finally:
            db.close()
    except sqlite3.DatabaseError:
        return []
    return ["rebuilt the catalog's SQLite indexes (REINDEX)"]


def _rewrite_manifest(directory: Path) -> str:
    catalog = Catalog(directory / CATALOG, readonly=True)
    try:
        recorded = catalog.get_meta(MANIFEST_META)
    finally:
        catalog.close()
    if recorded is None:
        raise IndexCorruptError(f"{directory / MANIFEST}: no recorded copy to restore it from")
    write_atomic(directory / MANIFEST, json.dumps(json.loads(recorded), indent=2).encode())
    return f"restored {directory / MANIFEST} from the catalog's copy"


def _merge_identities(changes: ChangeSet, catalog: Catalog) -> list[str]:
    """Keep one item per file: the one already named by its identity, else the oldest (ids
    handed out stay valid where they can); give a lone odd spelling its normal form."""
    groups, odd = identity_groups(catalog)
    items = catalog.get_items([item_id for group in groups for item_id, _ in group])
    removed = 0
    roots = catalog.get_roots()
    for group in groups:
        identity = identity_of(group[0][1])
        keep = next(
            (item_id for item_id, path in group if path == identity),
            next((item_id for item_id, path in group if is_within_any(path, roots)), group[0][0]),
        )
        removed += changes.remove(items[item_id] for item_id, _ in group if item_id != keep)
        if items[keep].path != identity:
            changes.rename(items[keep], identity)
    for item_id, path in odd:
        item = catalog.get_item(item_id)
        if item is not None:
            changes.rename(item, os.path.normpath(path))
    done = []
    if groups:
        done.append(f"kept one item per file for {len(groups)} files ({removed} items removed)")
    if odd:
        done.append(f"renamed {len(odd)} images to the normal form of their path")
    return done


__all__ = ["repair_index"]
