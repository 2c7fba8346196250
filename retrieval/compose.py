"""Composition: builds stores, embedders and services from configs, for the CLI and the HTTP
server alike. The model's imports (torch, open_clip) happen here, lazily, on first use."""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import DEFAULT_MODEL, BatchConfig, EmbedConfig
from .errors import IndexMismatchError, MmsearchError
from .search.service import SearchService
from .storage.probes import QueryRecorder
from .storage.store import IndexStore, StoreOptions
from .types import ModelIdentity, ModelSpec

if TYPE_CHECKING:
    from .embedders.captions import CocaCaptioner
    from .embedders.open_clip import OpenClipEmbedder
    from .ingest.product_api import ProductWriter

logger = logging.getLogger(__name__)


def load_embedder(
    spec: ModelSpec,
    config: EmbedConfig,
    expected: ModelIdentity | None = None,
    *,
    throughput: bool = False,
) -> OpenClipEmbedder:
    """Load the model; when `expected` is given, refuse one whose identity differs.
    `throughput`: for bulk indexing, not queries (runtime.ExportedEncoder.throughput)."""
    from .embedders.open_clip import OpenClipEmbedder

    embedder = OpenClipEmbedder.load(
        spec,
        device=config.device,
        precision=config.precision,
        batch_size=config.batch_size,
        num_workers=config.num_workers,
        backend=config.backend,
        threads=config.threads,
        cache_dir=config.export_cache,
        decode=config.decode,
        hash_cache=config.hash_cache,
        throughput=throughput,
    )
    if expected is not None and not expected.same_model(embedder.identity):
        raise IndexMismatchError(
            f"the model at {spec.name} no longer matches the one the index was built with "
            f"({expected.describe()}, weights sha256 {expected.weights_sha256}); its weights "
            "changed on disk. Restore them, or build a new index with --index DIR."
        )
    return embedder


def load_captioner(spec: ModelSpec, config: EmbedConfig) -> CocaCaptioner:
    """Load a CoCa caption model (torch and open_clip are imported here, on first use)."""
    from .embedders.captions import CocaCaptioner

    return CocaCaptioner.load(
        spec, device=config.device, batch_size=config.batch_size, num_workers=config.num_workers
    )


def open_for_indexing(
    directory: Path,
    spec: ModelSpec | None,
    config: EmbedConfig,
    index_type: str = "auto",
    options: StoreOptions | None = None,
) -> tuple[IndexStore, Callable[[], OpenClipEmbedder]]:
    """Open (or create) the index at `directory`; the embedder loads only if something needs
    embedding, so a re-run over an unchanged folder does no model work at all. `index_type` is
    checked against the model's dimension first, so a bad one fails before anything is written
    or embedded."""
    from .index import check_index_type

    if IndexStore.exists(directory):
        store = IndexStore.open(directory, options=options)
        try:
            check_index_type(index_type, store.identity.dim)
        except MmsearchError:
            store.close()
            raise
        if spec is not None:
            from .embedders.spec import spec_matches

            if not spec_matches(spec, store.identity, config.hash_cache):
                store.close()
                raise IndexMismatchError(
                    f"index {directory} was built with {store.identity.describe()}, not "
                    f"{spec.name}"
                    + (f" (pretrained={spec.pretrained})" if spec.pretrained else "")
                    + "; drop --model/--pretrained to use the index's own model, or pass another "
                    "--index DIR for the new model."
                )
        identity = store.identity
        own = ModelSpec(identity.name, identity.pretrained)

        @cache
        def load() -> OpenClipEmbedder:
            embedder = load_embedder(own, config, expected=identity, throughput=True)
            _record_embedder(store, embedder)
            return embedder

        return store, load
    embedder = load_embedder(spec or DEFAULT_MODEL, config, throughput=True)
    check_index_type(index_type, embedder.identity.dim)
    store = IndexStore.create(directory, embedder.identity, options)
    _record_embedder(store, embedder)
    return store, lambda: embedder


