"""All pairs of stored vectors whose inner product reaches a threshold (near-duplicate search),
with a faiss range search: exact (Flat) on small sets, IVF above EXACT_RANGE_MAX.

Why IVF past that size: an exact all-pairs range search costs n^2 * dim (about 5e12 flops for
100k x 512-d, minutes on a few cores), while near-duplicates (cosine >= 0.9) nearly always fall
into the same or a neighbouring k-means cell, so probing a few cells finds them at a small
fraction of the cost (benchmarks/duplicates.py measures the time and the recall of the pairs)."""

# faiss shorthand (xq, xb, lims, D, I) is house style inside retrieval/index/.
# ruff: noqa: E741

from __future__ import annotations

import math

import faiss
import numpy as np

from retrieval.errors import InvalidQueryError
from retrieval.types import Vectors

# Up to here the exact all-pairs search takes seconds (20k^2 x 512-d is 2e11 flops).
EXACT_RANGE_MAX = 20_000
# Cells probed per query: at cosine >= 0.9 a pair sits in one of the 16 nearest cells of either
# member with recall 1.0 on the benchmark's 100k vectors; more only costs time.
RANGE_NPROBE = 16
# Queries per range_search call: bounds the result lists faiss holds at once.
QUERY_CHUNK = 8192


def range_pairs(
    vectors: Vectors, threshold: float, *, exact: bool | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs (rows i < j) of `vectors` with inner product >= `threshold`, and their scores.

    Rows are positions in `vectors`. `exact=None` picks Flat up to EXACT_RANGE_MAX rows and
    IVF above; IVF may miss a rare pair whose members fall into distant cells."""
    if not -1.0 <= threshold <= 1.0:
        raise InvalidQueryError(f"the threshold must be a cosine between -1 and 1, got {threshold}")
    xb = np.ascontiguousarray(vectors, dtype=np.float32)
    n = len(xb)
    empty = np.zeros(0, np.int64)
    if n < 2:
        return empty, empty, np.zeros(0, np.float32)
    if exact is None:
        exact = n <= EXACT_RANGE_MAX
    index = _flat(xb) if exact else _ivf(xb)
    lefts, rights, scores = [], [], []
    for start in range(0, n, QUERY_CHUNK):
        xq = xb[start : start + QUERY_CHUNK]
        # range_search keeps results with score > radius; nextafter makes it >= threshold.
        lims, D, I = index.range_search(xq, float(np.nextafter(np.float32(threshold), -2)))
        rows = np.repeat(np.arange(start, start + len(xq)), np.diff(lims).astype(np.int64))
        keep = rows < I  # each pair once, and never a vector with itself
        lefts.append(rows[keep])
        rights.append(I[keep])
        scores.append(D[keep])
    return np.concatenate(lefts), np.concatenate(rights), np.concatenate(scores)


def _flat(xb: np.ndarray) -> faiss.Index:
    index = faiss.IndexFlatIP(xb.shape[1])
    index.add(xb)
    return index


def _ivf(xb: np.ndarray) -> faiss.Index:
    n, dim = xb.shape
    nlist = max(1, int(4 * math.sqrt(n)))
    quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    # 32 points per centroid train k-means well enough for cell assignment (faiss warns < 39).
    rng = np.random.default_rng(0)
    sample = xb[rng.choice(n, size=min(n, 32 * nlist), replace=False)]
    index.cp.min_points_per_centroid = 1
    index.train(sample)
    index.add(xb)
    index.nprobe = min(RANGE_NPROBE, nlist)
    return index
