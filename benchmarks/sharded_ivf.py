"""Sharded IVF-PQ with on-disk inverted lists (retrieval/index/ondisk.py) against the same
index built in memory, in the same run; and Ray Data's overhead per image against the
single-process `mmsearch index` on the same images.

    python -m benchmarks.sharded_ivf --n 1000000 --queries 1000 --images 48 192

Vectors: benchmarks/ann.py's CLIP-like mixture (512-d), stored as one float16 .npy on disk like
the embedding shards; each build runs in its own process, which reports its wall time and peak
RSS, so the on-disk build's memory is measured apart from the data generator's. Queries run in
another process on the memory-mapped result, one search thread; recall@10 is against exact
search. `--images` times `mmsearch index` with and without `--ray auto` (a local Ray cluster
started by the run) over the first N sample images with the tiny test model, twice per
count, so the slope separates Ray's fixed start-up from its per-image cost.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.ann import clip_like, recall, truth_of
from benchmarks.harness import peak_rss_mib

NPROBES = (16, 32, 64)


class AnonPeak:
    """Peak anonymous RSS (heap, not file pages a reader maps), sampled every 20 ms."""

    def __init__(self) -> None:
        import threading

        self.peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("RssAnon:"):
                    self.peak_kib = max(self.peak_kib, int(line.split()[1]))

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak_kib / 1024


def read_rows(path: Path, shape: tuple[int, int], offset: int, rows: np.ndarray) -> np.ndarray:
    """float32 copies of `rows` of a float16 .npy, read with seeks (no mmap, so the build's
    RSS is what it holds, not the page cache of the file)."""
    out = np.empty((len(rows), shape[1]), np.float32)
    row_bytes = shape[1] * 2
    with open(path, "rb") as handle:
        for start in range(0, len(rows), 65_536):
            chunk = rows[start : start + 65_536]
            if len(chunk) and chunk[-1] - chunk[0] + 1 == len(chunk):  # contiguous: one read
                handle.seek(offset + int(chunk[0]) * row_bytes)
                data = np.frombuffer(handle.read(len(chunk) * row_bytes), np.float16)
                out[start : start + len(chunk)] = data.reshape(len(chunk), shape[1])
                continue
            for i, row in enumerate(chunk):
                handle.seek(offset + int(row) * row_bytes)
                out[start + i] = np.frombuffer(handle.read(row_bytes), np.float16)
    return out


def worker_build(directory: Path, factory: str, shard_size: int, ondisk: bool) -> dict:
    from retrieval.index import FaissIndex
    from retrieval.index.ondisk import build_ondisk_ivf

    path = directory / "vectors.npy"
    mapped = np.load(path, mmap_mode="r")
    shape, offset = mapped.shape, int(mapped.offset)
    del mapped
    ids = np.arange(shape[0], dtype=np.int64)
    out = directory / ("ondisk" if ondisk else "memory")
    out.mkdir(exist_ok=True)
    anon = AnonPeak()
    start = time.perf_counter()
    if ondisk:
        index = build_ondisk_ivf(
            ids, lambda chunk: read_rows(path, shape, offset, chunk), shape[1],
            factory, out / "images.1.ivfdata", out / "work", shard_size=shard_size,
        )  # fmt: skip
    else:
        index = FaissIndex.build(read_rows(path, shape, offset, ids), ids, factory)
    index.save(out / "images.1.faiss")
    seconds = time.perf_counter() - start
    shutil.rmtree(out / "work", ignore_errors=True)
    files = sum(p.stat().st_size for p in out.iterdir() if p.is_file())
    return {"build_s": seconds, "peak_rss_mib": anon.stop(), "index_bytes": files}


def worker_query(directory: Path, kind: str, nprobes: tuple[int, ...] = NPROBES) -> dict:
    import faiss

    from retrieval.index import FaissIndex
    from retrieval.types import SearchParams

    faiss.omp_set_num_threads(1)
    anon = AnonPeak()
    queries = np.load(directory / "queries.npy")
    truth = np.load(directory / "truth.npy")
    start = time.perf_counter()
    index = FaissIndex.load(directory / kind / "images.1.faiss", mmap=True)
    first_hits = index.search(queries[:1], 10)
    open_s = time.perf_counter() - start
    rows = []
    for nprobe in nprobes:
        index.set_search_params(SearchParams(nprobe=nprobe))
        index.search(queries[:50], 10)  # fault in the lists the queries probe
        start = time.perf_counter()
        found = index.search(queries, 10)[1]
        seconds = time.perf_counter() - start
        qps = len(queries) / seconds
        rows.append({"nprobe": nprobe, "recall": recall(found, truth), "qps": qps})
    del first_hits
    return {
        "open_first_query_s": open_s,
        "peak_rss_mib": anon.stop(),
        "peak_rss_with_mapped_mib": peak_rss_mib(),
        "by_nprobe": rows,
    }


def run_worker(*args: str, module: str = "benchmarks.sharded_ivf") -> dict:
    """`python -m MODULE --worker ARGS...` in a fresh process (so its peak RSS is its own);
    the JSON object on its last stdout line."""
    command = [sys.executable, "-m", module, "--worker", *args]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def vector_section(args: argparse.Namespace, directory: Path) -> None:
    start = time.perf_counter()
    xb, _, xq = clip_like(args.n, args.queries, 512)
    np.save(directory / "vectors.npy", xb.astype(np.float16))
    truth = truth_of(xb.astype(np.float16).astype(np.float32), xq, 10)
    np.save(directory / "queries.npy", xq)
    np.save(directory / "truth.npy", truth)
    del xb
    seconds = time.perf_counter() - start
    print(f"generated {args.n:,} x 512 float16 (+ exact top-10) in {seconds:.0f} s")
    common = (str(directory), args.factory, str(args.shard_size))
    results = {}
    for kind in ("memory", "ondisk"):
        built = run_worker("build", *common, kind)
        queried = run_worker("query", str(directory), kind)
        results[kind] = (built, queried)
    print(f"\n{args.factory}, {args.n:,} vectors, shards of {args.shard_size:,} (on-disk build)")
    print(
        "| build | build s | build peak anon RSS MiB | index bytes | bytes/vector "
        "| open+1st query s "
        "| query peak anon / total RSS MiB | nprobe | recall@10 | QPS (1 thread) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for kind, (built, queried) in results.items():
        for row in queried["by_nprobe"]:
            print(f"| {kind} | {built['build_s']:.1f} | {built['peak_rss_mib']:.0f} | "
                  f"{built['index_bytes']:,} | {built['index_bytes'] / args.n:.1f} | "
                  f"{queried['open_first_query_s']:.3f} | {queried['peak_rss_mib']:.0f} / "
                  f"{queried['peak_rss_with_mapped_mib']:.0f} | "
                  f"{row['nprobe']} | {row['recall']:.3f} | {row['qps']:.0f} |")  # fmt: skip
    memory, ondisk = results["memory"], results["ondisk"]
    print("ratios on-disk / in-memory: "
          f"build time {ondisk[0]['build_s'] / memory[0]['build_s']:.2f}, "
          f"build peak RSS {ondisk[0]['peak_rss_mib'] / memory[0]['peak_rss_mib']:.2f}, "
          f"query peak RSS {ondisk[1]['peak_rss_mib'] / memory[1]['peak_rss_mib']:.2f}, "
          f"QPS at nprobe {NPROBES[1]} "
          f"{ondisk[1]['by_nprobe'][1]['qps'] / memory[1]['by_nprobe'][1]['qps']:.2f}")  # fmt: skip


def timed_index(images: Path, index: Path, model: str, *extra: str) -> float:
    env = dict(os.environ, MMSEARCH_BACKEND="torch", PYTHONPATH=str(Path.cwd()))
    command = [sys.executable, "-m", "retrieval", "index", str(images), "--index", str(index),
               "--model", model, "--index-type", "flat", "--batch-size", "16", "-q",
               *extra]  # fmt: skip
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - start


def ray_section(counts: list[int], directory: Path) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from testdata import SHARED_IMAGES, write_tiny_model

    model = f"local-dir:{write_tiny_model(directory / 'model')}"
    sample = sorted((SHARED_IMAGES / "images").glob("*.JPEG"))
    print("\nRay overhead, tiny model, --batch-size 16, whole `mmsearch index` process wall time")
    print("| images | single-process s | --ray auto s (local 2-CPU cluster) | extra s per image |")
    print("|---|---|---|---|")
    rows = []
    for count in counts:
        folder = directory / f"images{count}"
        folder.mkdir()
        for path in sample[:count]:
            (folder / path.name).symlink_to(path)
        single = timed_index(folder, directory / f"single{count}", model)
        distributed = timed_index(folder, directory / f"ray{count}", model, "--ray", "auto")
        rows.append((count, single, distributed))
        extra = (distributed - single) / count
        print(f"| {count} | {single:.1f} | {distributed:.1f} | {extra:.3f} |")
    if len(rows) >= 2:
        (n0, s0, r0), (n1, s1, r1) = rows[0], rows[-1]
        print(f"marginal: single {(s1 - s0) / (n1 - n0) * 1000:.1f} ms/image, ray "
              f"{(r1 - r0) / (n1 - n0) * 1000:.1f} ms/image; ray fixed start-up ~"
              f"{(r0 - s0) - (n0 * ((r1 - r0) - (s1 - s0)) / (n1 - n0)):.1f} s")  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--worker":
        kind, *rest = argv[1:]
        if kind == "build":
            out = worker_build(Path(rest[0]), rest[1], int(rest[2]), rest[3] == "ondisk")
        else:
            out = worker_query(Path(rest[0]), rest[1])
        print(json.dumps(out))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=1000)
    # 1024 lists keep k-means affordable on a shared 2-core box; see the README sizing guide
    # for the nlist mmsearch picks (4 sqrt(n)) at scale.
    parser.add_argument("--factory", default="IVF1024,PQ64x8")
    parser.add_argument("--shard-size", type=int, default=250_000)
    parser.add_argument("--images", type=int, nargs="*", default=[48, 192])
    args = parser.parse_args(argv)
    sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    import faiss

    print(f"reproduce: python -m benchmarks.sharded_ivf {' '.join(argv)}".rstrip())
    print(f"git {sha.stdout.strip()}, faiss {faiss.__version__}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f} at start (the machine is shared)")  # fmt: skip
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        if args.n:
            vector_section(args, Path(tmp))
        if args.images:
            ray_section(args.images, Path(tmp))


if __name__ == "__main__":
    main()