def _record_embedder(store: IndexStore, embedder: OpenClipEmbedder) -> None:
    """Note in the index how this run embeds (backend, precision and why, preprocessing), and
    again once an int8 image tower is quantised during the run (its agreement with fp32)."""

    def record() -> None:
        store.record_embedder(
            embedder.backend,
            embedder.precision,
            embedder.export_origin,
            precision_reason=embedder.precision_reason,
            quantization=embedder.quantization,
        )

    record()
    store.record_preprocessing(embedder.preprocessing)
    embedder.on_quantized = record


def open_for_search(
    directory: Path,
    config: EmbedConfig,
    *,
    batching: BatchConfig | None = None,
    record_queries: bool = False,
) -> SearchService:
    """A SearchService over an existing index, with the index's own model (loaded lazily);
    with `batching`, concurrent text queries share forward passes and an LRU cache; with
    `record_queries`, a sample of the query vectors is kept in the index directory for the
    next re-tuning (storage/probes.py)."""
    options = StoreOptions(use_gpu=_search_on_gpu(config.device))
    store = IndexStore.open(directory, readonly=True, options=options)
    identity = store.identity
    own = ModelSpec(identity.name, identity.pretrained)

    @cache
    def load() -> OpenClipEmbedder:
        return load_embedder(own, config, expected=identity)

    from .embedders.cold import open_cold_embedder

    # Texts and images through the cached exported towers, the torch-free tokenizer and the
    # Pillow/numpy preprocessing when the index has them: a query or a server that never
    # imports torch. Anything missing loads the whole model on first use.
    cold = open_cold_embedder(identity, store.recorded_embedder(), config, load)
    first = (lambda: cold) if cold else load
    if batching is None:
        return SearchService(store, first)
    from .search.batching import BatchingEmbedder

    embedder = BatchingEmbedder(first, batching)  # loads the model on first use
    recorder = QueryRecorder(directory, identity.dim) if record_queries else None
    return SearchService(store, lambda: embedder, text_batcher=embedder.texts, recorder=recorder)


def open_writer(
    service: SearchService, fetch_allow: tuple[str, ...] = (), compact_rows: int | None = None
) -> ProductWriter | None:
    """A ProductWriter on the service's index sharing the service's model, or None (with a
    warning) when the index cannot be opened for writing (a read-only directory)."""
    import sqlite3

    from .ingest.product_api import ProductWriter

    def embedder() -> Any:
        # Writes embed files in batches: the model behind the query embedder (a batcher's
        # `inner`), loaded once for both. A light server's torch-free embedder embeds them
        # through the exported towers (and loads the model itself only where it must).
        query_embedder = service.embedder
        inner = getattr(query_embedder, "inner", query_embedder)
        if not hasattr(inner, "embed_image_files"):
            identity = service.store.identity
            own = ModelSpec(identity.name, identity.pretrained)
            return load_embedder(own, EmbedConfig(device="cpu"), expected=identity)
        return inner

    try:
        from .ingest.fetch import FetchPolicy

        policy = FetchPolicy.from_allow(fetch_allow)
        options = {} if compact_rows is None else {"compact_rows": compact_rows}
        return ProductWriter(service.store.directory, embedder, fetch_policy=policy, **options)
    except (OSError, sqlite3.Error, MmsearchError) as err:
        logger.warning(
            "product writes disabled: %s cannot be opened for writing (%s)",
            service.store.directory,
            err,
        )
        return None


def _search_on_gpu(device: str) -> bool:
    """faiss searches on the GPU when the model runs there and the faiss GPU build is present."""
    from .index import gpu_available

    if device == "cpu" or not gpu_available():  # asks faiss first: torch's import is seconds
        return False
    from .embedders.open_clip import resolve_device

    return resolve_device(device).startswith("cuda")
