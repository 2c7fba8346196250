"""walk -> compare with the catalog -> hash what changed -> decode + embed what is new -> commit.

Every embedded batch is committed to the vector cache as soon as it is computed, so a run that
is killed keeps its finished batches and the next run only embeds the rest; the items and the
faiss files change in one final transaction, through the one write path (indexer.py). Files
are named by the identity rule of files.py."""

from __future__ import annotations

import hashlib
import os
import time
from collections import Counter
from collections.abc import Callable, Container, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

from .. import faults
from ..embedders.protocols import IndexEmbedder
from ..files import (
    canonical_root,
    display_name,
    file_sha256,
    is_storable_name,
    is_within_any,
)
from ..images import walk_images
from ..storage.catalog import Item, SkippedFile
from ..storage.space import check_free_space, disk_space_guard, estimate_run_bytes
from ..storage.store import IndexStore
from ..types import IMAGES, TEXTS, Skipped, Vectors
from .indexer import ChangeSet, Indexer, Progress

EmbedderFactory = Callable[[], IndexEmbedder]
# Texts are embedded and committed in chunks of this size: small enough that a killed run loses
# little, large enough to amortise the transaction.
TEXT_CHUNK = 512
# Threads hashing files during the scan: enough to keep a local SSD or the page cache busy
# (sha256 runs ~1 GB/s per core), few enough not to crowd a small machine.
HASH_THREADS = min(8, os.cpu_count() or 1)
# Decode failures that depend on the file's bytes alone: remembered with the file's content key
# (catalog.skipped_files), so an unchanged broken file is reported again without being read or
# the model being loaded. Not remembered: `unreadable` (permissions, a flaky disk: may pass next
# time) and `unsupported-format` (installing an extra such as [raw] fixes it) are retried.
REMEMBERED_SKIPS = frozenset({"empty", "corrupt", "truncated", "not-an-image"})


