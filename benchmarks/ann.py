"""mmsearch's recall-tuned faiss indexes against hnswlib and usearch at matched recall@10, one
search thread, on CLIP-like vectors; plus cold open + first query, memory-mapped vs full load.

    python -m benchmarks.ann --n 1000000 --queries 10000 --cold-n 1000000 --mean-cosine 0.5

Vectors: a mixture of anisotropic Gaussians in a 64-d subspace of 512-d (cluster spreads decay
like a CLIP spectrum), plus a shared mean direction and isotropic noise, L2-normalised. By
default the mean direction is weak (mean pairwise cosine ~0.10); --mean-cosine 0.5 scales it so
pairwise cosines average ~0.5, as real CLIP image embeddings do. Queries come from the same
clusters with a modality offset and more noise, like text against image vectors. Each library
is tuned on separate tuning queries to the smallest search width reaching --target on them,
then measured on the queries.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks.harness import recall_at_k

SUBSPACE = 64
CLUSTERS = 1000
TUNE_QUERIES = 500


def clip_like(
    n: int,
    nq: int,
    dim: int,
    seed: int = 7,
    mean_cosine: float | None = None,
    tune_queries: int = TUNE_QUERIES,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Database, tuning queries and evaluation queries (float32, unit norm).

    The defaults keep the original output bit for bit (benchmarks/sharded_ivf.py uses it):
    mean_cosine in (0, 1) sets the shared mean's length so database pairs average that cosine;
    tuning queries past the first TUNE_QUERIES are drawn last, leaving the others unchanged."""
    rng = np.random.default_rng(seed)
    mixture = ClipMixture.of(rng, dim, mean_cosine)
    xb = mixture.draw(rng, n, query=False)
    tq = mixture.draw(rng, min(tune_queries, TUNE_QUERIES), query=True)
    xq = mixture.draw(rng, nq, query=True)
    if tune_queries > TUNE_QUERIES:
        tq = np.vstack([tq, mixture.draw(rng, tune_queries - TUNE_QUERIES, query=True)])
    return xb, tq, xq


@dataclass(frozen=True)
class ClipMixture:
    """The parameters of clip_like's mixture, apart from the draws, so a 10M-vector set can be
    drawn shard by shard (each shard from its own seed) without holding it all in RAM."""

    basis: np.ndarray  # orthonormal SUBSPACE x dim
    spectrum: np.ndarray  # anisotropic: decaying variances
    centres: np.ndarray
    mean: np.ndarray
    offset: np.ndarray  # modality gap for the queries

    @classmethod
    def of(
        cls, rng: np.random.Generator, dim: int, mean_cosine: float | None = None
    ) -> ClipMixture:
        basis = np.linalg.qr(rng.normal(size=(dim, SUBSPACE)))[0].T
        spectrum = 1.0 / np.sqrt(1 + np.arange(SUBSPACE))
        centres = rng.normal(size=(CLUSTERS, SUBSPACE)) * spectrum
        mean = rng.normal(size=dim)
        mean *= _mean_norm(spectrum, dim, mean_cosine) / np.linalg.norm(mean)
        offset = rng.normal(size=dim) * 0.3 / np.sqrt(dim)
        return cls(basis, spectrum, centres, mean, offset)

    def draw(self, rng: np.random.Generator, m: int, query: bool) -> np.ndarray:
        """m unit vectors (float32): database vectors, or queries (offset, noisier)."""
        dim = self.basis.shape[1]
        out = np.empty((m, dim), np.float32)
        for start in range(0, m, 100_000):  # chunks keep the float64 temporaries small
            c = min(100_000, m - start)
            z = self.centres[rng.integers(0, CLUSTERS, c)]
            z = z + rng.normal(size=(c, SUBSPACE)) * self.spectrum * (1.0 if query else 0.8)
            x = z @ self.basis + self.mean + rng.normal(size=(c, dim)) * (0.04 if query else 0.03)
            x = x + self.offset if query else x
            out[start : start + c] = x / np.linalg.norm(x, axis=1, keepdims=True)
        return out


