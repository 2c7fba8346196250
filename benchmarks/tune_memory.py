"""Peak memory of recall tuning after a sharded on-disk build: `tune_streamed` (the catalog read
in chunks, what `IndexStore` runs for on-disk lists) against `tune` (every vector read into RAM
first, what it ran before), on the same memory-mapped index, in the same run.

    python -m benchmarks.tune_memory --n 1000000

Vectors: benchmarks/ann.py's CLIP-like mixture (512-d) stored as one float16 .npy, plus 500
text-like queries as the store passes them (its sampled captions). The index (`--factory`,
default IVF1024,SQ8, lists on disk) is built once; then each tuning runs in a fresh process
(alternating, `--rounds` times each) that opens the index memory-mapped, measures its baseline
anonymous RSS, tunes, and reports the peak anonymous RSS above that baseline (file pages of the
mapped index and of the vector file are page cache, not the process's), its wall time and what
it chose. Both must choose the same parameters and measure the same recall.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import sharded_ivf
from benchmarks.ann import clip_like
from benchmarks.sharded_ivf import AnonPeak, read_rows


def _vectors(directory: Path) -> tuple[np.ndarray, Any]:
    mapped = np.load(directory / "vectors.npy", mmap_mode="r")
    shape, offset = mapped.shape, int(mapped.offset)
    del mapped
    ids = np.arange(shape[0], dtype=np.int64)
    return ids, lambda rows: read_rows(directory / "vectors.npy", shape, offset, rows)


def worker_build(directory: Path, factory: str) -> dict:
    from retrieval.index.ondisk import build_ondisk_ivf

    ids, read = _vectors(directory)
    start = time.perf_counter()
    index = build_ondisk_ivf(
        ids, read, 512, factory, directory / "images.1.ivfdata", directory / "work"
    )
    index.save(directory / "images.1.faiss")
    return {"build_s": time.perf_counter() - start}


def worker_tune(directory: Path, mode: str) -> dict:
    from retrieval.index import FaissIndex
    from retrieval.index.tuning import tune, tune_streamed

    index = FaissIndex.load(directory / "images.1.faiss", mmap=True)
    texts = np.load(directory / "texts.npy")
    ids, read = _vectors(directory)
    index.search(texts[:8], 10)  # faiss's own buffers before the baseline
    anon = AnonPeak()
    time.sleep(0.1)
    baseline = anon.peak_kib / 1024
    start = time.perf_counter()
    if mode == "streamed":
        result = tune_streamed(index, ids, read, text_queries=texts)
    else:
        result = tune(index, read(ids), ids, text_queries=texts)
    seconds = time.perf_counter() - start
    return {
        "tune_s": seconds,
        "baseline_mib": baseline,
        "peak_above_mib": anon.stop() - baseline,
        "params": result.to_dict()["params"],
        "recall": result.recall_at_10,
    }


def run_worker(*args: str) -> dict:
    return sharded_ivf.run_worker(*args, module="benchmarks.tune_memory")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--factory", default="IVF1024,SQ8")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--dir", type=Path, default=None, help="keep the vectors and index here")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        kind, directory, extra = args.worker[0], Path(args.worker[1]), args.worker[2]
        work = worker_build if kind == "build" else worker_tune
        print(json.dumps(work(directory, extra)))
        return
    with tempfile.TemporaryDirectory(prefix="mmsearch-tune-mem-") as scratch:
        directory = args.dir or Path(scratch)
        directory.mkdir(parents=True, exist_ok=True)
        run(directory, args)


def run(directory: Path, args: argparse.Namespace) -> None:
    if not (directory / "images.1.faiss").exists():
        xb, texts, _ = clip_like(args.n, 0, 512, tune_queries=500)
        np.save(directory / "vectors.npy", xb.astype(np.float16))
        np.save(directory / "texts.npy", texts)
        del xb
        built = run_worker("build", str(directory), args.factory)
        print(f"built {args.factory} over {args.n:,} vectors, lists on disk: "
              f"{built['build_s']:.0f} s")  # fmt: skip
    rows = {"streamed": [], "whole": []}
    for _ in range(args.rounds):
        for mode in rows:
            rows[mode].append(run_worker("tune", str(directory), mode))
    print(f"\n{args.factory}, {args.n:,} x 512 (float16 on disk), 1,000 stored + 500 text queries")
    print("| tuning | round | peak anon RSS above the opened index MiB | tune s | chose "
          "| recall@10 |")  # fmt: skip
    print("|---|---:|---:|---:|---|---:|")
    for mode, results in rows.items():
        for number, result in enumerate(results, 1):
            print(f"| {mode} | {number} | {result['peak_above_mib']:.0f} | {result['tune_s']:.1f} "
                  f"| {result['params']} | {result['recall']:.3f} |")  # fmt: skip
    streamed = min(r["peak_above_mib"] for r in rows["streamed"])
    whole = min(r["peak_above_mib"] for r in rows["whole"])
    same = all(
        a["params"] == b["params"] and a["recall"] == b["recall"]
        for a, b in zip(rows["streamed"], rows["whole"], strict=True)
    )
    print(f"\nstreamed / whole peak RSS: {streamed / whole:.2f} ({streamed:.0f} vs "
          f"{whole:.0f} MiB); same parameters and recall: {same}")  # fmt: skip
    print(f"load average {os.getloadavg()[0]:.1f}; python -m benchmarks.tune_memory --n {args.n} "
          f"--factory {args.factory} --rounds {args.rounds}")  # fmt: skip
    if not same:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
