"""Frozen value types shared by every layer."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

Vectors = npt.NDArray[np.float32]
"""Row-major (n, dim) float32 array of L2-normalised embeddings."""

Ids = npt.NDArray[np.int64]

# The names of what an index holds and what a search can ask for, in one place: collections are
# what the catalog and the faiss files store; a product search fuses both collections.
IMAGES = "images"
TEXTS = "texts"
PRODUCTS = "products"
COLLECTIONS = (IMAGES, TEXTS)
TARGETS = (IMAGES, TEXTS, PRODUCTS)


@dataclass(frozen=True)
class ModelSpec:
    """Which open_clip model to load: a built-in name + pretrained tag or checkpoint file,
    an `hf-hub:org/repo` id, or a `local-dir:PATH` folder."""

    name: str = "ViT-B-32"
    pretrained: str | None = "laion2b_s34b_b79k"


@dataclass(frozen=True)
class Skipped:
    """A file that was not indexed, and why (`reason` is a short label such as `truncated`)."""

    path: str
    reason: str
    detail: str = ""


@dataclass(frozen=True)
class Hit:
    """One search result. `path` for image hits, `text` for text hits."""

    rank: int
    score: float
    id: int
    path: str | None = None
    text: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    # With collapsed duplicates: ids of lower-ranked near-duplicates folded into this hit.
    duplicates: tuple[int, ...] | None = None
    # An image's generated caption (`mmsearch index --captions`).
    caption: str | None = None
    # Keyword and hybrid searches: the 1-based rank of this hit in each ranking that found it,
    # e.g. {"semantic": 3, "keyword": 1}.
    signals: dict[str, int] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape shared by `mmsearch query --json` and the HTTP API: rank, score, id,
        path or text, caption and signals when present, then any product fields."""
        out: dict[str, Any] = {"rank": self.rank, "score": round(self.score, 6), "id": self.id}
        if self.path is not None:
            out["path"] = self.path
        if self.text is not None:
            out["text"] = self.text
        if self.duplicates is not None:
            out["duplicates"] = list(self.duplicates)
        if self.caption is not None:
            out["caption"] = self.caption
        if self.signals is not None:
            out["signals"] = dict(self.signals)
        for key, value in self.metadata.items():
            out.setdefault(key, value)
        return out


@dataclass(frozen=True)
class ModelIdentity:
    """What an index remembers about the model that built it."""

    name: str
    pretrained: str | None
    dim: int
    weights_sha256: str | None
    preprocess: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "pretrained": self.pretrained,
            "dim": self.dim,
            "weights_sha256": self.weights_sha256,
            "preprocess": self.preprocess,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelIdentity:
        return cls(
            name=data["name"],
            pretrained=data.get("pretrained"),
            dim=int(data["dim"]),
            weights_sha256=data.get("weights_sha256"),
            preprocess=dict(data.get("preprocess") or {}),
        )

    def describe(self) -> str:
        if self.pretrained:
            return f"{self.name} (pretrained={self.pretrained})"
        return self.name

    def same_model(self, other: ModelIdentity) -> bool:
        """True when both identities name the same weights (by hash when both have one)."""
        if self.weights_sha256 and other.weights_sha256:
            return self.weights_sha256 == other.weights_sha256 and self.dim == other.dim
        return (self.name, self.pretrained, self.dim) == (other.name, other.pretrained, other.dim)


@dataclass(frozen=True)
class SearchParams:
    """Search-time parameters of a faiss index; None means not applicable to its type."""

    nprobe: int | None = None
    ef_search: int | None = None
    k_factor: int | None = None

    def to_dict(self) -> dict[str, int]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SearchParams:
        return cls(**{k: int(v) for k, v in data.items() if k in cls.__dataclass_fields__})
