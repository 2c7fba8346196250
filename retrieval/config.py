"""Frozen configuration for each layer; the CLI maps its options 1:1 onto these fields."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .types import ModelSpec

DEFAULT_MODEL = ModelSpec("ViT-B-32", "laion2b_s34b_b79k")
# Relative to the current directory, like git's .git: indexes live beside the work that made them.
DEFAULT_INDEX_DIR = Path("indexes") / "default"
INDEX_DIR_ENV = "MMSEARCH_INDEX"


def default_index_dir() -> Path:
    """The index directory used when none is given: $MMSEARCH_INDEX or ./indexes/default."""
    return Path(os.environ.get(INDEX_DIR_ENV) or DEFAULT_INDEX_DIR)


@dataclass(frozen=True)
class EmbedConfig:
    """How to run the model: which one, where, in what precision, how many at a time."""

    model: ModelSpec = DEFAULT_MODEL
    device: str = "auto"
    precision: str = "auto"
    batch_size: int | None = None  # None: by device (see embedders/open_clip.py)
    num_workers: int | None = None


@dataclass(frozen=True)
class IndexConfig:
    """How to store and search vectors."""

    index_type: str = "auto"
