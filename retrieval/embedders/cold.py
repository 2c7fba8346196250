"""Cold text queries without torch: the index's cached exported text tower plus the torch-free
tokenizer. A fresh `mmsearch query TEXT` otherwise spends seconds importing torch and open_clip
and loading the whole model for one short forward pass (benchmarks/cold_query.py).

This module imports neither torch nor open_clip; image queries, and any model whose tokenizer
or exported graphs are not at hand, go to the full embedder loaded on demand."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..config import EmbedConfig
from ..types import ModelIdentity, Vectors
from . import hf_tokenizer, runtime
from .protocols import QueryEmbedder
from .tokenizer import TextTokenizer, load_tokenizer

logger = logging.getLogger(__name__)


class ColdEmbedder:
    """Texts through the exported text tower; images through the full embedder, loaded once
    on first use."""

    def __init__(
        self,
        encoder: runtime.ExportedEncoder,
        tokenizer: TextTokenizer,
        load_full: Callable[[], QueryEmbedder],
    ) -> None:
        self.encoder = encoder
        self.tokenizer = tokenizer
        self._load_full = load_full

    def encode_texts(self, texts: Sequence[str], batch_size: int = 256) -> Vectors:
        """Normalised float32 (n, dim), equal to the full embedder's within the export check."""
        import numpy as np

        chunks = [
            self.encoder.encode_tokens(self.tokenizer(list(texts[start : start + batch_size])))
            for start in range(0, len(texts), batch_size)
        ]
        return np.concatenate(chunks) if chunks else np.zeros((0, self.encoder.dim), np.float32)

    def encode_image_sources(self, sources: Sequence[Path | bytes]) -> Vectors:
        return self.full().encode_image_sources(sources)

    def full(self) -> QueryEmbedder:
        """The full embedder (loaded on first use), e.g. for writes that embed image files."""
        return self._load_full()


def open_cold_embedder(
    identity: ModelIdentity,
    recorded: dict[str, Any] | None,
    config: EmbedConfig,
    load_full: Callable[[], QueryEmbedder],
) -> ColdEmbedder | None:
    """A torch-free text embedder for the index's model, or None when any piece is missing:
    the index was embedded with torch, the user asked for torch or a GPU, the precision is not
    one the runtime runs, the cache entry is absent, stale (other library versions) or damaged,
    or it holds no tokenizer for a model that does not use open_clip's default one.
    None means: load the full model."""
    export = (recorded or {}).get("export")
    engine = (recorded or {}).get("backend")
    if not export or engine not in runtime.ENGINES or engine not in runtime.available_engines():
        return None
    if config.backend not in ("auto", engine) or config.device not in ("auto", "cpu"):
        return None
    precision = "fp32" if config.precision == "auto" else config.precision
    if precision not in runtime.PRECISIONS:
        return None
    key = runtime.export_key(export["weights"], export["architecture"], engine)
    encoder = runtime.open_cached(
        key,
        threads=config.threads or runtime.default_threads(),
        precision=precision,
        engine=engine,
        cache_dir=config.export_cache,
        towers=("text",),
    )
    if encoder is None:
        logger.info("no usable exported text tower for %s; loading the model", identity.name)
        return None
    # open_clip's CLIP tokenizer, or the Hugging Face one exported with the towers
    tokenizer = load_tokenizer(identity.name) or hf_tokenizer.load(encoder.folder)
    if tokenizer is None:
        logger.info("no torch-free tokenizer for %s; loading the model", identity.name)
        return None
    return ColdEmbedder(encoder, tokenizer, load_full)
