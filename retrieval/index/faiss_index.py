"""faiss-backed vector index with stable int64 ids, in-search id filtering, atomic saves and
optional GPU search; which index to build for n vectors is policy.py's. This package is the only
place in mmsearch that imports faiss.

faiss 1.15 ships type stubs that lack SearchParametersHNSW, the keyword constructors of
SearchParameters* and some fields; the few `type: ignore`s below are for those gaps."""

# faiss shorthand (xq, xb, D, I) is house style inside retrieval/index/.
# ruff: noqa: E741

from __future__ import annotations

import contextlib
import ctypes
import logging
import math
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from faiss.contrib.factory_tools import reverse_index_factory

from retrieval.errors import (
    IndexCorruptError,
    IndexMismatchError,
    IndexNotFoundError,
    InvalidQueryError,
    MmsearchError,
)
from retrieval.files import atomic_path
from retrieval.index.exact import Scores
from retrieval.index.policy import (  # noqa: F401 (re-exported: the wrapper's callers)
    AUTO_FLAT_MAX,
    AUTO_PQ_MIN_BYTES,
    FACTORY_HELP,
    HNSW_M,
    INDEX_TYPES,
    MAX_NLIST,
    MAX_TRAIN_POINTS_PER_CENTROID,
    MIN_NLIST,
    MIN_POINTS_PER_CENTROID,
    NLIST_PER_SQRT_N,
    PQ_DIMS_PER_SUBQUANTIZER,
    PQ_MAX_SUBQUANTIZERS,
    PQ_MIN_TRAIN,
    PQ_NBITS,
    PQ_REFINE,
    TRAIN_POINTS_PER_CENTROID,
    _auto_pq_min_bytes,
    _core,
    _factory_index,
    _faiss_message,
    _ivf,
    _pq_subquantizers,
    _refine,
    _resolve_raw,
    check_index_type,
    resolve_index_type,
    training_sample_size,
)
from retrieval.types import Ids, SearchParams, Vectors

logger = logging.getLogger(__name__)


HNSW_EF_CONSTRUCTION = 64  # faiss default 40; a little more buys recall for modest build time.
HNSW_EF_SEARCH = 64  # faiss default 16 gives ~0.93 recall@10 at 100k x 512-d; 64 gives ~0.99.
HNSW_MAX_EF_SEARCH = 4096  # cap on the widened walk; rows still short get the exact scan.
# Allowed sets up to this size are scored exhaustively: at most 10k dot products per query
# (~5M multiply-adds at 512-d) plus an O(n) membership pass, exact and bounded in cost.
EXACT_FILTER_MAX = 10_000
GPU_MAX_K = 2048  # faiss GPU k-selection limit; larger k runs on the CPU copy.
SEED = 1234


def gpu_available() -> bool:
    """Return True when faiss was built with GPU support and sees at least one CUDA device."""
    try:  # CPU-only wheels still define get_num_gpus (returning 0) but no GPU classes
        return hasattr(faiss, "StandardGpuResources") and int(faiss.get_num_gpus()) > 0
    except RuntimeError:  # a CUDA driver/runtime mismatch surfaces here
        return False


def _factory_of(index: Any, default: str) -> str:
    """Canonical factory string of `index` without its id map, so build and load agree."""
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexIDMap):
        index = faiss.downcast_index(index.index)
    try:
        return str(reverse_index_factory(index))
    except (NotImplementedError, AssertionError, AttributeError, RuntimeError):
        return default or type(index).__name__


def _default_nprobe(nlist: int) -> int:
    # sqrt(nlist) probes scan ~n/sqrt(nlist) vectors: measured recall@10 0.94 (n=10k, 16/256)
    # and 0.977 (n=100k, 36/1265) on structured 512-d data (benchmarks/index_recall.py, retired:
    # `git show 69f615e:benchmarks/index_recall.py`).
    return min(nlist, max(8, round(math.sqrt(nlist))))


