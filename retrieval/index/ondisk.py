"""Sharded IVF build with the inverted lists on disk, after faiss's demo_ondisk_ivf.py: train
the coarse quantizer (and PQ) once on a sample, add each shard of vectors to its own copy of the
trained empty index (in parallel), then merge all shards' inverted lists into one
`OnDiskInvertedLists` file (faiss.contrib.ondisk.merge_ondisk) that queries memory-map.

Peak memory is one shard per worker plus the training sample, not the collection. Every step
leaves a file in `work_dir`, so a killed build resumes: the trained index and the finished
shard indexes are reused, only missing shards are added again."""

# faiss shorthand (xb, D, I) is house style inside retrieval/index/.

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from faiss.contrib.ondisk import merge_ondisk

from retrieval.errors import InvalidQueryError
from retrieval.files import atomic_path
from retrieval.index.faiss_index import (
    FaissIndex,
    _factory_of,
    _ivf,
    _refine,
    c_stdout_to_stderr,
    resolve_index_type,
    training_positions,
)
from retrieval.types import Ids, Vectors

logger = logging.getLogger(__name__)

# Vectors per shard index: 256k x 512-d float32 is 512 MiB in flight per worker while adding,
# and few enough shard files (4 per 1M) that merging opens a handful of mmaps.
DEFAULT_SHARD_SIZE = 262_144
# Shards added at once; faiss add is multi-threaded inside, so two keeps 2-core boxes busy
# without holding more than two shards in RAM.
DEFAULT_PARALLEL = 2

ReadVectors = Callable[[Ids], Vectors]
"""ids -> their float32 vectors (in that order), e.g. Catalog.get_vectors_by_id."""


def ondisk_factory(index_type: str, n: int, dim: int) -> str:
    """The factory string of an IVF index whose lists can live on disk: `ivfpq` drops its
    Refine stage (its codes would sit in RAM, defeating the point) and keeps the PQ codes.

    Raises:
        InvalidQueryError: the type is not an IVF index (flat and HNSW have no lists).
    """
    factory = resolve_index_type(index_type, n, dim)
    factory = factory.removesuffix(",Refine(SQ8)")
    index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    if _ivf(index) is None or _refine(index) is not None or factory != _top_level(index, factory):
        raise InvalidQueryError(
            f"--ondisk needs an IVF index type (ivf, ivfpq or a factory string such as "
            f"'IVF4096,PQ64x8'), got {index_type!r} -> {factory!r} for {n} vectors; drop "
            "--ondisk for flat/HNSW indexes, or index more vectors"
        )
    return factory


def _top_level(index: Any, factory: str) -> str:
    """`factory` when the IVF index is the top-level one (no pre-transform around it)."""
    return factory if isinstance(faiss.downcast_index(index), faiss.IndexIVF) else ""


def build_ondisk_ivf(
    ids: Ids,
    read_vectors: ReadVectors,
    dim: int,
    factory: str,
    ivfdata_path: Path,
    work_dir: Path,
    *,
    shard_size: int = DEFAULT_SHARD_SIZE,
    parallel: int = DEFAULT_PARALLEL,
    map_shards: Callable[[Callable[[int], Path], Iterable[int]], list[Path]] | None = None,
) -> FaissIndex:
    """Build `factory` over the vectors of `ids` (ascending) with its lists in `ivfdata_path`.

    `map_shards(add_shard, shard_numbers)` runs the per-shard adds (default: a thread pool of
    `parallel`); pass another to fan them out elsewhere. Returns the merged, searchable index.
    """
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    work_dir.mkdir(parents=True, exist_ok=True)
    _check_work_dir(work_dir, ids, factory, shard_size)
    trained_path = work_dir / "trained.index"
    if not trained_path.is_file():
        trained = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
        positions = training_positions(len(ids), trained)
        sample = read_vectors(ids if positions is None else ids[positions])
        trained.train(np.ascontiguousarray(sample, dtype=np.float32))
        del sample
        _write(trained, trained_path)
    shards = list(range((len(ids) + shard_size - 1) // shard_size))

    def add_shard(number: int) -> Path:
        path = work_dir / f"shard-{number:05d}.index"
        if path.is_file():  # finished by an earlier (killed) run
            return path
        index = faiss.read_index(str(trained_path))
        chunk = ids[number * shard_size : (number + 1) * shard_size]
        index.add_with_ids(np.ascontiguousarray(read_vectors(chunk), dtype=np.float32), chunk)
        _write(index, path)
        logger.info("added shard %d/%d (%d vectors)", number + 1, len(shards), len(chunk))
        return path

    if map_shards is None:
        with ThreadPoolExecutor(max(1, parallel)) as pool:
            shard_paths = list(pool.map(add_shard, shards))
    else:
        shard_paths = map_shards(add_shard, shards)
    merged = faiss.read_index(str(trained_path))
    ivfdata_path.unlink(missing_ok=True)  # a half-merged file of a killed run
    with c_stdout_to_stderr():
        merge_ondisk(merged, [str(p) for p in shard_paths], str(ivfdata_path))
    return FaissIndex(merged, _factory_of(merged, factory))


def _write(index: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        faiss.write_index(index, str(tmp))


def _check_work_dir(work_dir: Path, ids: Ids, factory: str, shard_size: int) -> None:
    """Files in `work_dir` belong to one (ids, factory, shard size); anything else is cleared,
    so a resumed build never mixes shards of another input."""
    digest = hashlib.sha256(ids.tobytes()).hexdigest()
    plan = {"factory": factory, "shard_size": shard_size, "n": len(ids), "ids_sha256": digest}
    plan_path = work_dir / "plan.json"
    if plan_path.is_file() and json.loads(plan_path.read_text()) == plan:
        return
    for path in work_dir.iterdir():
        if path.suffix == ".index":
            path.unlink()
    plan_path.write_text(json.dumps(plan))


def shard_files(work_dir: Path) -> Sequence[Path]:
    """The finished shard indexes of a build in `work_dir` (for tests and progress)."""
    return sorted(work_dir.glob("shard-*.index"))
