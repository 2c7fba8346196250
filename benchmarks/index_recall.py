"""Recall, speed and size of each index type against exact Flat search, in one run.

    python -m benchmarks.index_recall --sizes 10000 100000

Vectors are synthetic but structured like faiss.contrib.datasets.SyntheticDataset (a
10-dimensional manifold bent into `dim` dimensions by a sine), then L2-normalised like CLIP
embeddings; i.i.d. Gaussian vectors would make every approximate index look bad.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from benchmarks.harness import recall_at_k

DEFAULT_TYPES = ("flat", "auto", "ivf", "hnsw", "ivfpq")
SINGLE_QUERIES = 200  # enough single-query calls for a stable mean, few enough to stay quick
REPEATS = 3  # report the best of 3, the usual guard against scheduler noise
FILTER_FRACTION = 0.01  # a "1% of the catalog" filter, e.g. one folder or one tag


@dataclass(frozen=True)
class Row:
    """One index type's measurements."""

    name: str
    factory: str
    build_s: float
    batch_qps: float
    single_qps: float
    filtered_qps: float
    recall: float
    bytes_per_vector: float


def make_vectors(n: int, nq: int, dim: int, seed: int = 1338) -> tuple[np.ndarray, np.ndarray]:
    """Database and query vectors, normalised, with SyntheticDataset's recipe."""
    rs = np.random.RandomState(seed)
    x = rs.normal(size=(n + nq, 10)) @ rs.rand(10, dim)
    x = np.sin(x * (rs.rand(dim) * 4 + 0.1)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x[:n], x[n:]


def best_seconds(run: Callable[[], object]) -> float:
    """Fastest of REPEATS timed runs: the first run also pays thread start-up and page faults."""
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def measure(
    name: str, xb: np.ndarray, ids: np.ndarray, xq: np.ndarray, k: int
) -> tuple[Row, np.ndarray]:
    """Build one index type and time its searches; returns the row and its top-k ids."""
    from retrieval.index import FaissIndex  # imported late so --threads can reach OpenMP

    start = time.perf_counter()
    index = FaissIndex.build(xb, ids, name)
    build_s = time.perf_counter() - start

    _, found = index.search(xq, k)
    batch_qps = len(xq) / best_seconds(lambda: index.search(xq, k))
    singles = xq[:SINGLE_QUERIES]
    single_qps = len(singles) / best_seconds(lambda: [index.search(q[None, :], k) for q in singles])
    allowed = np.random.default_rng(0).choice(ids, max(k, int(len(ids) * FILTER_FRACTION)))
    filtered_qps = len(xq) / best_seconds(lambda: index.search(xq, k, allowed_ids=allowed))

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.index"
        index.save(path)
        size = path.stat().st_size
    row = Row(
        name, index.factory, build_s, batch_qps, single_qps, filtered_qps, 0.0, size / len(xb)
    )
    return row, found


def print_table(n: int, dim: int, rows: list[Row]) -> None:
    """Print one size's results with ratios against the Flat row."""
    flat = rows[0]
    print(f"\n## n={n:,} dim={dim}")
    print(
        "| type | factory | build s | batch QPS | single QPS | 1%-filtered QPS | recall@10 "
        "| bytes/vec | build x | batch x | single x | memory x |"
    )
    print("|" + "---|" * 12)
    for r in rows:
        print(
            f"| {r.name} | {r.factory} | {r.build_s:.2f} | {r.batch_qps:,.0f} | "
            f"{r.single_qps:,.0f} | {r.filtered_qps:,.0f} | {r.recall:.3f} | "
            f"{r.bytes_per_vector:,.0f} | {r.build_s / flat.build_s:.1f} | "
            f"{r.batch_qps / flat.batch_qps:.2f} | {r.single_qps / flat.single_qps:.2f} | "
            f"{r.bytes_per_vector / flat.bytes_per_vector:.3f} |"
        )


def print_environment(argv: list[str]) -> None:
    """Print versions, cores and the command that reproduces this run."""
    versions = []
    for package in ("faiss-cpu", "faiss-gpu", "faiss-gpu-cu12", "numpy"):
        try:
            versions.append(f"{package} {importlib.metadata.version(package)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        sha = "unknown"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        models = [line for line in lines if line.startswith("model name")]
        cpu = models[0].split(":", 1)[1].strip() if models else cpu
    print(f"environment: {', '.join(versions)}; python {platform.python_version()}; ", end="")
    threads = os.environ.get("OMP_NUM_THREADS", "all")
    print(f"{cores} cores ({cpu}), faiss threads: {threads}; git {sha}")
    print(f"reproduce: python -m benchmarks.index_recall {' '.join(argv)}".rstrip())


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark for each requested size and print the tables."""
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=1000, help="batch size for batch QPS")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--types", nargs="+", default=list(DEFAULT_TYPES))
    parser.add_argument("--threads", type=int, help="OpenMP threads for faiss (default: all)")
    args = parser.parse_args(argv)
    if args.threads:  # read once when faiss loads OpenMP, so it must be set before the import
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    types = ["flat"] + [t for t in args.types if t != "flat"]  # Flat is the reference

    print_environment(argv)
    for n in args.sizes:
        xb, xq = make_vectors(n, args.queries, args.dim)
        ids = np.arange(n, dtype=np.int64) * 2 + 1  # non-contiguous, like a filtered catalog
        rows: list[Row] = []
        truth = np.empty(0)
        for name in types:
            row, found = measure(name, xb, ids, xq, args.k)
            truth = found if name == "flat" else truth
            rows.append(replace(row, recall=recall_at_k(found, truth)))
            print(f"  done {name} at n={n:,}", file=sys.stderr)
        print_table(n, args.dim, rows)


if __name__ == "__main__":
    main()
