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
    from .ingest.products import Product


@dataclass(frozen=True)
class IndexRequest:
    """What one run writes: image roots (or Ray inputs), a text list, a product catalog, and
    whether to caption images that have no caption yet."""

    roots: tuple[Path, ...] = ()
    texts: tuple[str, ...] | None = None
    products: tuple[Product, ...] | None = None
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
        if request.products is not None:
            from .ingest.products import index_catalog

            reports.append(("catalog", index_catalog(indexer, list(request.products))))
        if request.captioner is not None:
            from .ingest.captions import caption_missing

            reports.append(("captions", caption_missing(store, request.captioner, on_progress)))
    return reports


__all__ = ["IndexRequest", "run_index"]
