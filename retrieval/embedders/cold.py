"""Queries without torch: the index's cached exported towers, the torch-free tokenizer and
open_clip's preprocessing redone with Pillow/numpy (pixels.py). A fresh `mmsearch query TEXT`
otherwise spends seconds importing torch and open_clip and loading the whole model for one short
forward pass (benchmarks/cold_query.py), and `mmsearch serve` holds torch's ~0.5 GB and a second
copy of the weights for nothing (benchmarks/first_run.py, serve RSS).

This module imports neither torch nor open_clip; any model whose tokenizer, preprocessing or
exported graphs are not at hand goes to the full embedder loaded on demand."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..config import FULL_DECODE, EmbedConfig
from ..images import decode_source, load_image
from ..scaling import DecodeTarget
from ..types import ModelIdentity, Skipped, Vectors
from . import hf_tokenizer, runtime
from .cpu_precision import cpu_flags, resolve_cpu_precision
from .pixels import PixelPreprocess
from .protocols import OnImageBatch, QueryEmbedder
from .tokenizer import TextTokenizer, load_tokenizer

logger = logging.getLogger(__name__)

# Image files per pass of the exported image tower in `embed_image_files` (a product write's
# few images are one pass; a bulk upsert's many are cut so memory stays bounded).
FILE_BATCH = 32


class ColdEmbedder:
    """Texts through the exported text tower; images through the exported image tower after
    Pillow/numpy preprocessing, or through the full embedder (loaded once, on first use) when
    the preprocessing cannot be redone or the image graph fails its checksum."""

    def __init__(
        self,
        encoder: runtime.ExportedEncoder,
        tokenizer: TextTokenizer,
        load_full: Callable[[], QueryEmbedder],
        preprocess: PixelPreprocess | None = None,
        target: DecodeTarget | None = None,
    ) -> None:
        self.encoder = encoder
        self.tokenizer = tokenizer
        self._load_full = load_full
        self.preprocess = preprocess
        self.target = target
        self._image_graph: bool | None = None  # checked on first image query
        self._checking = threading.Lock()

    def encode_texts(self, texts: Sequence[str], batch_size: int = 256) -> Vectors:
        """Normalised float32 (n, dim), equal to the full embedder's within the export check."""
        import numpy as np

        chunks = [
            self.encoder.encode_tokens(self.tokenizer(list(texts[start : start + batch_size])))
            for start in range(0, len(texts), batch_size)
        ]
        return np.concatenate(chunks) if chunks else np.zeros((0, self.encoder.dim), np.float32)

    def encode_image_sources(self, sources: Sequence[Path | bytes]) -> Vectors:
        """Normalised float32 (n, dim) of images given as files or bytes (decode errors
        propagate, as from the full embedder)."""
        if self.preprocess is None or not self._image_graph_usable():
            return self.full().encode_image_sources(sources)
        images = [load_image(source, target=self.target) for source in sources]
        return self.encoder.encode_images(self.preprocess.stack(images))

    def embed_image_files(self, paths: list[Path], on_batch: OnImageBatch) -> None:
        """Embed image files as the full embedder's `embed_image_files` reports them (a
        `serve` product write's images): decoded in this process, FILE_BATCH at a time, through
        the exported image tower, so a light server stays torch-free when it writes too. A
        file that does not decode is reported skipped with its reason."""
        if self.preprocess is None or not self._image_graph_usable():
            full = self.full()
            if not hasattr(full, "embed_image_files"):
                raise TypeError(f"{type(full).__name__} cannot embed image files")
            full.embed_image_files(paths, on_batch)
            return
        import numpy as np

        for start in range(0, len(paths), FILE_BATCH):
            decoded = [
                decode_source(path, str(path), self.preprocess, target=self.target)
                for path in paths[start : start + FILE_BATCH]
            ]
            good = [n for n, pixels in enumerate(decoded) if not isinstance(pixels, Skipped)]
            skipped = [
                (start + n, pixels)
                for n, pixels in enumerate(decoded)
                if isinstance(pixels, Skipped)
            ]
            if good:
                vectors = self.encoder.encode_images(np.stack([decoded[n] for n in good]))
            else:
                vectors = np.zeros((0, self.encoder.dim), np.float32)
            on_batch([start + n for n in good], vectors, skipped)

    def _image_graph_usable(self) -> bool:
        """Whether the entry's image graph passes its checksum (read once: a text-only process
        never reads the image tower's few hundred MB)."""
        with self._checking:
            if self._image_graph is None:
                meta = runtime.read_meta(self.encoder.folder, towers=("image",))
                self._image_graph = meta is not None and meta.get("key") == self.encoder.meta["key"]
                if not self._image_graph:
                    logger.info("the exported image tower is not usable; loading the model")
            return self._image_graph

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
    precision = resolve_cpu_precision(config.precision, cpu_flags(), engine)[0]
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
    preprocess = PixelPreprocess.from_recorded(identity.preprocess)
    if preprocess is None:
        logger.info("image queries for %s need the model's own preprocessing", identity.name)
    # --decode full decodes every pixel, as the full embedder then does
    target = preprocess.target if preprocess and config.decode != FULL_DECODE else None
    return ColdEmbedder(encoder, tokenizer, load_full, preprocess, target)