def _check_vectors(vectors: Vectors, ids: Ids, dim: int | None) -> tuple[Any, Any]:
    xb = np.ascontiguousarray(vectors, dtype=np.float32)
    if xb.ndim != 2:
        raise ValueError(f"vectors must be a 2-D (n, dim) array, got shape {xb.shape}")
    if dim is not None and xb.shape[1] != dim:
        raise IndexMismatchError(
            f"vectors have dim {xb.shape[1]} but the index has dim {dim}: it was built with "
            "another embedding model; rebuild it or use the matching model"
        )
    id_array = np.asarray(ids)
    if id_array.shape != (xb.shape[0],) or not np.issubdtype(id_array.dtype, np.integer):
        raise ValueError(f"need one integer id per vector, got ids of shape {id_array.shape}")
    id_array = np.ascontiguousarray(id_array, dtype=np.int64)
    if id_array.size and id_array.min() < 0:
        raise ValueError("ids must be >= 0 (-1 marks a missing result)")
    if np.unique(id_array).size != id_array.size:
        raise ValueError("ids must be unique within a batch; remove old ids before re-adding")
    return xb, id_array


class FaissIndex:
    """A faiss index over L2-normalised vectors, scored by inner product, keyed by int64 ids.

    Searches may run concurrently; add/remove must not overlap searches (the store
    serialises writes). With use_gpu=True unfiltered searches run on a GPU replica that is
    re-uploaded after writes; filtered searches use the CPU index, as faiss GPU indexes take no
    IDSelector.
    """

    def __init__(
        self,
        index: Any,
        factory: str,
        *,
        use_gpu: bool = False,
        mmap: bool = False,
        search_params: SearchParams | None = None,
    ):
        self._cpu: Any = faiss.downcast_index(index)
        self._owner = index  # downcast_index returns a non-owning proxy: keep the owner alive
        self._factory = factory
        self._read_only = mmap
        self._gpu: Any = None
        self._gpu_res: Any = None
        self._gpu_stale = False
        self._gpu_lock = threading.Lock()
        self._id_map: Any = None
        core = _core(self._cpu)
        if isinstance(core, faiss.IndexIVF):
            core.nprobe = _default_nprobe(core.nlist)
        elif isinstance(core, faiss.IndexHNSW):
            core.hnsw.efSearch = HNSW_EF_SEARCH
        if search_params is not None:
            self.set_search_params(search_params)
        if use_gpu:
            self._to_gpu()

    @classmethod
    def build(
        cls, vectors: Vectors, ids: Ids, index_type: str = "auto", *, use_gpu: bool = False
    ) -> FaissIndex:
        """Create, train (with fixed seeds) and fill an index of `index_type` from `vectors`."""
        xb, id_array = _check_vectors(vectors, ids, None)
        factory = resolve_index_type(index_type, *xb.shape)
        index = faiss.index_factory(xb.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
        native_ids = faiss.try_extract_index_ivf(index) is not None and _refine(index) is None
        if not isinstance(index, faiss.IndexIDMap) and not native_ids:
            index = faiss.IndexIDMap2(index)  # IVF stores ids natively; others need a map
        core = _core(index)
        if isinstance(core, faiss.IndexHNSW):
            core.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        if not index.is_trained:
            index.train(_training_sample(xb, index))
        index.add_with_ids(xb, id_array)
        return cls(index, _factory_of(index, factory), use_gpu=use_gpu)

    @classmethod
    def load(
        cls,
        path: Path,
        *,
        use_gpu: bool = False,
        mmap: bool = False,
        search_params: SearchParams | None = None,
    ) -> FaissIndex:
        """Read an index written by save(); with mmap=True it is memory-mapped and read-only."""
        path = Path(path)
        if not path.is_file():
            raise IndexNotFoundError(f"no index file at {path}: build one first")
        try:
            # ONDISK_SAME_DIR: a sharded build's inverted lists (ondisk.py) are found next
            # to the index file, wherever the index directory has been moved or mounted.
            # IO_FLAG_MMAP crashes faiss 1.15 on OnDiskInvertedLists (which map their own
            # file anyway), so a file with a sibling .ivfdata is read without it.
            ondisk = _has_ondisk_lists(path)
            flags = (_mmap_flags(path) if mmap and not ondisk else 0) | (
                faiss.IO_FLAG_ONDISK_SAME_DIR
            )
            # SAME_DIR printf()s the path it fixes up
            with c_stdout_to_stderr() if ondisk else contextlib.nullcontext():
                index = faiss.read_index(str(path), flags)
        except RuntimeError as err:
            raise IndexCorruptError(
                f"cannot read faiss index {path} ({_faiss_message(err)}): rebuild the index"
            ) from err
        if index.metric_type != faiss.METRIC_INNER_PRODUCT:
            raise IndexMismatchError(
                f"{path} is not an inner-product (cosine) index: rebuild it with mmsearch"
            )
        return cls(
            index, _factory_of(index, ""), use_gpu=use_gpu, mmap=mmap, search_params=search_params
        )

    @property
    def ntotal(self) -> int:
        """Number of vectors in the index."""
        return int(self._cpu.ntotal)

    @property
    def dim(self) -> int:
        """Vector dimension."""
        return int(self._cpu.d)

    @property
    def factory(self) -> str:
        """The resolved faiss factory string, e.g. 'IVF400,Flat'."""
        return self._factory

    @property
    def read_only(self) -> bool:
        """True when memory-mapped: load it again with mmap=False to modify it."""
        return self._read_only

    @property
    def faiss_index(self) -> Any:
        """The underlying CPU faiss index (for retrieval.index.tuning)."""
        return self._cpu

    @property
    def on_disk(self) -> bool:
        """True when the inverted lists live in a memory-mapped .ivfdata file (ondisk.py):
        such an index is rebuilt, never modified, since readers may have the file mapped."""
        ivf = _ivf(self._cpu)
        return ivf is not None and isinstance(
            faiss.downcast_InvertedLists(ivf.invlists), faiss.OnDiskInvertedLists
        )

    @property
    def supports_remove(self) -> bool:
        """False for HNSW graphs and refined PQ (faiss cannot delete from them) and for
        memory-mapped indexes."""
        core = _core(self._cpu)
        return not (
            self._read_only
            or self.on_disk
            or isinstance(core, faiss.IndexHNSW)
            or _refine(self._cpu)
        )

    @property
    def search_params(self) -> SearchParams:
        """The parameters every unfiltered search uses (filtered ones widen them)."""
        core, refine = _core(self._cpu), _refine(self._cpu)
        return SearchParams(
            nprobe=int(core.nprobe) if isinstance(core, faiss.IndexIVF) else None,
            ef_search=int(core.hnsw.efSearch) if isinstance(core, faiss.IndexHNSW) else None,
            k_factor=round(refine.k_factor) if refine is not None else None,
        )

    def set_search_params(self, params: SearchParams) -> None:
        """Apply tuned parameters; those that do not fit this index type are ignored."""
        core, refine = _core(self._cpu), _refine(self._cpu)
        if params.nprobe is not None and isinstance(core, faiss.IndexIVF):
            core.nprobe = max(1, min(int(params.nprobe), int(core.nlist)))
        if params.ef_search is not None and isinstance(core, faiss.IndexHNSW):
            core.hnsw.efSearch = max(1, int(params.ef_search))
        if params.k_factor is not None and refine is not None:
            refine.k_factor = float(max(1, params.k_factor))
        self._gpu_stale = self._gpu is not None

    @property
    def description(self) -> str:
        """One human-readable line: type, size, search parameters and device."""
        core = _core(self._cpu)
        parts = [self._factory, f"{self.ntotal:,} vectors x {self.dim}d", "inner product"]
        if isinstance(core, faiss.IndexIVF):
            parts.append(f"nprobe={core.nprobe}/{core.nlist}")
        if isinstance(core, faiss.IndexHNSW):
            parts.append(f"efSearch={core.hnsw.efSearch}")
        if _refine(self._cpu) is not None:
            parts.append(f"k_factor={self.search_params.k_factor}")
        parts.append("gpu" if self._gpu is not None else "cpu")
        return ", ".join(parts + (["mmap read-only"] if self._read_only else []))

    def add(self, vectors: Vectors, ids: Ids) -> None:
        """Add vectors under the given ids (ids must not already be in the index)."""
        self._check_writable("add to")
        xb, id_array = _check_vectors(vectors, ids, self.dim)
        self._cpu.add_with_ids(xb, id_array)
        self._changed()

    def remove(self, ids: Ids) -> None:
        """Remove the vectors with these ids; unknown ids are ignored."""
        self._check_writable("remove from")
        if not self.supports_remove:
            raise MmsearchError(
                f"{self._factory} indexes cannot delete vectors: rebuild the index without "
                "them, or build with --index-type ivf or flat to allow removals"
            )
        id_array = np.ascontiguousarray(ids, dtype=np.int64).ravel()
        if id_array.size:
            self._cpu.remove_ids(faiss.IDSelectorBatch(id_array))
            self._changed()

    def search(
        self,
        queries: Vectors,
        k: int,
        *,
        allowed_ids: Ids | None = None,
        excluded_ids: Ids | None = None,
    ) -> tuple[Scores, Ids]:
        """Top-k (scores, ids) per query, best first, padded with -inf / -1.

        With `allowed_ids`, only those ids can be returned; `excluded_ids` are never returned
        (the stale vectors of a delta's changed items, storage/delta.py). Both filters run
        inside faiss, so a query still gets k hits whenever k such vectors are in the index.
        """
        xq = np.asarray(queries)
        if xq.ndim != 2 or xq.shape[1] != self.dim or not np.issubdtype(xq.dtype, np.floating):
            raise InvalidQueryError(
                f"queries must be a float array of shape (n, {self.dim}), got {xq.dtype} "
                f"{xq.shape}; embed them with the model the index was built with"
            )
        if k < 1:
            raise InvalidQueryError(f"k (top-k) must be >= 1, got {k}")
        xq = np.ascontiguousarray(xq, dtype=np.float32)
        excluded = None
        if excluded_ids is not None and len(excluded_ids):
            excluded = np.unique(np.asarray(excluded_ids, np.int64))
        if allowed_ids is not None:
            allowed = np.unique(np.asarray(allowed_ids, np.int64))
            if excluded is not None:
                allowed = np.setdiff1d(allowed, excluded, assume_unique=True)
            D, I = self._filtered_search(xq, k, allowed)
        elif excluded is not None and self.ntotal > 0:
            D, I = self._excluding_search(xq, k, excluded)
        elif self.ntotal == 0:
            D, I = np.empty((len(xq), k), np.float32), np.full((len(xq), k), -1, np.int64)
        else:
            D, I = self._searcher(k).search(xq, k)
        D[I < 0] = -np.inf  # faiss pads with -FLT_MAX for inner product; callers expect -inf
        return D, I

    def ids(self) -> Ids:
        """Every id stored in the index, sorted (for integrity checks against the catalog)."""
        if hasattr(self._cpu, "id_map"):
            found = faiss.vector_to_array(self._cpu.id_map)
        else:
            ivf = _ivf(self._cpu)
            if ivf is None:  # a bare index numbers its vectors 0..n-1
                return np.arange(self.ntotal, dtype=np.int64)
            lists = ivf.invlists
            parts = [
                faiss.rev_swig_ptr(lists.get_ids(number), lists.list_size(number)).copy()
                for number in range(ivf.nlist)
                if lists.list_size(number)
            ]
            found = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
        return np.sort(np.asarray(found, dtype=np.int64))

    def save(self, path: Path) -> None:
        """Atomically write the CPU index to `path` (temp file, fsync, rename)."""
        path = Path(path)
        try:
            with atomic_path(path) as tmp:
                faiss.write_index(self._cpu, str(tmp))
        except (OSError, RuntimeError) as err:
            raise MmsearchError(
                f"could not write index to {path} ({_faiss_message(err)}): check the directory "
                "is writable and has free space; the previous index file is unchanged"
            ) from err

    def _check_writable(self, verb: str) -> None:
        if self._read_only:  # writing into mmapped faiss storage aborts the whole process
            raise MmsearchError(
                f"cannot {verb} an index opened with mmap=True (read-only): load it with "
                "mmap=False to modify it"
            )

    def _changed(self) -> None:
        self._id_map = None
        self._gpu_stale = self._gpu is not None

    def _searcher(self, k: int) -> Any:
        if self._gpu is None or k > GPU_MAX_K:
            return self._cpu
        with self._gpu_lock:
            if self._gpu_stale:  # re-upload after add/remove; batch writes to amortise it
                self._gpu = self._clone_to_gpu()
                self._gpu_stale = False
            return self._gpu

    def _filtered_search(self, xq: Any, k: int, allowed: Any) -> tuple[Any, Any]:
        D = np.full((len(xq), k), -np.inf, dtype=np.float32)
        I = np.full((len(xq), k), -1, dtype=np.int64)
        if allowed.size == 0 or self.ntotal == 0:
            return D, I
        sel = faiss.IDSelectorBatch(allowed)  # hash set + bloom filter: O(1) membership
        exhaustive = allowed.size <= max(EXACT_FILTER_MAX, k)
        D[:], I[:] = self._search_with_selector(xq, k, sel, allowed.size, exhaustive)
        # The guarantee: a row short of min(k, |allowed|) hits is redone exhaustively.
        short = (I >= 0).sum(axis=1) < min(k, allowed.size)
        if not exhaustive and short.any():
            D[short], I[short] = self._search_with_selector(xq[short], k, sel, allowed.size, True)
        return D, I

    def _excluding_search(self, xq: Any, k: int, excluded: Any) -> tuple[Any, Any]:
        """Every vector but `excluded`, with _filtered_search's guarantee."""
        batch = faiss.IDSelectorBatch(excluded)
        sel = faiss.IDSelectorNot(batch)
        sel.referenced = batch  # type: ignore[attr-defined]  # keep the wrapped one alive
        n_allowed = max(self.ntotal - excluded.size, 1)
        D, I = self._search_with_selector(xq, k, sel, n_allowed, False)
        short = (I >= 0).sum(axis=1) < min(k, n_allowed)
        if short.any():
            D[short], I[short] = self._search_with_selector(xq[short], k, sel, n_allowed, True)
        return D, I

    def _search_with_selector(
        self, xq: Any, k: int, sel: Any, n_allowed: int, exhaustive: bool
    ) -> tuple[Any, Any]:
        core = _core(self._cpu)
        params: Any
        # Widen the search so the expected number of allowed candidates matches what an
        # unfiltered search sees: scale nprobe / efSearch by 1 / (fraction allowed).
        widen = self.ntotal / n_allowed
        if isinstance(core, faiss.IndexIVF):
            nprobe = core.nlist if exhaustive else min(core.nlist, math.ceil(core.nprobe * widen))
            params = faiss.SearchParametersIVF(sel=sel, nprobe=nprobe, max_codes=0)  # type: ignore[call-arg]
        elif isinstance(core, faiss.IndexHNSW):
            direct = isinstance(self._cpu, faiss.IndexIDMap) and isinstance(
                faiss.downcast_index(self._cpu.index), faiss.IndexHNSW
            )  # the storage scan needs queries that no pre-transform has touched
            if exhaustive and direct:
                with contextlib.suppress(RuntimeError):  # PQ storage takes no selector: walk
                    return self._scan_hnsw_storage(xq, k, sel, core)
            ef = math.ceil(max(core.hnsw.efSearch, k) * widen)
            ef = HNSW_MAX_EF_SEARCH if exhaustive else min(ef, HNSW_MAX_EF_SEARCH)
            params = faiss.SearchParametersHNSW(sel=sel, efSearch=ef)  # type: ignore[attr-defined]
        else:  # flat-like indexes score every allowed vector anyway
            params = faiss.SearchParameters(sel=sel)  # type: ignore[call-arg]
        refine = _refine(self._cpu)
        if refine is not None:
            return self._refine_search(xq, k, sel, params, refine)
        try:
            D, I = self._cpu.search(xq, k, params=params)
        except RuntimeError as err:
            raise MmsearchError(
                f"{self._factory} indexes do not support filtered search in faiss: rebuild "
                "with --index-type flat, ivf, hnsw or ivfpq"
            ) from err
        return D, I

    def _refine_search(self, xq: Any, k: int, sel: Any, params: Any, refine: Any) -> Any:
        """Filtered search of IDMap2(IndexRefine): the id map does not translate selectors
        nested in IndexRefineSearchParameters, so translate for the base index here."""
        translated = faiss.IDSelectorTranslated(self._cpu.id_map, sel)
        params.sel = translated
        rparams = faiss.IndexRefineSearchParameters(  # type: ignore[call-arg]
            k_factor=refine.k_factor, base_index_params=params
        )
        D, I = refine.search(xq, k, params=rparams)
        if self._id_map is None:
            self._id_map = faiss.vector_to_array(self._cpu.id_map)
        return D, np.where(I >= 0, self._id_map[np.maximum(I, 0)], -1)

    def _scan_hnsw_storage(self, xq: Any, k: int, sel: Any, core: Any) -> tuple[Any, Any]:
        """Exact scan of the HNSW's vector storage; the selector sees ids via the id map."""
        translated = faiss.IDSelectorTranslated(self._cpu.id_map, sel)
        storage = faiss.downcast_index(core.storage)
        params = faiss.SearchParameters(sel=translated)  # type: ignore[call-arg]
        D, I = storage.search(xq, k, params=params)
        if self._id_map is None:
            self._id_map = faiss.vector_to_array(self._cpu.id_map)
        return D, np.where(I >= 0, self._id_map[np.maximum(I, 0)], -1)

    def _to_gpu(self) -> None:
        if not gpu_available():
            raise MmsearchError(
                "use_gpu=True but faiss has no GPU support or sees no CUDA device: install "
                "faiss-gpu (pip install -e '.[gpu]') on a CUDA machine, or pass --device cpu"
            )
        if isinstance(_core(self._cpu), faiss.IndexHNSW):
            raise MmsearchError(
                "faiss has no GPU version of HNSW indexes: pass --device cpu, or build with "
                "--index-type flat, ivf or ivfpq to search on the GPU"
            )
        self._gpu_res = faiss.StandardGpuResources()
        self._gpu = self._clone_to_gpu()

    def _clone_to_gpu(self) -> Any:
        options, errors = faiss.GpuClonerOptions(), []
        for float16 in (True, False):  # float16 halves GPU memory for ~1e-3 score error
            options.useFloat16 = float16
            try:
                return faiss.index_cpu_to_gpu(self._gpu_res, 0, self._cpu, options)
            except RuntimeError as err:
                errors.append(err)
        raise MmsearchError(
            f"cannot move {self._factory} to the GPU ({_faiss_message(errors[-1])}): pass "
            "--device cpu or build with --index-type flat, ivf or ivfpq"
        ) from errors[-1]


def _has_ondisk_lists(path: Path) -> bool:
    """An .ivfdata file beside `path` (`x.ivfdata` or, in an index store, `images.N.ivfdata`
    of the same collection) means the index may keep its inverted lists there."""
    collection = path.name.split(".")[0]
    return path.with_suffix(".ivfdata").exists() or any(path.parent.glob(f"{collection}.*.ivfdata"))


@contextlib.contextmanager
def c_stdout_to_stderr() -> Iterator[None]:
    """Send what faiss's C++ printf()s (on-disk list bookkeeping) to stderr: stdout carries
    `--json` results. Flushes C stdio before switching back, or the text would leak later."""
    libc = ctypes.CDLL(None)
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        libc.fflush(None)
        os.dup2(saved, 1)
        os.close(saved)


def _training_sample(xb: Any, index: Any) -> Any:
    """Seed faiss's k-means and return a seeded subsample big enough to train `index`."""
    positions = training_positions(len(xb), index)
    return xb if positions is None else xb[positions]


def training_positions(n: int, index: Any) -> Any:
    """Seed `index`'s k-means; the sorted row positions (of n vectors ordered by id) that train
    it, or None for all rows. The sharded on-disk build (ondisk.py) trains on the same rows."""
    ivf = _ivf(index)
    if ivf is not None:
        ivf.cp.seed = SEED
        if isinstance(ivf, faiss.IndexIVFPQ):
            ivf.pq.cp.seed = SEED
            # On by default, it reorders codes for Hamming pre-filtering (polysemous_ht),
            # which we never enable, and it is ~85% of IVFPQ training time.
            ivf.do_polysemous_training = False  # type: ignore[attr-defined]
    size = training_sample_size(n, ivf.nlist if ivf is not None else 0)
    if n <= size:
        return None
    return np.sort(np.random.default_rng(SEED).choice(n, size, replace=False))


def _mmap_flags(path: Path) -> int:
    """IVF files ("Iw.." fourcc): IO_FLAG_MMAP | READ_ONLY maps the inverted lists so a query
    faults in only the lists it probes (measured 0.02 s for a first query vs 1.0 s with
    IO_FLAG_MMAP_IFC, which touches every list). Others: IO_FLAG_MMAP_IFC (faiss >= 1.10) also
    maps flat codes, which plain IO_FLAG_MMAP would read into RAM."""
    plain = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY
    with open(path, "rb") as handle:
        if handle.read(2) == b"Iw":
            return int(plain)
    return int(getattr(faiss, "IO_FLAG_MMAP_IFC", plain))
