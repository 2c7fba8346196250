"""Composed queries and result collapsing, shared by every front end through SearchService.

A composed query is several weighted parts (texts, images, indexed items; a negative weight
subtracts). Its vector is the normalised weighted sum of the normalised part vectors. Pure
functions over numpy arrays; the service supplies the part vectors."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidQueryError

# Parts per query: enough for a query, a few refinements and several "less like this" clicks;
# the bound keeps one request from embedding a large batch of images.
MAX_PARTS = 16
# Cosine at which two stored vectors count as near-duplicates (resized, recompressed or lightly
# cropped copies of one photo score about 0.97-1.0 with CLIP ViT-B-32; distinct photos of one
# subject rarely pass 0.93).
DEFAULT_DUPLICATE_THRESHOLD = 0.95
# Candidates a collapsed search looks at, at most: past this, a page of mostly folded results
# stops deepening (it would otherwise read every stored vector of a large index).
MAX_COLLAPSE_DEPTH = 10_000
# A weighted sum shorter than this (relative to the total weight) points nowhere: the parts
# cancel out, and normalising it would amplify rounding noise into a random direction.
MIN_SUM_NORM = 1e-4


@dataclass(frozen=True)
class QueryPart:
    """One part of a composed query: exactly one of `text`, `image` (a path or bytes) and
    `item` (an indexed item id, whose stored vector is used), with a signed weight."""

    text: str | None = None
    image: Path | bytes | None = None
    item: int | None = None
    weight: float = 1.0
    image_name: str | None = None  # how the echo names image bytes ("base64", a file name)

    def check(self) -> None:
        """Raise InvalidQueryError unless exactly one source is given and the weight is finite."""
        given = sum(value is not None for value in (self.text, self.image, self.item))
        if given != 1:
            raise InvalidQueryError(
                "each query part needs exactly one of text, image and item, got "
                f"{given}: {self.echo()}"
            )
        if self.text is not None and not self.text.strip():
            raise InvalidQueryError("a query part's text is empty; pass some words or drop it")
        if not np.isfinite(self.weight):
            raise InvalidQueryError(f"a part's weight must be a finite number, got {self.weight}")

    def echo(self) -> dict[str, Any]:
        """The part as the query echo shows it."""
        out: dict[str, Any] = {}
        if self.text is not None:
            out["text"] = self.text
        if isinstance(self.image, Path):
            out["image"] = str(self.image.absolute())
        elif self.image is not None:
            out["image"] = self.image_name or "base64"
        if self.item is not None:
            out["item"] = self.item
        out["weight"] = self.weight
        return out


def parse_weight(raw: str, *, sign: float = 1.0) -> tuple[str, float]:
    """`"red dress@0.5"` -> ("red dress", 0.5 * sign); without a numeric `@W` suffix the weight
    is 1 (times `sign`). Only a suffix that parses as a number counts, so "me@home" stays text;
    to search for a text that itself ends in `@2`, append `@1`."""
    body, sep, tail = raw.rpartition("@")
    if sep:
        try:
            weight = float(tail)
        except ValueError:
            return raw, sign
        if not np.isfinite(weight):
            raise InvalidQueryError(f"the weight in {raw!r} must be a finite number")
        return body, sign * weight
    return raw, sign


def combine(vectors: np.ndarray, weights: Sequence[float]) -> np.ndarray:
    """The normalised weighted sum of the (re-)normalised rows of `vectors`.

    Raises:
        InvalidQueryError: the weights are all zero or the parts cancel each other out.
    """
    rows = np.asarray(vectors, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    if rows.ndim != 2 or len(rows) != len(w) or not len(w):
        raise InvalidQueryError("a composed query needs at least one part, one weight per part")
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    rows = rows / np.where(norms > 0, norms, 1.0)
    total = w @ rows
    length = float(np.linalg.norm(total))
    if length <= MIN_SUM_NORM * max(float(np.abs(w).sum()), 1e-12):
        raise InvalidQueryError(
            "the query parts cancel out (their weighted sum is zero): give a positive part, "
            "or weights that do not balance each other"
        )
    return (total / length).astype(np.float32)


def collapse(vectors: np.ndarray, threshold: float) -> list[tuple[int, list[int]]]:
    """Fold near-duplicates in a ranked list: rows in rank order -> (kept row, rows folded into
    it). Each row joins the best-ranked kept row it reaches `threshold` with, else it is kept."""
    rows = np.asarray(vectors, dtype=np.float32)
    if not len(rows):
        return []
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    rows = rows / np.where(norms > 0, norms, 1.0)
    # Each row is compared with the kept rows only (never an n x n matrix): memory stays
    # O(kept x dim) however many candidates fold.
    kept: list[int] = []
    kept_vectors = np.zeros((0, rows.shape[1]), dtype=np.float32)
    folded: dict[int, list[int]] = {}
    for row in range(len(rows)):
        close = np.flatnonzero(kept_vectors @ rows[row] >= threshold)
        if close.size:
            folded[kept[int(close[0])]].append(row)
            continue
        kept.append(row)
        folded[row] = []
        kept_vectors = np.vstack([kept_vectors, rows[row : row + 1]])
    return [(row, folded[row]) for row in kept]


__all__ = [
    "DEFAULT_DUPLICATE_THRESHOLD",
    "MAX_PARTS",
    "QueryPart",
    "collapse",
    "combine",
    "parse_weight",
]