def _mean_norm(spectrum: np.ndarray, dim: int, mean_cosine: float | None) -> float:
    """Length of the shared mean giving database pairs the wanted mean cosine: two vectors
    share only the mean (centres are independent), so cos ~ |m|^2 / (|m|^2 + spread), where
    spread is the expected squared length of everything else (centre, within, noise)."""
    if mean_cosine is None:
        return 0.9
    if not 0 < mean_cosine < 1:
        raise SystemExit(f"error: --mean-cosine must be in (0, 1), got {mean_cosine}")
    spread = float(np.sum(spectrum**2)) * (1 + 0.8**2) + dim * 0.03**2
    return float(np.sqrt(spread * mean_cosine / (1 - mean_cosine)))


def truth_of(xb: np.ndarray, xq: np.ndarray, k: int) -> np.ndarray:
    import faiss

    flat = faiss.IndexFlatIP(xb.shape[1])
    flat.add(xb)
    return flat.search(xq, k)[1]


recall = recall_at_k  # benchmarks/harness.py: one recall@k for every benchmark


def smallest_width(
    search, xq: np.ndarray, truth: np.ndarray, target: float, lo: int, hi: int
) -> int:
    """Smallest width (ef) whose recall on the tuning queries reaches target: double, bisect."""
    value = lo
    while value < hi and recall(search(xq, value), truth) < target:
        value = min(hi, value * 2)
    low = max(lo, value // 2)
    while low + 1 < value:
        mid = (low + value) // 2
        if recall(search(xq, mid), truth) >= target:
            value = mid
        else:
            low = mid
    return value


def timed_qps(search, xq: np.ndarray, repeats: int = 2) -> tuple[float, np.ndarray]:
    best, found = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        found = search(xq)
        best = min(best, time.perf_counter() - start)
    return len(xq) / best, found


def file_size(save) -> int:
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        path = Path(tmp) / "index"
        save(str(path))
        return path.stat().st_size


# Flat answers exactly (recall 1 by construction) at ~0.1 s per query at 1M on one thread:
# its QPS is timed once on this many queries rather than twice on all 10k.
FLAT_TIMED_QUERIES = 1000


def run_mmsearch(kind, xb, ids, tq, xq, truth, target, k):
    """Build (timed), tune (timed), then search on one thread: `auto` is what `mmsearch
    index` would build for this collection, so its build + tune seconds are the 1M build."""
    import faiss

    from retrieval.index import FaissIndex
    from retrieval.index.tuning import is_approximate, tune

    faiss.omp_set_num_threads(BUILD_THREADS)
    start = time.perf_counter()
    index = FaissIndex.build(xb, ids, kind)
    build_s = time.perf_counter() - start
    tuning, start = None, time.perf_counter()
    if is_approximate(index.faiss_index):
        tuning = tune(
            index,
            xb,
            ids,
            target_recall=target,
            text_queries=tq,
            n_queries=500,
            n_text_queries=len(tq),
        )
    tune_s = time.perf_counter() - start
    faiss.omp_set_num_threads(1)
    if tuning is None:
        qps, found = timed_qps(lambda q: index.search(q, k)[1], xq[:FLAT_TIMED_QUERIES], 1)
        rec = recall(found, truth[:FLAT_TIMED_QUERIES])
    else:
        qps, found = timed_qps(lambda q: index.search(q, k)[1], xq)
        rec = recall(found, truth)
    size = file_size(lambda p: index.save(Path(p)))
    params = (
        " ".join(f"{key}={value}" for key, value in tuning.params.to_dict().items())
        if (tuning)
        else ""
    )
    tuned = f" (tuning: {tuning.recall_at_10:.3f})" if tuning else ""
    name = f"mmsearch {kind} ({index.factory}) {params}{tuned}".strip().replace("  ", " ")
    return name, build_s, tune_s, size, rec, qps


def run_hnswlib(xb, tq, tq_truth, xq, truth, target, k, m, ef_construction):
    import hnswlib

    start = time.perf_counter()
    index = hnswlib.Index(space="ip", dim=xb.shape[1])
    index.init_index(max_elements=len(xb), M=m, ef_construction=ef_construction, random_seed=1)
    index.add_items(xb, num_threads=BUILD_THREADS)
    build_s = time.perf_counter() - start

    def search(q, ef):
        index.set_ef(max(ef, k))
        return index.knn_query(q, k, num_threads=1)[0]

    start = time.perf_counter()
    ef = smallest_width(search, tq, tq_truth, target, k, 4096)
    tune_s = time.perf_counter() - start
    qps, found = timed_qps(lambda q: search(q, ef), xq)
    size = file_size(index.save_index)
    name = f"hnswlib M{m} efC{ef_construction} ef={ef}"
    return name, build_s, tune_s, size, recall(found, truth), qps


def run_usearch(xb, tq, tq_truth, xq, truth, target, k, m, ef_construction):
    from usearch.index import Index

    start = time.perf_counter()
    index = Index(
        ndim=xb.shape[1], metric="ip", dtype="f32", connectivity=m, expansion_add=ef_construction
    )
    index.add(np.arange(len(xb)), xb, threads=BUILD_THREADS)
    build_s = time.perf_counter() - start

    def search(q, ef):
        index.expansion_search = max(ef, k)
        return index.search(q, k, threads=1).keys

    start = time.perf_counter()
    ef = smallest_width(search, tq, tq_truth, target, k, 4096)
    tune_s = time.perf_counter() - start
    qps, found = timed_qps(lambda q: search(q, ef), xq)
    size = file_size(index.save)
    name = f"usearch M{m} efC{ef_construction} ef={ef}"
    return name, build_s, tune_s, size, recall(found, truth), qps


def evict(path: Path) -> None:
    """Drop a file's clean pages from the page cache, so the next open is cold."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def cold_open(n: int, dim: int, k: int) -> None:
    """Cold open + first query of an n-vector IVF index, memory-mapped vs full load."""
    import faiss

    from retrieval.index import FaissIndex
    from retrieval.index.tuning import SearchParams

    faiss.omp_set_num_threads(BUILD_THREADS)
    xb, _, xq = clip_like(n, 10, dim, seed=11)
    start = time.perf_counter()
    # IVF1024 keeps this build to ~1 minute on 2 cores; the open cost does not depend on nlist
    index = FaissIndex.build(xb, np.arange(n), "IVF1024,Flat")
    print(f"cold-open index {index.factory}: built in {time.perf_counter() - start:.1f} s")
    del xb
    faiss.omp_set_num_threads(1)
    params = SearchParams(nprobe=32)
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        path = Path(tmp) / "cold.faiss"
        index.save(path)
        del index
        print(f"file {path.stat().st_size / 2**30:.2f} GiB")
        results = {}
        for _ in range(2):
            for mmap in (False, True):
                evict(path)
                start = time.perf_counter()
                loaded = FaissIndex.load(path, mmap=mmap, search_params=params)
                found = loaded.search(xq[:1], k)[1]
                results.setdefault(mmap, []).append((time.perf_counter() - start, found))
                del loaded
        full = min(t for t, _ in results[False])
        mapped = min(t for t, _ in results[True])
        same = all(np.array_equal(results[True][0][1], f) for _, f in results[False])
        print("\n| open + first query (page cache dropped) | seconds | vs full load |")
        print("|---|---:|---:|")
        print(f"| full load (faiss.read_index) | {full:.3f} | 1.0x |")
        print(f"| memory-mapped (load(mmap=True)) | {mapped:.4f} | {full / mapped:.0f}x faster |")
        print(f"identical first results: {same}")


def dataset_args(parser: argparse.ArgumentParser) -> None:
    """The vector set and target of ann.py (ann_matched.py and tuning_coverage.py shared it
    until they were retired once answered: `git show 69f615e:benchmarks/ann_matched.py`)."""
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--target", type=float, default=0.95)


BUILD_THREADS = 1
MMSEARCH_TYPES = ("auto", "flat", "ivf", "hnsw", "ivfpq")
PEERS = ("hnswlib", "usearch")


def main(argv: list[str] | None = None) -> None:
    global BUILD_THREADS
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    dataset_args(parser)
    parser.add_argument(
        "--indexes",
        nargs="+",
        default=["auto", "flat", "ivf", "hnsw", "ivfpq", "hnswlib", "usearch"],
        metavar="INDEX",
        help=f"run in this order, each row printed as soon as it is measured: "
        f"{', '.join(MMSEARCH_TYPES + PEERS)} or a faiss factory string such as IVF4000,Flat",
    )
    parser.add_argument(
        "--hnsw-m", type=int, default=32, help="links per node, for faiss HNSW and the peers"
    )
    parser.add_argument(
        "--ef-construction",
        type=int,
        default=None,
        help="efConstruction for faiss HNSW and the peers alike (default: mmsearch's 64)",
    )
    parser.add_argument(
        "--tune-queries",
        type=int,
        default=TUNE_QUERIES,
        help="held-apart queries every library tunes its search width on (mmsearch: all of them)",
    )
    parser.add_argument("--mean-cosine", type=float, default=None, help="e.g. 0.5, as CLIP")
    parser.add_argument("--build-threads", type=int, default=1, help="searches always use 1")
    parser.add_argument("--cold-n", type=int, default=1_000_000, help="0 skips the cold open")
    args = parser.parse_args(argv)
    BUILD_THREADS = args.build_threads
    print(f"reproduce: python -m benchmarks.ann {' '.join(argv)}".rstrip(), flush=True)
    if args.n:
        compare(args)
    if args.cold_n:
        with contextlib.suppress(KeyboardInterrupt):
            cold_open(args.cold_n, args.dim, args.k)


def compare(args: argparse.Namespace) -> None:
    """One row per index, printed as soon as it is measured (a long run can be cut short)."""
    from retrieval.index import faiss_index, policy

    # The same graph parameters for faiss HNSW as for hnswlib and usearch, so build times
    # and search widths compare like for like.
    policy.HNSW_M = args.hnsw_m
    ef_construction = args.ef_construction or faiss_index.HNSW_EF_CONSTRUCTION
    faiss_index.HNSW_EF_CONSTRUCTION = ef_construction
    xb, tq, xq = clip_like(
        args.n, args.queries, args.dim, mean_cosine=args.mean_cosine, tune_queries=args.tune_queries
    )
    ids = np.arange(args.n, dtype=np.int64)
    import faiss

    faiss.omp_set_num_threads(BUILD_THREADS)
    start = time.perf_counter()
    truth, tq_truth = truth_of(xb, xq, args.k), truth_of(xb, tq, args.k)
    cos = float(np.mean(xb[:1000] @ xb[1000:2000].T))
    print(
        f"n={args.n:,} dim={args.dim} queries={args.queries:,} target={args.target} "
        f"mean pairwise cosine={cos:.2f}; searches on 1 thread, builds on {BUILD_THREADS}; "
        f"HNSW M{args.hnsw_m} efConstruction {ef_construction} for faiss and peers; "
        f"exact truth in {time.perf_counter() - start:.0f} s"
    )
    print(
        "\n| index (tuned params) | build s | tune s | bytes/vector | recall@10 | QPS (1 thread) |"
    )
    print("|---|---:|---:|---:|---:|---:|", flush=True)
    rows = []
    for name in args.indexes:
        if name in PEERS:
            run = run_hnswlib if name == "hnswlib" else run_usearch
            row = run(
                xb, tq, tq_truth, xq, truth, args.target, args.k, args.hnsw_m, ef_construction
            )
        else:
            row = run_mmsearch(name, xb, ids, tq, xq, truth, args.target, args.k)
        label, build_s, tune_s, size, rec, qps = row
        print(
            f"| {label} | {build_s:.1f} | {tune_s:.1f} | {size / args.n:,.0f} | {rec:.3f} "
            f"| {qps:,.0f} |",
            flush=True,
        )
        rows.append(row)
    base = next((r for r in rows if r[0].startswith("hnswlib")), rows[0])
    print(
        f"\nQPS vs {base[0]}: "
        + ", ".join(f"{r[0].split(' (')[0]} {r[5] / base[5]:.2f}x" for r in rows)
    )


if __name__ == "__main__":
    main()
