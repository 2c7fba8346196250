"""The sharded on-disk IVF build at 10M x 512 within a few GiB per process: vectors generated
shard by shard to float16 files, exact top-10 by streaming over the shards, the build of
retrieval/index/ondisk.py, and queries on the memory-mapped result in a separate process.

    python -m benchmarks.sharded_scale --n 10000000 --dir /work/bench-scale \\
        --factory IVF4096,PQ64x8

Vectors: benchmarks/ann.py's CLIP-like mixture (512-d); shard s is drawn from its own seed
(SeedSequence [seed, s]), so any n is the first n / shard-size shards of the same files and a
1M run reuses a 10M run's first shards. No step holds the collection in RAM: generation holds
one shard per worker (2 workers), ground truth one shard plus the running top-10, the build
the training sample plus 2 shards (ondisk.py's DEFAULT_PARALLEL). Every step leaves its files
under --dir and is skipped when they exist, so a killed run resumes (the build from its
finished shard indexes). Each step runs in its own process, which reports its wall time and
peak anonymous RSS (benchmarks/sharded_ivf.py's AnonPeak: heap, not page cache).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from benchmarks import sharded_ivf
from benchmarks.ann import ClipMixture
from benchmarks.sharded_ivf import AnonPeak, read_rows, worker_query
from retrieval.files import atomic_path

DIM = 512
SEED = 7
K = 10
# SeedSequence key of the queries: far above any shard number, so they never share a stream.
QUERY_STREAM = 1 << 30
# Shards generated at once, one process each: numpy's draws are single-threaded.
GENERATE_WORKERS = 2


def shard_path(directory: Path, shard_size: int, number: int) -> Path:
    """The float16 file of shard `number`; the shard size is in the name because it decides
    which rows a shard seed draws."""
    return directory / f"vectors-s{shard_size}-{number:05d}.npy"


def shard_count(n: int, shard_size: int) -> int:
    return (n + shard_size - 1) // shard_size


def shard_rows(n: int, shard_size: int, number: int) -> int:
    return min(shard_size, n - number * shard_size)


def mixture() -> ClipMixture:
    return ClipMixture.of(np.random.default_rng(SEED), DIM)


def draw_shard(number: int, rows: int) -> np.ndarray:
    """Shard `number`'s `rows` database vectors (float16), the same for every n."""
    rng = np.random.default_rng([SEED, number])
    return mixture().draw(rng, rows, query=False).astype(np.float16)


def draw_queries(count: int) -> np.ndarray:
    return mixture().draw(np.random.default_rng([SEED, QUERY_STREAM]), count, query=True)


def save_atomic(path: Path, array: np.ndarray) -> None:
    """np.save through retrieval's atomic_path: a killed run never leaves a short shard."""
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.save(handle, array)


def load_float32(path: Path) -> np.ndarray:
    return np.load(path).astype(np.float32)


def worker_generate(directory: Path, n: int, shard_size: int, worker: int, workers: int) -> dict:
    """Write this worker's missing shards (every `workers`-th from `worker`)."""
    anon = AnonPeak()
    start = time.perf_counter()
    made = 0
    for number in range(worker, shard_count(n, shard_size), workers):
        path = shard_path(directory, shard_size, number)
        if not path.is_file():
            save_atomic(path, draw_shard(number, shard_size))
            made += 1
    return {"seconds": time.perf_counter() - start, "shards": made, "peak_rss_mib": anon.stop()}


