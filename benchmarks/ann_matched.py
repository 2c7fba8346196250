"""Matched-recall HNSW comparison at 1M: mmsearch's tuned faiss HNSW against hnswlib, one
search thread, the same graph parameters, indexes cached on disk so a rerun does not rebuild.

    python -m benchmarks.ann_matched --n 1000000 --mean-cosine 0.5 --cache /work/bench-ann

benchmarks/ann.py tunes each library once and times it once; at 1M its rows landed at
slightly different recalls (0.948 vs 0.952), which is not a like-for-like speed comparison.
This one:
1. builds (or loads from --cache) faiss HNSW through `FaissIndex.build("hnsw")` and hnswlib,
   both M/efConstruction as given, on --build-threads;
2. runs mmsearch's own tuner (`retrieval.index.tuning.tune`) on the database's own vectors
   plus --tune-queries held-apart text-like queries, and reports the efSearch it chose and the
   recall that efSearch reaches on the 10,000 held-out queries;
3. sweeps efSearch (faiss) and ef (hnswlib) on the held-out queries, and for each takes the
   smallest width whose held-out recall@10 reaches --target;
4. times those settings (and the tuner's) in interleaved rounds, the libraries alternating
   within each round, and reports the median and best QPS of --rounds rounds and the ratio.

The data is benchmarks.ann.clip_like, deterministic by seed, so a cached index matches the
regenerated vectors; each cached index is checked against them (count and stored vector 0).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.ann import clip_like, dataset_args, recall, truth_of


def data_key(args: argparse.Namespace) -> str:
    cos = "default" if args.mean_cosine is None else f"{args.mean_cosine:g}"
    return f"n{args.n}_d{args.dim}_cos{cos}_seed{args.seed}"


def cached_truth(path: Path, xb: np.ndarray, xq: np.ndarray, k: int) -> np.ndarray:
    """Exact top-k of xq, read from `path` when a previous run saved it for these queries."""
    if path.is_file():
        truth = np.load(path)
        if truth.shape == (len(xq), k):
            return truth
    truth = truth_of(xb, xq, k)
    np.save(path, truth)
    return truth


def check_cached(kind: str, n: int, first: np.ndarray, xb: np.ndarray) -> None:
    """A cached index must hold these vectors: same count, same vector 0."""
    if n != len(xb) or not np.allclose(first, xb[0], atol=1e-6):
        raise SystemExit(
            f"error: the cached {kind} index does not match the generated vectors "
            f"({n:,} vs {len(xb):,} vectors, or vector 0 differs): delete it from --cache"
        )


def faiss_hnsw(args: argparse.Namespace, xb: np.ndarray, cache: Path):
    """FaissIndex built as `mmsearch index --index-type hnsw` would, with the given M/efC."""
    import faiss

    from retrieval.index import FaissIndex, faiss_index, policy

    policy.HNSW_M, faiss_index.HNSW_EF_CONSTRUCTION = args.hnsw_m, args.ef_construction
    path = cache / f"{data_key(args)}_faiss_HNSW{args.hnsw_m}_efc{args.ef_construction}.faiss"
    if path.is_file():
        start = time.perf_counter()
        index = FaissIndex.load(path)
        print(f"faiss {index.factory}: loaded from {path} in {time.perf_counter() - start:.0f} s")
        check_cached("faiss", index.ntotal, index._cpu.reconstruct(0), xb)
        return index, None
    faiss.omp_set_num_threads(args.build_threads)
    start = time.perf_counter()
    index = FaissIndex.build(xb, np.arange(len(xb)), "hnsw")
    build_s = time.perf_counter() - start
    index.save(path)
    print(f"faiss {index.factory}: built in {build_s:.0f} s, saved to {path}", flush=True)
    return index, build_s


def hnswlib_index(args: argparse.Namespace, xb: np.ndarray, cache: Path):
    import hnswlib

    path = cache / f"{data_key(args)}_hnswlib_M{args.hnsw_m}_efc{args.ef_construction}.bin"
    index = hnswlib.Index(space="ip", dim=xb.shape[1])
    if path.is_file():
        start = time.perf_counter()
        index.load_index(str(path), max_elements=len(xb))
        print(f"hnswlib: loaded from {path} in {time.perf_counter() - start:.0f} s")
        check_cached("hnswlib", index.get_current_count(), index.get_items([0])[0], xb)
        return index, None
    start = time.perf_counter()
    index.init_index(
        max_elements=len(xb), M=args.hnsw_m, ef_construction=args.ef_construction, random_seed=1
    )
    index.add_items(xb, np.arange(len(xb)), num_threads=args.build_threads)
    build_s = time.perf_counter() - start
    index.save_index(str(path))
    print(f"hnswlib: built in {build_s:.0f} s, saved to {path}", flush=True)
    return index, build_s


def smallest_reaching(recall_at, target: float, lo: int, hi: int) -> int | None:
    """Smallest width in [lo, hi] whose held-out recall reaches target (recall grows with
    width): double, then bisect. None when even hi stays below."""
    value = lo
    while value < hi and recall_at(value) < target:
        value = min(hi, value * 2)
    if recall_at(value) < target:
        return None
    low = max(lo, value // 2)
    while low + 1 < value:
        mid = (low + value) // 2
        if recall_at(mid) >= target:
            value = mid
        else:
            low = mid
    return value


def cached_set_args(parser: argparse.ArgumentParser) -> None:
    """The vector set and the HNSW build whose cached copies this and tuning_coverage.py share."""
    dataset_args(parser)
    parser.add_argument("--mean-cosine", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--hnsw-m", type=int, default=16)
    parser.add_argument("--ef-construction", type=int, default=100)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cached_set_args(parser)
    parser.add_argument("--tune-queries", type=int, default=2000, help="text-like, held apart")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds")
    parser.add_argument("--build-threads", type=int, default=2, help="searches always use 1")
    parser.add_argument("--cache", type=Path, default=Path("/work/bench-ann"))
    parser.add_argument(
        "--extra-ef",
        type=int,
        nargs="*",
        default=[],
        help="more faiss efSearch values to time, e.g. what the tuner picks on other samples "
        "(benchmarks/tuning_coverage.py)",
    )
    parser.add_argument(
        "--extra-hnswlib-ef", type=int, nargs="*", default=[], help="more hnswlib ef to time"
    )
    args = parser.parse_args(argv)
    print(f"reproduce: python -m benchmarks.ann_matched {' '.join(argv)}".rstrip(), flush=True)
    import faiss

    from retrieval.index.tuning import tune
    from retrieval.types import SearchParams

    args.cache.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    xb, tq, xq = clip_like(
        args.n, args.queries, args.dim, args.seed, args.mean_cosine, args.tune_queries
    )
    faiss.omp_set_num_threads(args.build_threads)
    key = data_key(args)
    truth = cached_truth(args.cache / f"{key}_truth_q{args.queries}.npy", xb, xq, args.k)
    print(
        f"n={args.n:,} dim={args.dim} held-out queries={args.queries:,} tuning text queries="
        f"{len(tq):,} mean pairwise cosine={float(np.mean(xb[:1000] @ xb[1000:2000].T)):.2f}; "
        f"data + truth in {time.perf_counter() - start:.0f} s",
        flush=True,
    )

    ours, faiss_build_s = faiss_hnsw(args, xb, args.cache)
    faiss.omp_set_num_threads(args.build_threads)
    start = time.perf_counter()
    tuning = tune(
        ours, xb, np.arange(len(xb)), target_recall=args.target, text_queries=tq,
        n_text_queries=len(tq),
    )  # fmt: skip
    tune_s = time.perf_counter() - start
    tuned_ef = tuning.params.ef_search
    print(
        f"mmsearch tune: efSearch={tuned_ef} (recall {tuning.recall_at_10:.4f} on its "
        f"{tuning.queries:,} queries, reached={tuning.reached}) in {tune_s:.0f} s",
        flush=True,
    )
    del xb  # both indexes hold their own copy; keeps the peak near 2 x 2.2 GB
    theirs, hnswlib_build_s = hnswlib_index(args, _regenerate_xb(args), args.cache)

    faiss.omp_set_num_threads(1)
    swept: dict[str, dict[int, float]] = {"faiss": {}, "hnswlib": {}}

    def search_ours(ef: int) -> np.ndarray:
        ours.set_search_params(SearchParams(ef_search=ef))
        return ours.search(xq, args.k)[1]

    def search_theirs(ef: int) -> np.ndarray:
        theirs.set_ef(max(ef, args.k))
        return theirs.knn_query(xq, args.k, num_threads=1)[0]

    searches = {"faiss": search_ours, "hnswlib": search_theirs}

    def held_out_recall(lib: str, ef: int) -> float:
        if ef not in swept[lib]:
            swept[lib][ef] = recall(searches[lib](ef), truth)
        return swept[lib][ef]

    matched = {
        lib: smallest_reaching(lambda ef, lib=lib: held_out_recall(lib, ef), args.target, 16, 512)
        for lib in searches
    }
    held_out_recall("faiss", tuned_ef)
    for lib, ef in matched.items():
        if ef is not None:  # the neighbours of the matched width, to show the curve's slope
            held_out_recall(lib, ef - 1)
    for lib in searches:
        curve = ", ".join(f"{ef}: {r:.4f}" for ef, r in sorted(swept[lib].items()))
        print(f"{lib} held-out recall@10 by ef: {curve}", flush=True)

    rows = [("mmsearch hnsw, tuner's efSearch", "faiss", tuned_ef)]
    rows += [(f"{lib} smallest ef reaching {args.target} held-out", lib, matched[lib])
             for lib in ("faiss", "hnswlib") if matched[lib] is not None]  # fmt: skip
    rows += [(f"faiss HNSW{args.hnsw_m}, efSearch given", "faiss", ef) for ef in args.extra_ef]
    rows += [(f"hnswlib M{args.hnsw_m}, ef given", "hnswlib", ef) for ef in args.extra_hnswlib_ef]
    qps: dict[int, list[float]] = {i: [] for i in range(len(rows))}
    for _ in range(args.rounds):
        for i, (_, lib, ef) in enumerate(rows):  # alternate libraries within each round
            start = time.perf_counter()
            searches[lib](ef)
            qps[i].append(len(xq) / (time.perf_counter() - start))
    load = Path("/proc/loadavg").read_text().split()[:3]
    base = next((i for i, r in enumerate(rows) if r[1] == "hnswlib"), 0)
    base_qps = statistics.median(qps[base])
    print(f"\nload average after timing: {' '.join(load)}; builds: faiss {faiss_build_s}, "
          f"hnswlib {hnswlib_build_s} s (None: cached)")  # fmt: skip
    print(
        f"\n| index, ef | held-out recall@10 | QPS median of {args.rounds} (1 thread) "
        f"| best | vs hnswlib (median) |"
    )
    print("|---|---:|---:|---:|---:|")
    for i, (label, lib, ef) in enumerate(rows):
        med = statistics.median(qps[i])
        print(
            f"| {label}: {'efSearch' if lib == 'faiss' else 'ef'}={ef} | "
            f"{held_out_recall(lib, ef):.4f} | {med:,.0f} | {max(qps[i]):,.0f} "
            f"| {med / base_qps:.2f}x |"
        )


def _regenerate_xb(args: argparse.Namespace) -> np.ndarray:
    """The database vectors again (deterministic by seed), only needed to build or check
    hnswlib; regenerating costs seconds and avoids holding a third 2 GB copy."""
    return clip_like(args.n, 0, args.dim, args.seed, args.mean_cosine, args.tune_queries)[0]


if __name__ == "__main__":
    main()
