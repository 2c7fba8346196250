"""One index directory on disk: manifest.json (format + model identity), catalog.sqlite (items,
float16 vectors, products) and one faiss file per collection and generation.

Crash safety: an index run writes `<collection>.<generation+1>.faiss` next to the current files,
then flips `generation` in the same SQLite transaction that changes the items. A run killed at
any point leaves either the old generation or the new one, never a mix; stray files of an
unfinished generation are deleted by the next writer."""

from __future__ import annotations

import json
import logging
import os
import shutil
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .. import faults
from ..errors import (
    IndexBusyError,
    IndexCorruptError,
    IndexMismatchError,
    IndexNotFoundError,
    InvalidQueryError,
)
from ..files import file_sha256, write_atomic
from ..index import FaissIndex
from ..index.ondisk import DEFAULT_SHARD_SIZE, build_ondisk_ivf, ondisk_factory
from ..index.tuning import (
    DEFAULT_TARGET_RECALL,
    TUNE_TEXT_QUERIES,
    Tuning,
    is_approximate,
    sample_rows,
    tune,
    tune_streamed,
)
from ..locks import exclusive_lock
from ..sqlite_errors import classify_sqlite_error
from ..types import COLLECTIONS, IMAGES, TEXTS, ModelIdentity
from .catalog import Catalog

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
CATALOG = "catalog.sqlite"
LOCK = ".lock"
# How often a writer waiting for the lock tries again: short next to a write (tens of ms).
LOCK_POLL_S = 0.01
# Adding to an IVF index without retraining degrades its clustering as the data drifts; past
# this growth factor since the last training we rebuild from the stored vectors instead.
RETRAIN_GROWTH = 2.0
# Tuned nprobe/efSearch hold while the index stays within this factor of the size it was tuned
# at (recall drifts slowly with n); past it the next commit re-measures.
RETUNE_GROWTH = 1.25
# faiss files at least this large are memory-mapped read-only on open: `query` and `serve` start
# without reading them (benchmarks/ann.py: cold open + first query of 1M vectors); writers
# reload them fully before an in-place update.
MMAP_MIN_BYTES = 256 << 20


@dataclass(frozen=True)
class StoreOptions:
    """How a store searches and builds, fixed when it is opened (dataclasses.replace for
    another)."""

    # Readers may search on the GPU; writers always build and save on the CPU.
    use_gpu: bool = False
    # None: keep each collection's recorded target (DEFAULT_TARGET_RECALL at first).
    target_recall: float | None = None
    # True: (re)build the images collection as a sharded IVF with its inverted lists in a
    # memory-mapped .ivfdata file (index/ondisk.py); None: keep the collection's choice.
    ondisk: bool | None = None
    ondisk_shard_size: int = DEFAULT_SHARD_SIZE


@dataclass
class CollectionChanges:
    """Item ids whose vectors must leave or enter one collection's faiss index."""

    removed: list[int] = field(default_factory=list)
    added: list[int] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.removed or self.added)


