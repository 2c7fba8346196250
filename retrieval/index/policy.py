"""Which faiss index to build: `auto|flat|ivf|hnsw|ivfpq` or a factory string resolved for n
vectors of dim d (Flat while exact search is cheap, IVF past it, refined PQ once the vectors
outgrow memory), checked before any work, and how many vectors train it. The wrapper that builds,
saves and searches it is faiss_index.py."""

# faiss shorthand (xq, xb, D, I) is house style inside retrieval/index/.
# ruff: noqa: E741

from __future__ import annotations

import logging
import math
import os
from typing import Any

import faiss

from retrieval.errors import InvalidQueryError

logger = logging.getLogger(__name__)


INDEX_TYPES = ("auto", "flat", "ivf", "hnsw", "ivfpq")
FACTORY_HELP = "https://github.com/facebookresearch/faiss/wiki/The-index-factory"
# Why these values, with the measurements: docs/design.md, "Which faiss index for n vectors".
AUTO_FLAT_MAX = 50_000  # exact Flat while a query stays under ~8 ms
# Refined PQ past 4 GiB of float32 vectors (or a quarter of this machine's RAM if less).
AUTO_PQ_MIN_BYTES = 4 << 30


def _auto_pq_min_bytes() -> int:
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return AUTO_PQ_MIN_BYTES
    return min(AUTO_PQ_MIN_BYTES, ram // 4)


MIN_POINTS_PER_CENTROID = 39  # faiss k-means warns below this: centroids become unstable.
NLIST_PER_SQRT_N = 4  # faiss guideline is 4..16 * sqrt(n) lists; 4 keeps training cheap.
MAX_NLIST = 2048  # k-means grows as nlist^2: past 2048 lists tuning raises nprobe instead
MIN_NLIST = 16  # coarser partitions do not beat Flat, so IVF falls back to Flat below this.
TRAIN_POINTS_PER_CENTROID = 64  # within faiss's 39..256 guidance, 4x less data than 256.
PQ_NBITS = 8
PQ_MIN_TRAIN = MIN_POINTS_PER_CENTROID * (1 << PQ_NBITS)  # 256 centroids per sub-quantizer
PQ_DIMS_PER_SUBQUANTIZER = 8  # the usual recall/size sweet spot
PQ_MAX_SUBQUANTIZERS = 64  # 64-byte codes for 512..1280-d models, within faiss GPU IVFPQ
PQ_REFINE = "Refine(SQ8)"  # re-scores PQ's candidates: ~0.75 recall@10 becomes > 0.95
MAX_TRAIN_POINTS_PER_CENTROID = 256  # faiss k-means subsamples to this anyway
HNSW_M = 32  # links per node, the usual faiss choice: ~270 bytes/vector of graph.


def resolve_index_type(index_type: str, n: int, dim: int) -> str:
    """Map `auto|flat|ivf|hnsw|ivfpq` or a raw faiss factory string to a factory string."""
    name = index_type.strip().lower()
    if name == "auto":
        if n <= AUTO_FLAT_MAX:
            return "Flat"
        name = "ivfpq" if n * dim * 4 >= _auto_pq_min_bytes() else "ivf"
    if name == "flat":
        return "Flat"
    if name == "hnsw":
        return f"HNSW{HNSW_M}"
    if name in ("ivf", "ivfpq"):
        nlist = min(round(NLIST_PER_SQRT_N * math.sqrt(n)), MAX_NLIST, n // MIN_POINTS_PER_CENTROID)
        need = MIN_NLIST * MIN_POINTS_PER_CENTROID if name == "ivf" else PQ_MIN_TRAIN
        if nlist < MIN_NLIST or n < need:
            logger.warning("%s needs >= %d vectors to train, got %d: using Flat", name, need, n)
            return "Flat"
        if name == "ivf":
            return f"IVF{nlist},Flat"
        return f"IVF{nlist},PQ{_pq_subquantizers(dim)}x{PQ_NBITS},{PQ_REFINE}"
    return _resolve_raw(index_type.strip(), n, dim)


def _pq_subquantizers(dim: int) -> int:
    target = max(1, min(PQ_MAX_SUBQUANTIZERS, dim // PQ_DIMS_PER_SUBQUANTIZER))
    return max(m for m in range(1, target + 1) if dim % m == 0)


def check_index_type(index_type: str, dim: int) -> None:
    """Refuse an index type faiss cannot build for `dim`-d vectors, before any work starts.

    Raises:
        InvalidQueryError: neither a known name nor a faiss factory string valid for `dim`.
    """
    if index_type.strip().lower() not in INDEX_TYPES:
        _factory_index(index_type.strip(), dim)


def _factory_index(factory: str, dim: int) -> Any:
    try:
        return faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as err:
        raise InvalidQueryError(
            f"unknown --index-type {factory!r} for dim {dim}: use one of "
            f"{', '.join(INDEX_TYPES)} or a faiss index_factory string such as 'IVF1024,Flat' "
            f"or 'HNSW32' ({FACTORY_HELP}); faiss said: {_faiss_message(err)}"
        ) from err


def _resolve_raw(factory: str, n: int, dim: int) -> str:
    index = _factory_index(factory, dim)
    ivf = _ivf(index)
    pq = getattr(ivf if ivf is not None else _core(index), "pq", None)
    need = max(ivf.nlist if ivf is not None else 0, (1 << pq.nbits) if pq is not None else 0)
    if not index.is_trained and n < need:
        logger.warning("%r needs >= %d vectors to train, got %d: using Flat", factory, need, n)
        return "Flat"
    return factory


def _faiss_message(err: Exception) -> str:
    lines = str(err).strip().splitlines()
    return lines[-1] if lines else type(err).__name__


def _core(index: Any) -> Any:
    """Unwrap id maps and pre-transforms down to the index that actually scores vectors."""
    index = faiss.downcast_index(index)
    while isinstance(index, faiss.IndexIDMap | faiss.IndexPreTransform | faiss.IndexRefine):
        inner = index.base_index if isinstance(index, faiss.IndexRefine) else index.index
        index = faiss.downcast_index(inner)
    return index


def _refine(index: Any) -> Any:
    """The IndexRefine under an id map, or None."""
    index = faiss.downcast_index(index)
    while isinstance(index, faiss.IndexIDMap | faiss.IndexPreTransform):
        index = faiss.downcast_index(index.index)
    return index if isinstance(index, faiss.IndexRefine) else None


def _ivf(index: Any) -> Any:
    """The IndexIVF inside `index` as its concrete class (IndexIVFPQ...), or None."""
    ivf = faiss.try_extract_index_ivf(index)
    return None if ivf is None else faiss.downcast_index(ivf)


def training_sample_size(n: int, nlist: int) -> int:
    """Vectors to train on: TRAIN_POINTS_PER_CENTROID per IVF list, within faiss's guidance
    of 39..256 per centroid, and at least enough for 256-centroid PQ sub-quantizers.

    k-means cost is linear in the sample, so at 1M vectors (IVF2048, see MAX_NLIST) this trains
    on 131k rather than all 1M, and faiss would itself subsample to 256 per centroid."""
    per_list = min(
        max(TRAIN_POINTS_PER_CENTROID, MIN_POINTS_PER_CENTROID), MAX_TRAIN_POINTS_PER_CENTROID
    )
    return min(n, max(per_list * max(nlist, 1), 4 * PQ_MIN_TRAIN))
