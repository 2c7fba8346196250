"""One `mmsearch index` run as a library call: what to write (an `IndexRequest`) goes through one
`Indexer` (indexer.py), so the CLI only parses options and renders the reports."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import EmbedConfig
from .ingest.indexer import Indexer, Progress
from .storage.store import IndexStore

if TYPE_CHECKING:
    from .distributed.ingest import RayOptions
    from .ingest.fetch import FetchPolicy
    from .ingest.products import ProductRow, RowError
    from .storage.audit import Actor


@dataclass(frozen=True)
class CatalogRequest:
    """A product catalog to write: its rows and the rows the reader left out; `sync` deletes
    products absent from it, `dry_run` writes nothing, `strict` refuses any bad row, `schema`
    overrides column types."""

    rows: tuple[ProductRow, ...]
    errors: tuple[RowError, ...] = ()
    sync: bool = False
    dry_run: bool = False
    strict: bool = False
    schema: dict[str, str] | None = None
    actor: Actor | None = None  # who writes, for the audit log
    fetch: FetchPolicy | None = None  # image URLs: None refuses them
    refetch: bool = False


@dataclass(frozen=True)
class IndexRequest:
    """What one run writes: image roots (or Ray inputs), a text list, a product catalog, and
    whether to caption images that have no caption yet."""

    roots: tuple[Path, ...] = ()
    texts: tuple[str, ...] | None = None
    catalog: CatalogRequest | None = None
    ray: RayOptions | None = None
    captioner: Callable[[], Any] | None = None
    index_types: dict[str, str] | None = None


def run_index(
    store: IndexStore,
    embedder_factory: Callable[[], Any],
    request: IndexRequest,
    config: EmbedConfig,
    on_progress: Progress | None = None,
) -> list[tuple[str, Any]]:
    """Apply `request` under one writer lock; (kind, report) per part that ran, kind being
    `files`, `catalog` or `captions`."""
    reports: list[tuple[str, Any]] = []
    with Indexer(
        store, embedder_factory, index_types=request.index_types, on_progress=on_progress
    ) as indexer:
        if request.ray is not None:
            from .distributed.ingest import index_with_ray

            reports.append(
                ("files", index_with_ray(indexer, list(request.roots), config, request.ray))
            )
        elif request.roots or request.texts is not None:
            from .ingest.sync import sync_folders

            texts = list(request.texts) if request.texts is not None else None
            reports.append(("files", sync_folders(indexer, list(request.roots), texts=texts)))
        if request.catalog is not None:
            from .ingest.product_writes import write_products
            from .ingest.remote import Resolved, resolve_remote

            wanted = request.catalog
            resolved = Resolved(list(wanted.rows))  # a dry run fetches nothing
            if not wanted.dry_run:
                resolved = resolve_remote(
                    list(wanted.rows), store.directory, store.catalog, wanted.fetch,
                    refetch=wanted.refetch,
                )  # fmt: skip
            report = write_products(
                indexer,
                resolved.rows,
                errors=wanted.errors,
                sync=wanted.sync,
                dry_run=wanted.dry_run,
                strict=wanted.strict,
                schema=wanted.schema,
                actor=wanted.actor,
                action="import",
                origins=resolved.origins,
                failures=resolved.failures,
            )
            reports.append(("catalog", report))
        if request.captioner is not None:
            from .ingest.captions import caption_missing

            reports.append(("captions", caption_missing(store, request.captioner, on_progress)))
    return reports


__all__ = ["CatalogRequest", "IndexRequest", "run_index"]
