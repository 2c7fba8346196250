"""Exact top-k inner-product search in plain numpy: the oracle every faiss index is tested
and benchmarked against. It favours being obviously right over being fast (a full sort per
query), so use it on test- and benchmark-sized data only."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from retrieval.types import Ids, Vectors

Scores = npt.NDArray[np.float32]


def exact_search(
    vectors: Vectors,
    ids: Ids,
    queries: Vectors,
    k: int,
    allowed_ids: Ids | None = None,
) -> tuple[Scores, Ids]:
    """Return the exact top-k (scores, ids) by inner product, best first, padded with -inf / -1.

    Ties are broken by ascending id so the result is fully deterministic. With `allowed_ids`,
    only vectors whose id is in that set are candidates.

    Example:
        >>> scores, ids = exact_search(vectors, ids, queries, k=10)
    """
    vectors = np.asarray(vectors, dtype=np.float32)
    ids = np.asarray(ids, dtype=np.int64)
    queries = np.asarray(queries, dtype=np.float32)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if vectors.ndim != 2 or queries.ndim != 2 or queries.shape[1] != vectors.shape[1]:
        raise ValueError(
            f"vectors and queries must be 2-D with the same dim, got {vectors.shape} "
            f"and {queries.shape}"
        )
    if ids.shape != (vectors.shape[0],):
        raise ValueError(f"need one id per vector, got {ids.shape[0]} ids for {len(vectors)}")
    if allowed_ids is not None:
        keep = np.isin(ids, np.asarray(allowed_ids, dtype=np.int64))
        vectors, ids = vectors[keep], ids[keep]

    nq, n = queries.shape[0], vectors.shape[0]
    out_scores = np.full((nq, k), -np.inf, dtype=np.float32)
    out_ids = np.full((nq, k), -1, dtype=np.int64)
    if n == 0 or nq == 0:
        return out_scores, out_ids

    all_scores = queries @ vectors.T
    # lexsort's last key is the primary one: descending score, then ascending id.
    order = np.lexsort((np.broadcast_to(ids, all_scores.shape), -all_scores), axis=-1)[:, :k]
    found = order.shape[1]
    out_scores[:, :found] = np.take_along_axis(all_scores, order, axis=1)
    out_ids[:, :found] = ids[order]
    return out_scores, out_ids
