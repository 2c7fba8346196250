"""One index directory on disk: manifest.json (format + model identity), catalog.sqlite (items,
float16 vectors, products) and one faiss file per collection and generation.

Crash safety: an index run writes `<collection>.<generation+1>.faiss` next to the current files,
then flips `generation` in the same SQLite transaction that changes the items. A run killed at
any point leaves either the old generation or the new one, never a mix; stray files of an
unfinished generation are deleted by the next writer.

This module holds the directory's layout, manifest and writer lock; IndexStore gets its read
path from reading.py and its commit path from commit.py."""

from __future__ import annotations

import json
import logging
import shutil
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .. import faults
from ..errors import (
    IndexBusyError,
    IndexCorruptError,
    IndexMismatchError,
    IndexNotFoundError,
)
from ..files import write_atomic
from ..index import FaissIndex
from ..index.ondisk import DEFAULT_SHARD_SIZE
from ..locks import exclusive_lock
from ..sqlite_errors import classify_sqlite_error
from ..types import COLLECTIONS, ModelIdentity
from .catalog import Catalog
from .collections import read_state
from .commit import CollectionChanges, CommitPath
from .compaction import drop_abandoned
from .delta import Delta, LiveIndex

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
CATALOG = "catalog.sqlite"
LOCK = ".lock"
# How often a writer waiting for the lock tries again: short next to a write (tens of ms).
LOCK_POLL_S = 0.01


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


class IndexStore(CommitPath):
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
        self._live: dict[str, tuple[tuple[int, int], LiveIndex | None]] = {}
        self._deltas: dict[str, tuple[int, int, Delta]] = {}
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

    def _drop_stray_files(self) -> None:
        """Delete faiss files of generations other than the current one (older ones, or an
        unfinished run's next one) and temp files of interrupted writes."""
        generation = self.catalog.generation
        drop_abandoned(self.directory)
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
        self,
        backend: str,
        precision: str,
        export_origin: dict[str, str] | None = None,
        *,
        precision_reason: str | None = None,
        quantization: dict[str, Any] | None = None,
    ) -> None:
        """Note which runtime and precision embed this run's items and why that precision
        (shown by `info`), with an int8 tower's agreement with fp32, and, for an exported
        runtime, what its cache key comes from (so a cold text query can use the cached text
        tower without loading torch)."""
        record = {"backend": backend, "precision": precision, "export": export_origin}
        if precision_reason:
            record["precision_reason"] = precision_reason
        if quantization:
            record["int8"] = {
                key: quantization[key]
                for key in ("agreement", "calibration_images", "held_out_images")
            }
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
            factory = read_state(self.catalog, collection).factory if count else None
            tuning = self.tuning(collection) if count else None
            collections[collection] = {
                "count": count,
                "index_type": self.index_type(collection),
                "faiss": factory,
                # recall@10 vs exact search, claimed for the most user-like probe kind tuned
                # with (index/tuning.py CLAIM_ORDER); None when exact
                "recall_at_10": tuning.recall_at_10 if tuning else None,
                # recall@10 per probe kind: stored, texts, text_spans, recorded (probes.py)
                "recall": (tuning.recall or None) if tuning else None,
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
                {
                    key: embedder[key]
                    for key in ("backend", "precision", "precision_reason", "int8")
                    if key in embedder
                }
                if embedder
                else None
            ),
            "collections": collections,
            "preprocessing": self.recorded_preprocessing() or None,
            "products": self.catalog.product_count(),
            "product_columns": self.catalog.get_schema() or None,
            "generation": self.catalog.generation,
            # writes logged since the generation was written (storage/delta.py)
            "change_log_rows": self.catalog.delta_size(),
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


__all__ = [
    "CATALOG",
    "LOCK",
    "MANIFEST",
    "MANIFEST_META",
    "CollectionChanges",
    "IndexStore",
    "StoreOptions",
    "record_manifest",
]
