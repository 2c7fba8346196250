"""Products by SKU for a long-running process (`mmsearch serve`): get, put, patch, delete, bulk
and the schema, every write through the one write path (`Indexer` + `write_products`).

A `ProductWriter` keeps its own read-write connection to the index, serialises its process's
writes, and takes the writer lock per write, waiting at most `lock_wait_s` for a CLI import or
another server's write (then `IndexBusyError`, which HTTP answers 503 + Retry-After). A write
returns once its SQLite transaction has committed, so an acknowledged write survives kill -9.
Writes append to the change log instead of rewriting faiss files (storage/delta.py); a
background thread compacts the log once it passes a threshold sized by the catalog
(storage/delta.compact_rows_for)."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from ..errors import (
    ImageDecodeError,
    IndexBusyError,
    InvalidQueryError,
    ItemNotFoundError,
    MmsearchError,
)
from ..storage import audit
from ..storage.audit import Actor
from ..storage.blobs import decode_data_url, image_format, is_data_url, store_blob
from ..storage.catalog import Catalog
from ..storage.compaction import compact_beside_writers
from ..storage.delta import compact_rows_for
from ..storage.schema import RESERVED, CellError, check_schema
from ..storage.store import CATALOG, IndexStore
from ..types import IMAGES
from .fetch import FetchPolicy, is_url
from .indexer import Indexer
from .product_writes import CREATED, FAILED, CatalogReport, delete_products, write_products
from .products import ProductRow, RowError, check_sku, parse_rows, product_row
from .remote import Resolved, resolve_remote

logger = logging.getLogger(__name__)

# An HTTP write waits this long for the writer lock (a CLI import, another server's write)
# before answering 503: long enough to queue behind a few product writes, short enough that
# a client never hangs on a long import.
LOCK_WAIT_S = 2.0
# A data: URL image's decoded bytes are capped like an uploaded query image.
MAX_IMAGE_BYTES = 20 << 20


def product_view(catalog: Catalog, sku: str) -> dict[str, Any] | None:
    """`{"id", "title", fields..., "images": [{"item_id", "source", "status"}]}` or None."""
    record = catalog.get_product_records([sku]).get(sku)
    if record is None:
        return None
    items = catalog.get_product_items([sku]).get(sku, [])
    ids = {item.path: item.id for item in items if item.collection == IMAGES}
    images = []
    for state in record.images:
        source = state.get("url") or state["source"]
        image = {"item_id": ids.get(state["source"]), "source": source}
        image["status"] = state["status"]
        if state.get("detail"):
            image["detail"] = state["detail"]
        images.append(image)
    return {"id": sku, **record.metadata, "images": images}


def _open_durable(directory: Path) -> IndexStore:
    """The store product writes commit through: synchronous=FULL, so the WAL is fsynced at
    every COMMIT and an acknowledged write survives a power cut, not only `kill -9` (index
    runs keep NORMAL: a lost run is redone by running it again; a lost acknowledged write
    is not). One fsync per write: ~1 ms on the benchmark VM."""
    store = IndexStore.open(directory)
    store.catalog.db.execute("PRAGMA synchronous=FULL")
    return store


class ProductWriter:
    """Product reads and writes on the index at `directory` (see the module docstring)."""

    def __init__(
        self,
        directory: Path,
        embedder_factory: Callable[[], Any],
        *,
        lock_wait_s: float = LOCK_WAIT_S,
        max_image_bytes: int = MAX_IMAGE_BYTES,
        fetch_policy: FetchPolicy | None = None,
        compact_rows: int | None = None,
    ) -> None:
        # None: image URLs are refused (data: URLs still work)
        self.fetch_policy = fetch_policy
        self.directory = Path(directory)
        self._store: IndexStore | None = _open_durable(self.directory)
        self._embedder_factory = embedder_factory
        self.lock_wait_s = lock_wait_s
        self.max_image_bytes = max_image_bytes
        self.compact_rows = compact_rows
        self._lock = threading.Lock()
        self._compactor: threading.Thread | None = None

    @property
    def store(self) -> IndexStore:
        """The read-write store, reopened if the writer was closed (an app's lifespan may end
        and start again, as test clients do)."""
        if self._store is None:
            self._store = _open_durable(self.directory)
        return self._store

    def close(self) -> None:
        """Wait for a compaction under way, close the connection (idempotent; a later call
        reopens it)."""
        if self._compactor is not None:
            self._compactor.join()
        with self._lock:
            if self._store is not None:
                self._store.close()
                self._store = None

    # -- reads ----------------------------------------------------------------------------------
    def get(self, sku: str) -> dict[str, Any]:
        """The product as stored.

        Raises:
            ItemNotFoundError: no product has this SKU.
        """
        with self._lock:
            view = product_view(self.store.catalog, sku)
        if view is None:
            raise ItemNotFoundError(f"no product with SKU {sku!r}")
        return view

    def schema(self) -> dict[str, str]:
        with self._lock:
            return self.store.catalog.get_schema()

    # -- writes ---------------------------------------------------------------------------------
    def put(
        self,
        sku: str,
        body: Mapping[str, Any],
        actor: Actor | None = None,
        action: str = "put",
        *,
        refetch: bool = False,
        revalidate: bool = True,
    ) -> tuple[bool, dict[str, Any]]:
        """Create or replace one product from a catalog row without `id`; (created, view).
        Image URLs fetched before are revalidated (or, with `refetch`, fetched in full;
        without `revalidate`, reused as stored): remote.py.

        Raises:
            InvalidQueryError: a bad SKU, field, value or image (nothing is written).
        """
        row = self._row(sku, body)
        resolved = self._resolve([row], refetch=refetch, revalidate=revalidate)
        with self._lock:
            report = self._write(resolved.rows, [], actor=actor, action=action, resolved=resolved)
            outcome = report.outcomes[0]
            if outcome.action == FAILED:
                raise InvalidQueryError(outcome.reason)
            view = product_view(self.store.catalog, sku)
        return outcome.action == CREATED, view or {}

    def patch(
        self, sku: str, body: Mapping[str, Any], actor: Actor | None = None
    ) -> dict[str, Any]:
        """Merge `body` into the stored product (`null` removes a field; `images` replaces the
        list); the product as stored.

        Raises:
            ItemNotFoundError: no product has this SKU.
            InvalidQueryError: as put.
        """
        with self._lock:
            current = product_view(self.store.catalog, sku)
        if current is None:
            raise ItemNotFoundError(f"no product with SKU {sku!r}")
        merged = {k: v for k, v in current.items() if k not in ("id", "images")}
        merged["images"] = [image["source"] for image in current["images"]]
        for name, value in body.items():
            if value is None:
                merged.pop(name, None)
            else:
                merged[name] = value
        # a field-only patch contacts no image server (its stored copies are kept as they are)
        revalidate = "images" in body or "image" in body
        return self.put(sku, merged, actor, "patch", revalidate=revalidate)[1]

    def delete(self, sku: str, actor: Actor | None = None) -> None:
        """Delete one product.

        Raises:
            ItemNotFoundError: no product has this SKU.
        """
        with self._lock:
            with self._indexer() as indexer:
                if not delete_products(indexer, [sku], actor):
                    raise ItemNotFoundError(f"no product with SKU {sku!r}")
            self._after_write()

    def bulk(
        self,
        lines: Iterable[tuple[int, Any]],
        *,
        sync: bool,
        actor: Actor | None = None,
        refetch: bool = False,
    ) -> CatalogReport:
        """Upsert NDJSON rows ((line number, parsed object or ValueError) pairs); with `sync`,
        products not named are deleted. A bad line fails alone. Image URLs as in `put`."""
        parsed: list[tuple[int, Any]] = []
        for line, raw in lines:
            if isinstance(raw, Mapping):
                try:
                    raw = self._inline_images(raw)
                except (InvalidQueryError, ImageDecodeError) as err:
                    raw = ValueError(str(err))
            parsed.append((line, raw))
        rows, errors = parse_rows(parsed, None)
        resolved = self._resolve(rows, refetch=refetch)
        with self._lock:
            return self._write(
                resolved.rows, errors, sync=sync, actor=actor, action="bulk", resolved=resolved
            )

    def set_schema(self, schema: Mapping[str, Any], actor: Actor | None = None) -> dict[str, str]:
        """Set column types (only columns no product uses yet may change type); the schema.

        Raises:
            InvalidQueryError: an unknown type, a reserved column, or a used column retyped.
        """
        try:
            wanted = check_schema(schema, "schema")
        except CellError as err:
            raise InvalidQueryError(str(err)) from err
        with self._lock, self._indexer() as indexer:
            catalog = self.store.catalog
            current = catalog.get_schema()
            retyped = [c for c, t in wanted.items() if c in current and current[c] != t]
            if retyped and catalog.has_products():
                raise InvalidQueryError(
                    f"column {retyped[0]!r} is already a {current[retyped[0]]} column; "
                    "re-import the catalog with `mmsearch index --catalog FILE --sync "
                    "--schema schema.json` to retype it"
                )
            with indexer.change():
                catalog.set_schema({**current, **wanted})
                if actor is not None:
                    detail = json.dumps(wanted, sort_keys=True)
                    audit.append(catalog.db, actor, [audit.Entry("schema", None, "set", detail)])
            return catalog.get_schema()

    # -- helpers ----------------------------------------------------------------------------------
    def _indexer(self) -> Indexer:
        return Indexer(
            self.store,
            self._embedder_factory,
            lock_wait_s=self.lock_wait_s,
            sweep_vectors=False,
            delta=True,
        )

    def _after_write(self) -> None:
        """Past `compact_rows` (default: sized by the catalog), compact the change log in a
        background thread (one at a time), so writes seldom meet a full log and readers keep
        their queries cheap."""
        threshold = self.compact_rows or compact_rows_for(self.store.base_vectors())
        if self.store.catalog.delta_size() < threshold:
            return
        if self._compactor is not None and self._compactor.is_alive():
            return
        self._compactor = threading.Thread(target=self.compact, name="compact", daemon=True)
        self._compactor.start()

    def compact(self) -> bool:
        """Fold the change log into a new generation, on a connection of its own; whether one
        was committed. The faiss files are built while writes go on and swapped in under the
        writer lock (storage/compaction.py); a log that needs a rebuild or a re-tune is
        compacted under the writer lock throughout (writes meanwhile wait, up to lock_wait_s).
        A busy index is left for the next write to try again."""
        try:
            with _open_durable(self.directory) as store:
                done = compact_beside_writers(store, self.lock_wait_s)
                if done is not None:
                    if done:
                        logger.info(
                            "compacted the change log of %s beside writers (generation %d)",
                            self.directory, store.catalog.generation,
                        )  # fmt: skip
                    return done
                with Indexer(store, self._embedder_factory) as indexer:
                    done = indexer.compact()
                if done:
                    logger.info(
                        "compacted the change log of %s under the writer lock (a rebuild or "
                        "re-tune; generation %d)", self.directory, store.catalog.generation,
                    )  # fmt: skip
                return done
        except IndexBusyError:
            return False
        except MmsearchError:  # never lose a write over it: the log stays, readers use it
            logger.exception("compacting the change log of %s failed", self.directory)
            return False

    def _write(
        self,
        rows: list[ProductRow],
        errors: list[RowError],
        *,
        sync: bool = False,
        actor: Actor | None = None,
        action: str = "put",
        resolved: Resolved | None = None,
    ) -> CatalogReport:
        with self._indexer() as indexer:
            report = write_products(
                indexer,
                rows,
                errors=errors,
                sync=sync,
                actor=actor,
                action=action,
                origins=resolved.origins if resolved else None,
                failures=resolved.failures if resolved else None,
            )
        self._after_write()
        return report

    def audit_log(self, since: float | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        """Audit entries at or after `since`, oldest first."""
        with self._lock:
            return audit.read(self.store.catalog.db, since, limit)

    def _resolve(
        self, rows: list[ProductRow], *, refetch: bool = False, revalidate: bool = True
    ) -> Resolved:
        """Fetch image URLs before taking any lock (a slow server holds up no other write),
        reading known URLs on a connection of its own."""
        reader = Catalog(self.directory / CATALOG, readonly=True)
        try:
            return resolve_remote(
                rows,
                self.directory,
                reader,
                self.fetch_policy,
                refetch=refetch,
                revalidate=revalidate,
            )
        finally:
            reader.close()

    def _row(self, sku: str, body: Mapping[str, Any]) -> ProductRow:
        try:
            check_sku(sku)
        except ValueError as err:
            raise InvalidQueryError(str(err)) from err
        if "id" in body and body["id"] != sku:
            raise InvalidQueryError(f"body id {body['id']!r} differs from the URL's SKU {sku!r}")
        self._check_fields(body)
        raw = self._inline_images({**body, "id": sku})
        try:
            return product_row(raw, None, None)
        except ValueError as err:
            raise InvalidQueryError(str(err)) from err

    def _check_fields(self, body: Mapping[str, Any]) -> None:
        """Once an index has a schema, only its columns are accepted (new ones: PUT /schema)."""
        schema = self.store.catalog.get_schema()
        if not schema:
            return
        for name in body:
            if name not in RESERVED and name not in schema:
                raise InvalidQueryError(
                    f"unknown field {name!r}; product columns: {', '.join(sorted(schema))} "
                    "(add a column with PUT /schema)"
                )

    def _inline_images(self, raw: Mapping[str, Any]) -> dict[str, Any]:
        """Over HTTP, images are data: URLs (stored as blobs), or sources this product already
        has (as GET shows them); other server-local paths are refused, so a client cannot make
        the server index (and serve) its own files."""
        images = raw.get("images", raw.get("image"))
        if images is None:
            return dict(raw)
        if isinstance(images, str):
            images = [images]
        if not isinstance(images, list) or not all(isinstance(i, str) for i in images):
            raise InvalidQueryError("images must be a list of data: URLs")
        sku = raw.get("id")
        known: set[str] = set()
        if isinstance(sku, str):
            record = self.store.catalog.get_product_records([sku]).get(sku)
            for state in record.images if record else []:
                known.add(state["source"])
        blobs = (self.directory / "blobs").resolve()
        sources = []
        for image in images:
            if is_data_url(image):
                data = decode_data_url(image, self.max_image_bytes)
                sources.append(str(store_blob(self.directory, data, image_format(data, "image"))))
            elif is_url(image):
                if self.fetch_policy is None:
                    raise InvalidQueryError(f"image {image[:80]!r}: this server fetches no URLs")
                sources.append(image)  # fetched before the write (remote.py)
            elif image in known or (
                Path(image).is_absolute() and Path(image).resolve().is_relative_to(blobs)
            ):
                sources.append(image)
            else:
                raise InvalidQueryError(
                    f"image {image[:80]!r}: over HTTP send images as data:image/...;base64 URLs"
                )
        body = {k: v for k, v in raw.items() if k != "image"}
        body["images"] = sources
        return body


__all__ = ["LOCK_WAIT_S", "ProductWriter", "product_view"]