@dataclass
class IndexReport:
    """What one index run did."""

    indexed: int = 0
    embedded: int = 0
    reused: int = 0
    unchanged: int = 0
    removed: int = 0
    skipped: list[Skipped] = field(default_factory=list)
    texts_indexed: int = 0
    texts_removed: int = 0
    elapsed_s: float = 0.0
    ignored: dict[str, int] = field(default_factory=dict)
    """Files the walk passed over as not images, counted by extension (`.mov`: 10)."""

    @property
    def images_per_s(self) -> float:
        return self.embedded / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def skipped_by_reason(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for skip in self.skipped:
            counts[skip.reason] = counts.get(skip.reason, 0) + 1
        return dict(sorted(counts.items()))


def file_key(path: Path) -> str:
    """Content key of an image file: identical bytes share one stored vector."""
    return "img:" + file_sha256(path)


def text_key(text: str) -> str:
    return "txt:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass
class _ImagePlan:
    pending: dict[str, tuple[str, int, int]] = field(default_factory=dict)  # path->(key,size,mtime)
    existing: dict[str, Item] = field(default_factory=dict)
    removed: list[Item] = field(default_factory=list)
    unchanged: int = 0
    touched: list[tuple[Item, int, int]] = field(default_factory=list)  # same bytes, new stat
    skipped: list[Skipped] = field(default_factory=list)
    # Paths whose item a failed read or decode must drop (not bad names: they have no item).
    failed: set[str] = field(default_factory=set)
    roots: list[str] = field(default_factory=list)  # real paths of the synced roots
    ignored: Counter[str] = field(default_factory=Counter)
    # Files that did not decode before (catalog.skipped_files), path -> record; `restat`: those
    # found again with the same bytes under a new size/mtime; `forget`: records to drop (the
    # file is gone, or changed and is tried again).
    broken: dict[str, SkippedFile] = field(default_factory=dict)
    restat: list[SkippedFile] = field(default_factory=list)
    forget: set[str] = field(default_factory=set)


def items_under(store: IndexStore, roots: Sequence[Path]) -> dict[str, Item]:
    """path -> item for the image items a sync of `roots` owns: those (no product's) whose path
    is a root or lies below one. Only these may be removed by that sync, so indexing one folder
    never drops another folder's images. Roots are named by their real path (files.py)."""
    root_strs = [str(canonical_root(root)) for root in roots]
    return {
        item.path: item
        for item in store.catalog.iter_items(IMAGES)
        if item.path and item.product_id is None and is_within_any(item.path, root_strs)
    }


def vanished(owned: dict[str, Item], seen: Container[str]) -> list[Item]:
    """The items of `owned` (see items_under) whose file the walk no longer found: deleted or
    moved away, so a sync removes them."""
    return [item for path, item in owned.items() if path not in seen]


def _plan_images(store: IndexStore, roots: list[Path], on_progress: Progress | None) -> _ImagePlan:
    plan = _ImagePlan(roots=[str(canonical_root(root)) for root in roots])
    plan.existing = items_under(store, roots)
    plan.broken = store.catalog.skipped_files()
    unlisted: list[str] = []  # folders that could not be listed: their items are kept

    def on_skip(path: Path, reason: str, detail: str) -> None:
        plan.skipped.append(Skipped(display_name(str(path)), reason, detail))
        if reason == "unreadable":
            unlisted.append(str(path))
        elif is_storable_name(str(path)):
            plan.failed.add(str(path))

    def on_ignore(path: Path) -> None:
        plan.ignored[path.suffix.lower() or "(no extension)"] += 1

    found = [path for root in roots for path in walk_images(root, on_skip, on_ignore)]
    # An item whose vector row is gone (a damaged catalog) is re-read and re-embedded even when
    # its file is unchanged: skipping it would leave it silently missing from every search.
    stored = store.catalog.has_vectors({item.key for item in plan.existing.values()})
    all_names = list(dict.fromkeys(str(path) for path in found))  # a file under two roots: once
    seen = set(all_names)
    names = []
    for name in all_names:
        if is_storable_name(name):
            names.append(name)
        else:
            # Reported by an escaped name, never the lossy one: `a\xff.jpg` must not stand in
            # for a real `a?.jpg` (files.py, rule 5).
            detail = "the file name is not valid UTF-8; rename the file"
            plan.skipped.append(Skipped(display_name(name), "bad-name", detail))
    # Hashing is most of the scan (a read and a sha256 per changed file); hashlib and the reads
    # release the GIL, so threads hash files side by side instead of one after another.
    with ThreadPoolExecutor(HASH_THREADS, thread_name_prefix="mmsearch-hash") as pool:
        scan = partial(_scan_one, plan.existing, stored, plan.broken)
        for name, outcome in zip(names, pool.map(scan, map(Path, names)), strict=True):
            if on_progress:
                on_progress("scan", 1, len(found))
            if isinstance(outcome, Skipped):
                plan.skipped.append(outcome)
                plan.failed.add(outcome.path)
            elif isinstance(outcome, SkippedFile):
                plan.skipped.append(Skipped(name, outcome.reason, outcome.detail))
            elif outcome is None:
                plan.unchanged += 1
            else:
                _plan_changed(plan, stored, name, *outcome)
    plan.removed = [
        item
        for item in vanished(plan.existing, seen)
        if not is_within_any(item.path or "", unlisted)
    ]
    plan.forget.update(
        path
        for path in plan.broken
        if path not in seen
        and is_within_any(path, plan.roots)
        and not is_within_any(path, unlisted)
    )
    return plan


def _plan_changed(
    plan: _ImagePlan, stored: set[str], name: str, key: str, stat: os.stat_result
) -> None:
    """Sort a hashed file: same bytes as its item (touched), same bytes as when it last failed
    to decode (skipped again), or new content to embed (pending)."""
    old = plan.existing.get(name)
    record = plan.broken.get(name)
    if old is not None and old.key == key and key in stored:
        plan.unchanged += 1
        plan.touched.append((old, stat.st_size, stat.st_mtime_ns))
    elif old is None and record is not None and record.key == key:
        plan.skipped.append(Skipped(name, record.reason, record.detail))
        plan.restat.append(replace(record, size=stat.st_size, mtime_ns=stat.st_mtime_ns))
    else:
        plan.pending[name] = (key, stat.st_size, stat.st_mtime_ns)
        if record is not None:
            plan.forget.add(name)


def _scan_one(
    existing: dict[str, Item], stored: set[str], broken: dict[str, SkippedFile], path: Path
) -> tuple[str, os.stat_result] | Skipped | SkippedFile | None:
    """(key, stat) of a file that may have changed, None when its size and mtime match the
    catalog, the record of a file that did not decode before and whose size and mtime have
    not changed since, or the Skipped for a file that cannot be read."""
    try:
        stat = path.stat()
        old = existing.get(str(path))
        record = broken.get(str(path))
        if (
            old is None
            and record is not None
            and (record.size, record.mtime_ns) == (stat.st_size, stat.st_mtime_ns)
        ):
            return record
        if (
            old is not None
            and (old.size, old.mtime_ns) == (stat.st_size, stat.st_mtime_ns)
            and old.key in stored
        ):
            return None
        faults.reached("hash")
        return file_key(path), stat
    except OSError as err:
        return Skipped(str(path), "unreadable", str(err))


def embed_missing_images(
    store: IndexStore,
    keys_by_path: dict[str, str],
    embedder_factory: EmbedderFactory,
    on_progress: Progress | None,
) -> tuple[int, list[Skipped]]:
    """Embed one file per missing key; returns (embedded count, skipped files)."""
    have = store.catalog.has_vectors(set(keys_by_path.values()))
    todo: dict[str, str] = {}
    for path, key in keys_by_path.items():
        if key not in have and key not in todo:
            todo[key] = path
    if not todo:
        return 0, []
    paths = [Path(p) for p in todo.values()]
    keys = list(todo)
    skipped: list[Skipped] = []
    embedded = 0
    embedder = embedder_factory()

    def on_batch(positions: list[int], vectors: Vectors, skips: list[tuple[int, Skipped]]) -> None:
        nonlocal embedded
        with store.catalog.transaction():
            store.catalog.put_vectors([keys[p] for p in positions], vectors)
        faults.reached("embed")
        embedded += len(positions)
        skipped.extend(skip for _, skip in skips)
        if on_progress:
            on_progress("embed", len(positions) + len(skips), len(paths))

    embedder.embed_image_files(paths, on_batch)
    # A file skipped once is skipped for every path that shares its bytes.
    first_skip = {keys_by_path[s.path]: s for s in skipped if s.path in keys_by_path}
    skipped_paths = {s.path for s in skipped}
    for path, key in keys_by_path.items():
        if key in first_skip and path not in skipped_paths:
            skipped.append(Skipped(path, first_skip[key].reason, first_skip[key].detail))
    return embedded, skipped


def sync_images_and_texts(
    store: IndexStore,
    roots: list[Path],
    embedder_factory: EmbedderFactory,
    *,
    texts: list[str] | None = None,
    index_types: dict[str, str] | None = None,
    on_progress: Progress | None = None,
) -> IndexReport:
    """Sync the images under `roots` (and optionally the text list) into `store`, taking the
    writer lock for the run (see `sync_folders` for what a sync does)."""
    with Indexer(
        store, embedder_factory, index_types=index_types, on_progress=on_progress
    ) as indexer:
        return sync_folders(indexer, roots, texts=texts)


def sync_folders(
    indexer: Indexer, roots: list[Path], *, texts: list[str] | None = None
) -> IndexReport:
    """Make the index's images under `roots` equal the image files there (and, with `texts`,
    its free-text collection equal that list).

    Files whose size and mtime match the catalog are not read; changed ones are hashed, and
    only content never embedded before goes through the model."""
    started = time.perf_counter()
    store = indexer.store
    plan = _plan_images(store, roots, indexer.on_progress)
    needed = _space_needed(store, plan, texts)
    check_free_space(store.directory, needed)
    with disk_space_guard(store.directory, needed):
        report = _apply_plan(indexer, plan, texts)
    report.elapsed_s = time.perf_counter() - started
    return report


def _space_needed(store: IndexStore, plan: _ImagePlan, texts: list[str] | None) -> int:
    new_texts = len(texts) if texts is not None else 0
    images = store.catalog.count(IMAGES) - len(plan.removed) + len(plan.pending)
    return estimate_run_bytes(
        dim=store.identity.dim,
        new_vectors=len(plan.pending) + new_texts,
        changed_items=len(plan.pending) + len(plan.removed) + new_texts,
        indexed=max(images, 0) + new_texts,
    )


def _apply_plan(indexer: Indexer, plan: _ImagePlan, texts: list[str] | None) -> IndexReport:
    store = indexer.store
    report = IndexReport()
    keys_by_path = {path: key for path, (key, _, _) in plan.pending.items()}
    embedded, skipped = embed_missing_images(
        store, keys_by_path, indexer.embedder, indexer.on_progress
    )
    report.embedded = embedded
    report.skipped = plan.skipped + skipped
    report.ignored = dict(sorted(plan.ignored.items(), key=lambda item: (-item[1], item[0])))
    report.unchanged = plan.unchanged
    failed = plan.failed | {s.path for s in skipped}

    wanted_texts = None
    if texts is not None:
        wanted_texts = embed_texts(store, texts, indexer.embedder, indexer.on_progress)

    with indexer.change() as changes:
        store.catalog.add_roots(plan.roots)
        _remember_broken(store, plan, skipped)
        if wanted_texts is not None:
            _apply_texts(store, changes, wanted_texts, report)
        for item, size, mtime_ns in plan.touched:
            changes.touch(item, size=size, mtime_ns=mtime_ns)
        # A file that changed and can no longer be read is dropped, never left searchable
        # under its old vector.
        changes.remove(plan.removed + [plan.existing[p] for p in failed if p in plan.existing])
        report.removed = len(plan.removed)
        for path, (key, size, mtime_ns) in plan.pending.items():
            if path in failed:
                continue
            old = plan.existing.get(path)
            if old is not None:
                changes.replace(old, key=key, size=size, mtime_ns=mtime_ns)
            else:
                changes.add(IMAGES, key, path=path, size=size, mtime_ns=mtime_ns)
            report.indexed += 1
        report.reused = report.indexed - report.embedded
    return report


def _remember_broken(store: IndexStore, plan: _ImagePlan, skipped: list[Skipped]) -> None:
    """Inside the run's transaction: update catalog.skipped_files with this run's decode
    failures (see REMEMBERED_SKIPS) and drop the records of files gone or changed."""
    store.catalog.forget_skipped_files(plan.forget)
    failures = [
        SkippedFile(skip.path, *plan.pending[skip.path], skip.reason, skip.detail)
        for skip in skipped
        if skip.reason in REMEMBERED_SKIPS and skip.path in plan.pending
    ]
    store.catalog.record_skipped_files(plan.restat + failures)


def embed_texts(
    store: IndexStore,
    texts: list[str],
    embedder_factory: EmbedderFactory,
    on_progress: Progress | None,
) -> dict[str, str]:
    """Embed the texts that have no stored vector yet; returns key -> text for all of them."""
    wanted = {text_key(text): text for text in dict.fromkeys(t for t in texts if t.strip())}
    have = store.catalog.has_vectors(wanted)
    missing = [key for key in wanted if key not in have]
    if missing:
        embedder = embedder_factory()
        for start in range(0, len(missing), TEXT_CHUNK):
            chunk = missing[start : start + TEXT_CHUNK]
            vectors = embedder.encode_texts([wanted[key] for key in chunk])
            with store.catalog.transaction():
                store.catalog.put_vectors(chunk, vectors)
            faults.reached("texts")
            if on_progress:
                on_progress("texts", len(chunk), len(missing))
    return wanted


def _apply_texts(
    store: IndexStore, changes: ChangeSet, wanted: dict[str, str], report: IndexReport
) -> None:
    """Inside the run's transaction: make the free-text collection equal `wanted` (products'
    titles are left alone)."""
    current = {
        item.key: item for item in store.catalog.iter_items(TEXTS) if item.product_id is None
    }
    report.texts_removed = changes.remove(
        item for key, item in current.items() if key not in wanted
    )
    for key, text in wanted.items():
        if key not in current:
            changes.add(TEXTS, key, text=text)
            report.texts_indexed += 1