def top_k_merge(
    scores: np.ndarray, ids: np.ndarray, more_scores: np.ndarray, more_ids: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The k best (highest inner product) of two per-query result lists, best first; ties
    keep the earlier list's entry first, as one exact search over both would (lower id)."""
    all_scores = np.hstack([scores, more_scores])
    all_ids = np.hstack([ids, more_ids])
    order = np.argsort(-all_scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(all_scores, order, 1), np.take_along_axis(all_ids, order, 1)


def streamed_truth(
    queries: np.ndarray, shards: list[np.ndarray] | list[Path], k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by inner product over shards visited one at a time (arrays, or float16
    .npy files loaded one by one); ids are row positions in the concatenation."""
    import faiss

    scores = np.full((len(queries), k), -np.inf, np.float32)
    ids = np.full((len(queries), k), -1, np.int64)
    offset = 0
    for shard in shards:
        vectors = load_float32(shard) if isinstance(shard, Path) else shard
        found_scores, found = faiss.knn(queries, vectors, k, metric=faiss.METRIC_INNER_PRODUCT)
        scores, ids = top_k_merge(scores, ids, found_scores, found + offset, k)
        offset += len(vectors)
        del vectors
    return scores, ids


def worker_truth(directory: Path, run: Path, n: int, shard_size: int, queries: int) -> dict:
    anon = AnonPeak()
    start = time.perf_counter()
    xq = draw_queries(queries)
    shards = [shard_path(directory, shard_size, s) for s in range(shard_count(n, shard_size))]
    truth = streamed_truth(xq, shards, K)[1]
    np.save(run / "queries.npy", xq)
    save_atomic(run / "truth.npy", truth)
    return {"seconds": time.perf_counter() - start, "peak_rss_mib": anon.stop()}


def shard_reader(directory: Path, shard_size: int):
    """ids (global row positions, ascending) -> float32 rows, read with seeks from the shard
    files (no mmap, so the build's RSS is what it holds, not the files' page cache)."""
    first = np.load(shard_path(directory, shard_size, 0), mmap_mode="r")
    offset = int(first.offset)
    del first

    def read(ids: np.ndarray) -> np.ndarray:
        out = np.empty((len(ids), DIM), np.float32)
        numbers = ids // shard_size
        for number in np.unique(numbers):
            where = np.flatnonzero(numbers == number)
            path = shard_path(directory, shard_size, int(number))
            rows = ids[where] - number * shard_size
            out[where] = read_rows(path, (shard_size, DIM), offset, rows)
        return out

    return read


def worker_build(directory: Path, run: Path, n: int, shard_size: int, factory: str) -> dict:
    from retrieval.index.ondisk import build_ondisk_ivf

    out = run / factory
    work = out / "work"
    out.mkdir(parents=True, exist_ok=True)
    anon = AnonPeak()
    start = time.time()
    ids = np.arange(n, dtype=np.int64)
    index = build_ondisk_ivf(
        ids, shard_reader(directory, shard_size), DIM, factory, out / "images.1.ivfdata", work,
        shard_size=shard_size,
    )  # fmt: skip
    index.save(out / "images.1.faiss")
    end = time.time()
    # Phase times from the files each phase leaves (exact for a run that did not resume).
    trained = (work / "trained.index").stat().st_mtime
    last_shard = max(p.stat().st_mtime for p in work.glob("shard-*.index"))
    shutil.rmtree(work)
    files = sum(p.stat().st_size for p in out.iterdir() if p.is_file())
    return {
        "build_s": end - start,
        "train_s": trained - start,
        "add_s": last_shard - trained,
        "merge_s": end - last_shard,
        "peak_rss_mib": anon.stop(),
        "index_bytes": files,
    }


def run_worker(*args: str) -> dict:
    return sharded_ivf.run_worker(*args, module="benchmarks.sharded_scale")


def generate(args: argparse.Namespace) -> dict:
    """Both generator processes at once; returns the slower one's time, the larger peak."""
    command = [sys.executable, "-m", "benchmarks.sharded_scale", "--worker", "generate",
               str(args.dir), str(args.n), str(args.shard_size)]  # fmt: skip
    workers = [
        subprocess.Popen([*command, str(w), str(GENERATE_WORKERS)], stdout=subprocess.PIPE)
        for w in range(GENERATE_WORKERS)
    ]
    results = []
    for worker in workers:
        stdout = worker.communicate()[0].decode()
        if worker.returncode != 0:
            raise SystemExit(f"generator failed (exit {worker.returncode})")
        results.append(json.loads(stdout.strip().splitlines()[-1]))
    return {
        "seconds": max(r["seconds"] for r in results),
        "shards": sum(r["shards"] for r in results),
        "peak_rss_mib": max(r["peak_rss_mib"] for r in results),
    }


def cached(path: Path, step) -> dict:
    """A step's result, from `path` when an earlier run finished it (files kept)."""
    if path.is_file():
        return {**json.loads(path.read_text()), "reused": True}
    result = step()
    path.write_text(json.dumps(result))
    return result


def report(args: argparse.Namespace) -> None:
    args.dir.mkdir(parents=True, exist_ok=True)
    run = args.dir / f"n{args.n}-q{args.queries}"
    run.mkdir(exist_ok=True)
    made = generate(args)
    print(f"generated {made['shards']} shards of {args.shard_size:,} in {made['seconds']:.0f} s "
          f"(peak anon RSS {made['peak_rss_mib']:.0f} MiB per generator)", flush=True)  # fmt: skip

    def truth_step() -> dict:
        return cached(run / "truth.json", lambda: run_worker(
            "truth", str(args.dir), str(run), str(args.n), str(args.shard_size), str(args.queries)
        ))  # fmt: skip

    def build_step() -> dict:
        return cached(run / args.factory / "build.json", lambda: run_worker(
            "build", str(args.dir), str(run), str(args.n), str(args.shard_size), args.factory
        ))  # fmt: skip

    # --overlap runs the exact search beside the build (two processes): on a shared box whose
    # other jobs leave each process a fraction of a core, that halves the wall time of the
    # two, at the price of each one's time being measured under the other's load.
    with ThreadPoolExecutor(2 if args.overlap else 1) as pool:
        truth_future = pool.submit(truth_step)
        built_future = pool.submit(build_step)
        truth, built = truth_future.result(), built_future.result()
    print(f"exact top-{K} of {args.queries} queries, streamed over the shards: "
          f"{truth['seconds']:.0f} s, peak anon RSS {truth['peak_rss_mib']:.0f} MiB"
          f"{' (beside the build)' if args.overlap else ''}", flush=True)  # fmt: skip
    print(f"build {args.factory}: {json.dumps(built)}", flush=True)
    nprobes = ",".join(str(p) for p in args.nprobe)
    queried = run_worker("query", str(run), args.factory, nprobes)
    (run / args.factory / "query.json").write_text(json.dumps(queried))
    print(f"\n{args.factory}, {args.n:,} x {DIM} vectors, shards of {args.shard_size:,}, "
          f"{args.queries} queries, lists on disk (mmap)")  # fmt: skip
    print(f"build {built['build_s']:.0f} s (train {built['train_s']:.0f}, add "
          f"{built['add_s']:.0f}, merge + save {built['merge_s']:.0f}), build peak anon RSS "
          f"{built['peak_rss_mib']:.0f} MiB, index {built['index_bytes']:,} bytes "
          f"({built['index_bytes'] / args.n:.1f} B/vector); open + 1st query "
          f"{queried['open_first_query_s']:.3f} s; query peak anon / total RSS "
          f"{queried['peak_rss_mib']:.0f} / "
          f"{queried['peak_rss_with_mapped_mib']:.0f} MiB")  # fmt: skip
    print("| nprobe | recall@10 | QPS (1 thread) |\n|---|---|---|")
    for row in queried["by_nprobe"]:
        print(f"| {row['nprobe']} | {row['recall']:.3f} | {row['qps']:.0f} |")


def load_average() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--worker":
        kind, *rest = argv[1:]
        if kind == "generate":
            out = worker_generate(Path(rest[0]), *(int(a) for a in rest[1:]))
        elif kind == "truth":
            out = worker_truth(Path(rest[0]), Path(rest[1]), *(int(a) for a in rest[2:]))
        elif kind == "build":
            out = worker_build(Path(rest[0]), Path(rest[1]), int(rest[2]), int(rest[3]), rest[4])
        else:
            nprobes = tuple(int(p) for p in rest[2].split(","))
            out = worker_query(Path(rest[0]), rest[1], nprobes)
        print(json.dumps(out))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000_000)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--dir", type=Path, default=Path("/work/bench-scale"))
    parser.add_argument("--factory", default="IVF4096,PQ64x8")
    parser.add_argument("--shard-size", type=int, default=500_000)
    parser.add_argument("--overlap", action="store_true", help="exact search beside the build")
    parser.add_argument("--nprobe", type=int, nargs="+", default=[16, 32, 64, 128])
    args = parser.parse_args(argv)
    if args.n % args.shard_size:
        parser.error(f"--n {args.n} must be a multiple of --shard-size {args.shard_size}")
    sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    import faiss

    print(f"reproduce: python -m benchmarks.sharded_scale {' '.join(argv)}".rstrip())
    print(f"git {sha.stdout.strip()}, faiss {faiss.__version__}, {os.cpu_count()} CPUs, "
          f"load average {load_average()} at start", flush=True)  # fmt: skip
    start = time.perf_counter()
    report(args)
    print(f"whole run {time.perf_counter() - start:.0f} s, load average {load_average()} at end")


if __name__ == "__main__":
    main()
