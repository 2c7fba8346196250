"""What the rest of the package needs from a model, defined once. OpenClipEmbedder
(open_clip.py) provides all of it; the cold text encoder (cold.py) and the query batcher
(search/batching.py) provide the query part; CocaCaptioner (captions.py) captions. Importing
this module imports no torch."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

from ..types import Skipped, Vectors

OnImageBatch = Callable[[list[int], Vectors, list[tuple[int, Skipped]]], None]
"""on_batch(positions, vectors, skips): one embedded batch of `embed_image_files`' paths, by
position, and the files of that batch that were skipped."""


class TextEncoder(Protocol):
    def encode_texts(self, texts: list[str], batch_size: int = ...) -> Vectors: ...


class QueryEmbedder(TextEncoder, Protocol):
    """What searching needs: texts, and query images given as files or uploaded bytes."""

    def encode_image_sources(self, sources: Sequence[Path | bytes]) -> Vectors: ...


class IndexEmbedder(TextEncoder, Protocol):
    """What ingestion needs: image files embedded in batches as they decode, and texts."""

    def embed_image_files(self, paths: list[Path], on_batch: OnImageBatch) -> None: ...


class EvalEmbedder(QueryEmbedder, IndexEmbedder, Protocol):
    """What `mmsearch eval` needs: everything, and the batch size it sizes its work by."""

    batch_size: int


class Captioner(Protocol):
    """What captioning needs (embedders/captions.py)."""

    def caption_files(
        self,
        paths: Sequence[Path],
        on_batch: Callable[[list[int], list[str], list[tuple[int, Skipped]]], None],
    ) -> None: ...


__all__ = [
    "Captioner",
    "EvalEmbedder",
    "IndexEmbedder",
    "OnImageBatch",
    "QueryEmbedder",
    "TextEncoder",
]
