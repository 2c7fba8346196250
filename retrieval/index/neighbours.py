"""All pairs of stored vectors whose inner product reaches a threshold (near-duplicate search),
with a faiss range search that is exact but cheap: a BLAS-fast range search in a PCA projection
picks candidates, and each candidate is then checked in full dimension.

Why this and not IVF: an orthonormal projection can only shrink distances, so every pair within
the threshold in full dimension is within it in the projection too (no pair is ever missed),
while the projection cuts the all-pairs cost by dim / SCREEN_DIM. IVF range search was slower
here than the exact Flat one: it scans its lists one vector at a time, where Flat uses BLAS
(benchmarks/duplicates.py measures this method against the exact Flat range search)."""

# faiss shorthand (xq, xb, lims, D, I) is house style inside retrieval/index/.
# ruff: noqa: E741

from __future__ import annotations

import faiss
import numpy as np

from retrieval.errors import InvalidQueryError
from retrieval.types import Vectors

# Dimensions of the screening projection: 64 of CLIP's 512 keep most of the variance, so
# unrelated pairs stay far apart and few false candidates reach the full-dimension check.
SCREEN_DIM = 64
# Rows used to fit the PCA: plenty for 64 components, and cheap.
PCA_SAMPLE = 20_000
# Queries per range_search call: bounds the candidate lists faiss holds at once.
QUERY_CHUNK = 4096
# Float rounding slack on the screen's radius, so a pair exactly at the threshold is kept.
RADIUS_SLACK = 1e-4


def range_pairs(
    vectors: Vectors, threshold: float, *, screen_dim: int = SCREEN_DIM
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs (rows i < j) of unit `vectors` with inner product >= `threshold`, and their scores.

    Exact: equal to comparing every pair, whatever `screen_dim` (which only changes the cost)."""
    if not -1.0 <= threshold <= 1.0:
        raise InvalidQueryError(f"the threshold must be a cosine between -1 and 1, got {threshold}")
    xb = np.ascontiguousarray(vectors, dtype=np.float32)
    n, dim = xb.shape
    empty = np.zeros(0, np.int64)
    if n < 2:
        return empty, empty, np.zeros(0, np.float32)
    # A PCA fitted on fewer rows than a few times its input dimension is not reliably
    # orthonormal; such sets are small enough to compare in full dimension anyway.
    screened = _project(xb, screen_dim) if screen_dim < dim and n >= 4 * dim else xb
    index = faiss.IndexFlatL2(screened.shape[1])
    index.add(screened)
    # For unit vectors |a - b|^2 = 2 - 2 a.b, so a.b >= t is |a - b|^2 <= 2 - 2t.
    radius = 2.0 - 2.0 * threshold + RADIUS_SLACK
    lefts, rights, scores = [], [], []
    for start in range(0, n, QUERY_CHUNK):
        lims, _, I = index.range_search(screened[start : start + QUERY_CHUNK], radius)
        rows = np.repeat(np.arange(start, start + len(lims) - 1), np.diff(lims).astype(np.int64))
        keep = rows < I  # each pair once, and never a vector with itself
        left, right = rows[keep], I[keep]
        exact = np.einsum("ij,ij->i", xb[left], xb[right])
        close = exact >= threshold
        lefts.append(left[close])
        rights.append(right[close])
        scores.append(exact[close])
    return np.concatenate(lefts), np.concatenate(rights), np.concatenate(scores)


def _project(xb: np.ndarray, screen_dim: int) -> np.ndarray:
    """xb through a PCA to `screen_dim` dimensions: orthonormal rows (no whitening), so no
    distance grows."""
    pca = faiss.PCAMatrix(xb.shape[1], screen_dim)
    rng = np.random.default_rng(0)
    sample = xb[rng.choice(len(xb), size=min(len(xb), PCA_SAMPLE), replace=False)]
    pca.train(sample)
    return np.ascontiguousarray(pca.apply(xb))
