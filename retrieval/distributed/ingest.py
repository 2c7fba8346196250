"""`mmsearch index --ray`: list the records, embed the new ones on a Ray cluster into float16
shards under the index directory, then add them to the catalog and build the index in one
commit (store.py), exactly as the single-machine path does after its own embedding."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..config import EmbedConfig
from ..errors import InvalidQueryError
from ..files import canonical_root
from ..ingest.indexer import Indexer
from ..ingest.sync import IndexReport, items_under, vanished
from ..storage.catalog import Item
from ..storage.store import IndexStore
from ..types import IMAGES, ModelSpec, Skipped
from .shards import DEFAULT_RECORDS_PER_SHARD, EMBEDDINGS_DIR, ShardSet
from .sources import Record, folder_inputs, list_records


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide to run: a cluster address (`auto` or `ray://HOST:10001`, `HOST:6379`),
    actors in the pool (None: one per GPU, else per CPU) and records per embedding shard."""

    address: str = "auto"
    actors: int | None = None
    shard_size: int = DEFAULT_RECORDS_PER_SHARD


def _stat(record: Record) -> tuple[int | None, int | None]:
    if not record.is_local_file:
        return None, None
    try:
        stat = os.stat(record.path)
    except OSError:
        return None, None
    return stat.st_size, stat.st_mtime_ns


def _new_records(store: IndexStore, records: list[Record]) -> list[Record]:
    """Records not in the catalog yet, or local files whose size or mtime changed."""
    existing = {
        item.path: (item.size, item.mtime_ns)
        for item in store.catalog.iter_items(IMAGES)
        if item.path and item.product_id is None
    }
    return [r for r in records if r.label not in existing or existing[r.label] != _stat(r)]


def index_with_ray(
    indexer: Indexer,
    inputs: list[Path | str],
    config: EmbedConfig,
    options: RayOptions,
    *,
    on_batch: Callable[[int], None] | None = None,
) -> IndexReport:
    """Index the images `inputs` name (folders, files, manifests, tar shards, URLs) with Ray,
    committing through `indexer` (the one write path). Records already indexed are not embedded
    again, and shards finished by a killed run are reused. Images under a local folder input
    whose file is gone are removed, as the single-machine `mmsearch index FOLDER` does;
    manifests, tar shards and URLs only add and update (their listing says what to index, not
    what was deleted)."""
    try:
        from .ray_embed import embed_with_ray  # ray imports only when a run needs it
    except ImportError as err:
        raise InvalidQueryError(
            f"--ray needs Ray Data ({err}): pip install 'mmsearch[ray]' (or 'ray[data]'), "
            "or drop --ray to index on this machine"
        ) from err

    started = time.perf_counter()
    store, on_progress = indexer.store, indexer.on_progress
    report = IndexReport()
    records = list_records(inputs)
    todo = _new_records(store, records)
    owned = items_under(store, folder_inputs(inputs))  # what this run may remove
    removed = vanished(owned, {record.label for record in records})
    report.unchanged = len(records) - len(todo)
    identity = store.identity
    shards = ShardSet(
        store.directory / EMBEDDINGS_DIR,
        todo,
        {"model": identity.to_dict()},
        options.shard_size,
    )

    reused = len(todo) - shards.pending_count()  # finished by an earlier, killed run
    if on_progress and reused:
        on_progress("embed", reused, len(todo))
    last = 0

    def progress(done: int) -> None:
        nonlocal last
        if on_progress:
            on_progress("embed", done - last, len(todo))
        last = done
        if on_batch:
            on_batch(done)

    embed_with_ray(
        shards,
        ModelSpec(identity.name, identity.pretrained),
        config,
        identity,
        address=options.address,
        actors=options.actors,
        on_batch=progress,
    )
    roots = [str(canonical_root(path)) for path in folder_inputs(inputs)]
    _commit(indexer, todo, (owned, removed), shards, report, roots)
    shards.remove()
    report.elapsed_s = time.perf_counter() - started
    return report


def _commit(
    indexer: Indexer,
    todo: list[Record],
    removals: tuple[dict[str, Item], list[Item]],
    shards: ShardSet,
    report: IndexReport,
    roots: list[str],
) -> None:
    """Add the shards' vectors and items and remove `removals` = (the items under the folder
    inputs, those of them whose file is gone) in one catalog transaction and index commit. As in
    the single-machine path, a folder's image that changed and can no longer be read is dropped
    too, never left searchable under its old vector."""
    owned, removed = removals
    store = indexer.store
    by_label = {
        item.path: item
        for item in store.catalog.iter_items(IMAGES)
        if item.path and item.product_id is None
    }
    with indexer.change() as changes:
        store.catalog.add_roots(roots)
        report.removed = changes.remove(removed)
        for shard in shards:
            if len(shard.positions):
                store.catalog.put_vectors(shard.keys, shard.vectors)
            for position, key in zip(shard.positions.tolist(), shard.keys, strict=True):
                record = todo[position]
                size, mtime_ns = _stat(record)
                old = by_label.get(record.label)
                if old is not None:
                    changes.replace(old, key=key, size=size, mtime_ns=mtime_ns)
                else:
                    changes.add(IMAGES, key, path=record.label, size=size, mtime_ns=mtime_ns)
                report.indexed += 1
                report.embedded += 1
            for position, reason, detail in shard.skipped:
                label = todo[position].label
                report.skipped.append(Skipped(label, reason, detail))
                if label in owned:
                    changes.remove([owned[label]])