class IndexStore:
    """Reads and writes one index directory."""

    def __init__(
        self,
        directory: Path,
        manifest: dict[str, Any],
        catalog: Catalog,
        options: StoreOptions | None = None,
    ) -> None:
        self.directory = directory
        self.manifest = manifest
        self.catalog = catalog
        self.identity = ModelIdentity.from_dict(manifest["model"])
        self.options = options or StoreOptions()
        self._indexes: dict[str, tuple[int, FaissIndex | None]] = {}
        # Indexes this writer just saved for the generation it is committing; adopted as the
        # cached copies once the transaction has committed (adopt_committed), so a long-lived
        # writer (serve) does not read back and re-verify the file it wrote on every write.
        self._saved: dict[str, FaissIndex | None] = {}
        self._rebuilt = False

    # -- opening ------------------------------------------------------------------------------
    @staticmethod
    def exists(directory: Path) -> bool:
        return (directory / MANIFEST).is_file() and (directory / CATALOG).is_file()

    @classmethod
    def open(
        cls, directory: Path, *, readonly: bool = False, options: StoreOptions | None = None
    ) -> IndexStore:
        """Open an existing index directory.

        Raises:
            IndexNotFoundError: nothing has been indexed into `directory` yet.
            IndexMismatchError: written by a newer, unknown format version.
        """
        directory = Path(directory)
        if not cls.exists(directory):
            raise IndexNotFoundError(
                f"no index at {directory}: create one with "
                f"`mmsearch index PATH --index {directory}`"
            )
        repair = f"run `mmsearch check --repair --index {directory}`"
        try:
            manifest = json.loads((directory / MANIFEST).read_text())
            if not isinstance(manifest, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as err:
            raise IndexCorruptError(f"cannot read {directory / MANIFEST}: {err}; {repair}") from err
        version = manifest.get("format_version")
        if version != FORMAT_VERSION:
            raise IndexMismatchError(
                f"index {directory} has format version {version}; this mmsearch reads version "
                f"{FORMAT_VERSION}. Upgrade mmsearch, or rebuild the index into a new --index DIR."
            )
        try:
            catalog = Catalog(directory / CATALOG, readonly=readonly)
            recorded = catalog.get_meta(MANIFEST_META)
        except sqlite3.DatabaseError as err:  # a full disk, a lock, damage: say which
            raise classify_sqlite_error(err, directory) from err
        if recorded is not None and json.loads(recorded) != manifest:
            # An edited model name or dim would embed queries with the wrong model.
            catalog.close()
            raise IndexCorruptError(
                f"{directory / MANIFEST} differs from the copy the catalog recorded when the "
                f"index was created (edited by hand?); {repair} to restore it"
            )
        try:
            return cls(directory, manifest, catalog, options)
        except (KeyError, TypeError, ValueError) as err:
            catalog.close()
            raise IndexCorruptError(
                f"{directory / MANIFEST} is incomplete ({err}); {repair}"
            ) from err

    @classmethod
    def create(
        cls, directory: Path, identity: ModelIdentity, options: StoreOptions | None = None
    ) -> IndexStore:
        """Create a new, empty index directory for `identity`."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        now = time.time()
        manifest = {
            "format_version": FORMAT_VERSION,
            "model": identity.to_dict(),
            "created": now,
        }
        try:
            catalog = Catalog(directory / CATALOG)
        except sqlite3.DatabaseError as err:
            raise classify_sqlite_error(err, directory) from err
        record_manifest(catalog, manifest)
        # The manifest is written last: its presence is what makes the directory an index.
        write_atomic(directory / MANIFEST, json.dumps(manifest, indent=2).encode())
        return cls(directory, manifest, catalog, options)

    def with_options(self, **changes: Any) -> IndexStore:
        """This store (same catalog connection) with some options replaced; a new object, so
        options never change under a reader or writer that holds the old one."""
        return IndexStore(
            self.directory, self.manifest, self.catalog, replace(self.options, **changes)
        )

    def close(self) -> None:
        self.catalog.close()

    def __enter__(self) -> IndexStore:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    @contextmanager
    def writer_lock(self, wait_s: float = 0.0) -> Iterator[None]:
        """Exclusive advisory lock for index runs and HTTP product writes, waited for up to
        `wait_s` seconds; readers never take it."""
        # Forked children (decode workers) never hold it: see retrieval/locks.py.
        deadline = time.monotonic() + wait_s
        while True:
            with exclusive_lock(self.directory / LOCK) as taken:
                if taken:
                    try:
                        self._drop_stray_files()
                        if self.catalog.get_meta(MANIFEST_META) is None:  # older indexes
                            with self.catalog.transaction():
                                record_manifest(self.catalog, self.manifest)
                        yield
                    except sqlite3.DatabaseError as err:
                        # Said here, where the directory is known: a full or failing disk, a
                        # lock held outside mmsearch, or real damage (retrieval/sqlite_errors.py).
                        raise classify_sqlite_error(err, self.directory) from err
                    return
            if time.monotonic() >= deadline:
                raise IndexBusyError(
                    f"another writer (`mmsearch index`, or a server's product write) holds "
                    f"{self.directory}; wait for it to finish and try again."
                )
            time.sleep(LOCK_POLL_S)

    # -- reading ------------------------------------------------------------------------------
    def _faiss_path(self, collection: str, generation: int) -> Path:
        return self.directory / f"{collection}.{generation}.faiss"

    def get_index(self, collection: str) -> FaissIndex | None:
        """The current faiss index of a collection (None when it is empty), reloaded when an
        index run has committed a new generation since the last call."""
        generation = self.catalog.generation
        cached = self._indexes.get(collection)
        if cached is not None and cached[0] == generation:
            return cached[1]
        try:
            index = self._open_generation(collection, generation)
        except (IndexCorruptError, IndexNotFoundError, FileNotFoundError):
            # Readers take no lock: the generation, the file, its checksum and the count are
            # read one after another, and an index run may commit in between (recording the
            # next file's checksum, then deleting this generation's file: faiss then says
            # IndexNotFoundError). Only a failure at an unchanged generation means damage;
            # otherwise open the new one.
            if self.catalog.generation == generation:
                raise
            return self.get_index(collection)
        self._indexes[collection] = (generation, index)
        return index

    def _open_generation(self, collection: str, generation: int) -> FaissIndex | None:
        path = self._faiss_path(collection, generation)
        if path.is_file():
            return self._load_verified(collection, path)
        if generation == 0 or not self.catalog.count(collection):
            return None
        if self.catalog.generation != generation:
            raise FileNotFoundError(path)  # deleted by the commit that moved the generation
        # Cannot happen after a clean commit; rebuild rather than refuse to answer.
        logger.warning("%s is missing; rebuilding it in memory from stored vectors", path)
        ids, vectors = self.catalog.get_vectors(collection, self.identity.dim)
        return FaissIndex.build(vectors, ids, self.index_type(collection))

    def _load_verified(self, collection: str, path: Path) -> FaissIndex:
        """Load a faiss file, refusing one that differs from what the commit recorded: a
        damaged file must fail loudly, never answer with wrong neighbours."""
        repair = f"run `mmsearch check --repair --index {self.directory}` to rebuild it"
        # on-disk inverted lists are mapped by faiss itself (IO_FLAG_MMAP breaks them)
        mmap = path.stat().st_size >= MMAP_MIN_BYTES and not self._ivfdata(collection)
        recorded = self.catalog.get_meta(f"sha256:{collection}")
        # Files read fully are hashed too (one more pass over bytes in the page cache);
        # memory-mapped ones are too large for every open: `mmsearch check` hashes them.
        if recorded and not mmap and file_sha256(path) != recorded:
            raise IndexCorruptError(
                f"{path} does not match the checksum recorded at commit; {repair}"
            )
        tuning = self.tuning(collection)
        try:
            index = FaissIndex.load(
                path,
                use_gpu=self.options.use_gpu,
                mmap=mmap,
                search_params=tuning.params if tuning is not None else None,
            )
        except IndexCorruptError as err:
            raise IndexCorruptError(f"{err}; {repair}") from err
        # Ids of merged duplicates stay in the file until the next commit (catalog.MIGRATIONS);
        # searches skip them, as they skip any id without an item.
        count = self.catalog.count(collection) + len(self.catalog.orphan_ids(collection))
        # A writer loads the old generation inside its transaction, after changing the items.
        if index.ntotal != count and not self.catalog.db.in_transaction:
            raise IndexCorruptError(
                f"{path} holds {index.ntotal} vectors but the catalog lists {count} "
                f"{collection}; {repair}"
            )
        return index

    def index_type(self, collection: str) -> str:
        return self.catalog.get_meta(f"index_type:{collection}", "auto") or "auto"

    def tuning(self, collection: str) -> Tuning | None:
        """The recall tuning recorded for the current generation's index, if approximate."""
        raw = self.catalog.get_meta(f"tuning:{collection}")
        return Tuning.from_dict(json.loads(raw)) if raw else None

    # -- writing ------------------------------------------------------------------------------
    def commit(
        self,
        changes: dict[str, CollectionChanges],
        *,
        index_types: dict[str, str] | None = None,
        force_rebuild: bool = False,
    ) -> None:
        """Inside an open catalog transaction: write the next generation's faiss files and
        flip the generation. The caller's transaction commit makes it all visible at once."""
        old = self.catalog.generation
        new = old + 1
        dim = self.identity.dim
        for collection in COLLECTIONS:
            requested = (index_types or {}).get(collection) or self.index_type(collection)
            self.catalog.set_meta(f"index_type:{collection}", requested)
            change = changes.get(collection, CollectionChanges())
            orphans = self.catalog.orphan_ids(collection)
            if orphans:
                change = CollectionChanges(change.removed + orphans, change.added)
                self.catalog.clear_orphans(collection)
            current_path = self._faiss_path(collection, old)
            built_for = self.catalog.get_meta(f"built_for:{collection}")
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
                self.catalog.set_meta(f"factory:{collection}", index.factory)
                if not self.options.use_gpu and not index.on_disk:
                    self._saved[collection] = index
            # Checked by every reader that loads the file and by `mmsearch check`.
            self.catalog.set_meta(f"sha256:{collection}", checksum)
            faults.reached("faiss")
        self.catalog.set_meta("generation", str(new))
        self.catalog.set_meta("updated", str(time.time()))

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
        current = None if force_rebuild or not had_file else self.get_index(collection)
        if current is not None and current.read_only:  # mmapped: read it fully to update it
            current = FaissIndex.load(
                self._faiss_path(collection, self.catalog.generation),
                search_params=current.search_params,
            )
        # The cached reader copy is about to be mutated; never serve it again.
        self._indexes.pop(collection, None)
        built_n = int(self.catalog.get_meta(f"built_n:{collection}", "0") or 0)
        built_for = self.catalog.get_meta(f"built_for:{collection}")
        # Parameters such as nlist follow n, so an index built for n stays right for n/2..2n;
        # past that (or for another --index-type) rebuild, which also lets `auto` move from
        # exact to approximate search as a collection grows.
        ondisk = self._wants_ondisk(collection)
        incremental = (
            current is not None
            and not ondisk
            and not current.on_disk  # readers may have its .ivfdata mapped: never modify it
            and built_for == requested
            and (current.supports_remove or not change.removed)
            and built_n / RETRAIN_GROWTH <= count <= RETRAIN_GROWTH * built_n
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
        self.catalog.set_meta(f"built_n:{collection}", str(len(ids)))
        self.catalog.set_meta(f"built_for:{collection}", requested)
        self.catalog.set_meta(f"ivfdata:{collection}", "")
        return FaissIndex.build(vectors, ids, requested)

    def _wants_ondisk(self, collection: str) -> bool:
        if collection != IMAGES:
            return False
        if self.options.ondisk is not None:
            return self.options.ondisk
        return self.catalog.get_meta(f"ondisk:{collection}") == "1"

    def _ivfdata(self, collection: str) -> str:
        """File name of the collection's on-disk inverted lists, or '' when it has none."""
        return self.catalog.get_meta(f"ivfdata:{collection}", "") or ""

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
        self.catalog.set_meta(f"built_n:{collection}", str(len(ids)))
        self.catalog.set_meta(f"built_for:{collection}", requested)
        self.catalog.set_meta(f"ondisk:{collection}", "1")
        self.catalog.set_meta(f"ivfdata:{collection}", name)
        return index

    def _build_dir(self, collection: str) -> Path:
        # Dot-named, so it is never taken for an index file; kept until the commit lands so
        # a killed build resumes from its trained index and finished shards.
        return self.directory / f".build-{collection}"

    def _tune(self, collection: str, index: FaissIndex, dim: int, *, rebuilt: bool) -> None:
        """Measure recall@10 and pick search parameters when the index was (re)built, grew
        past its tuning, or the target changed; otherwise keep the recorded ones."""
        if not is_approximate(index.faiss_index):
            self.catalog.set_meta(f"tuning:{collection}", "")
            return
        old = self.tuning(collection)
        target = self.options.target_recall or (old.target_recall if old else DEFAULT_TARGET_RECALL)
        if (
            old is not None
            and not rebuilt
            and old.target_recall == target
            and old.tuned_n / RETUNE_GROWTH <= index.ntotal <= old.tuned_n * RETUNE_GROWTH
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
        if self._wants_ondisk(collection) and index.on_disk:
            # Built shard by shard: read the catalog in chunks so peak RSS follows the
            # chunk, not n (the same sample and exact truth as `tune`).
            result = tune_streamed(
                index,
                self.catalog.get_ids(collection),
                lambda chunk: self.catalog.get_vectors_by_id(chunk, dim),
                target_recall=target,
                text_queries=texts,
            )
        else:
            ids, vectors = self.catalog.get_vectors(collection, dim)
            result = tune(index, vectors, ids, target_recall=target, text_queries=texts)
        self.catalog.set_meta(f"tuning:{collection}", json.dumps(result.to_dict()))
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

    def _drop_stray_files(self) -> None:
        """Delete faiss files of generations other than the current one (older ones, or an
        unfinished run's next one) and temp files of interrupted writes."""
        generation = self.catalog.generation
        for path in self.directory.iterdir():
            name = path.name
            if name.endswith(".tmp") and name.startswith("."):
                faults.reached("cleanup")
                path.unlink(missing_ok=True)
            elif name.endswith(".faiss"):
                parts = name.split(".")
                if len(parts) == 3 and parts[1].isdigit() and int(parts[1]) != generation:
                    faults.reached("cleanup")
                    path.unlink(missing_ok=True)
            elif name.endswith(".ivfdata") and name not in self._ivfdata_in_use():
                path.unlink(missing_ok=True)

    def _ivfdata_in_use(self) -> set[str]:
        return {self._ivfdata(collection) for collection in COLLECTIONS} - {""}

    def cleanup(self) -> None:
        """After a commit: remove files of generations no reader will open again."""
        self._drop_stray_files()
        for collection in COLLECTIONS:
            shutil.rmtree(self._build_dir(collection), ignore_errors=True)

    def record_embedder(
        self, backend: str, precision: str, export_origin: dict[str, str] | None = None
    ) -> None:
        """Note which runtime and precision embed this run's items (shown by `info`) and, for
        an exported runtime, what its cache key comes from (so a cold text query can use the
        cached text tower without loading torch)."""
        record = {"backend": backend, "precision": precision, "export": export_origin}
        self.catalog.set_meta("embedder", json.dumps(record))

    def record_preprocessing(self, path: str) -> None:
        """Add `path` (`pil` or `tensor:DEVICE`, see embedders/tensor_decode.py) to the
        preprocessing paths that built this index's images. Mixing them in one index is sound
        because tests/test_tensor_decode.py holds the tensor path to the Pillow reference
        (embedding cosine >= 0.995 on the sample photos); `info` lists them."""
        paths = set(self.recorded_preprocessing())
        if path not in paths:
            self.catalog.set_meta("preprocessing", json.dumps(sorted(paths | {path})))

    def recorded_preprocessing(self) -> list[str]:
        """The preprocessing paths recorded so far (oldest indexes: none, which means `pil`)."""
        value = self.catalog.get_meta("preprocessing")
        return list(json.loads(value)) if value else []

    def recorded_embedder(self) -> dict[str, Any] | None:
        """What `record_embedder` noted last, or None."""
        value = self.catalog.get_meta("embedder")
        return json.loads(value) if value else None

    # -- reporting ----------------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        """Model, counts, index types, size on disk, created/updated times."""
        size = sum(p.stat().st_size for p in self.directory.iterdir() if p.is_file())
        collections = {}
        for collection in COLLECTIONS:
            count = self.catalog.count(collection)
            # The factory recorded at commit time: reporting must not load a large index.
            factory = self.catalog.get_meta(f"factory:{collection}") if count else None
            tuning = self.tuning(collection) if count else None
            collections[collection] = {
                "count": count,
                "index_type": self.index_type(collection),
                "faiss": factory,
                # recall@10 vs exact search on the collection's own vectors; None when exact
                "recall_at_10": tuning.recall_at_10 if tuning else None,
                "search_params": tuning.params.to_dict() if tuning else None,
                "target_recall": tuning.target_recall if tuning else None,
            }
        updated = self.catalog.get_meta("updated")
        embedder = self.recorded_embedder()
        return {
            "directory": str(self.directory.absolute()),
            "format_version": self.manifest["format_version"],
            "model": self.identity.to_dict(),
            # backend and precision of the last run that embedded anything
            "embedder": (
                {"backend": embedder["backend"], "precision": embedder["precision"]}
                if embedder
                else None
            ),
            "collections": collections,
            "preprocessing": self.recorded_preprocessing() or None,
            "products": self.catalog.product_count(),
            "product_columns": self.catalog.get_schema() or None,
            "generation": self.catalog.generation,
            "size_bytes": size,
            "created": self.manifest.get("created"),
            "updated": float(updated) if updated else None,
        }


# The catalog keeps a copy of manifest.json, so `mmsearch check` can tell a hand-edited or
# damaged manifest from the one the index was created with, and rewrite it.
MANIFEST_META = "manifest"


def record_manifest(catalog: Catalog, manifest: dict[str, Any]) -> None:
    """Store the manifest's canonical JSON in the catalog (committed by the caller)."""
    catalog.set_meta(MANIFEST_META, json.dumps(manifest, sort_keys=True))
