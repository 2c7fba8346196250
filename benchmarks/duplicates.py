"""Near-duplicate search on synthetic CLIP-like vectors with planted near-duplicates: mmsearch's
range search (screened in a 64-d PCA projection, then checked in full) against the plain
all-pairs faiss Flat range search in full dimension, in one run: time, peak memory, recall of
the full-dimension pairs (1.0 by construction), planted groups found.

    python -m benchmarks.duplicates --n 100000

The vectors mimic CLIP image embeddings: a shared direction (CLIP's cone), 1,000 topic clusters
and per-image variation, both with a decaying spectrum (variance ~ 1/i along the i-th axis), so
unrelated images score about 0.16 (median), while planted copies (1-3 per original) score
0.96-0.995 against their original.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

import numpy as np

from benchmarks.harness import rss_mib
from retrieval.index import range_pairs
from retrieval.index.neighbours import SCREEN_DIM
from retrieval.search.duplicates import group_pairs
from retrieval.search.queries import DEFAULT_DUPLICATE_THRESHOLD


def clip_like(n: int, dim: int, planted: int, seed: int = 0) -> tuple[np.ndarray, list[set[int]]]:
    """`n` unit vectors; the last rows are 1-3 noisy copies each of `planted` originals."""
    rng = np.random.default_rng(seed)

    def units(rows: int) -> np.ndarray:
        x = rng.standard_normal((rows, dim)).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    # Embedding spectra decay: variance along the i-th principal axis ~ 1/i (the top 64 of 512
    # axes then hold 70% of it), in a random rotation, plus the shared direction.
    rotation = np.linalg.qr(rng.standard_normal((dim, dim)))[0].astype(np.float32)
    spread = (1.0 / np.arange(1, dim + 1)) ** 0.5
    spread *= 0.85 / np.linalg.norm(spread)

    def spectral(rows: int) -> np.ndarray:
        return (rng.standard_normal((rows, dim)).astype(np.float32) * spread) @ rotation

    common = units(1)[0]
    centres = spectral(1000)
    x = 0.5 * common + centres[rng.integers(0, 1000, n)] + spectral(n)
    groups: list[set[int]] = []
    row = n
    for original in range(planted):
        copies = int(rng.integers(1, 4))
        if row - copies <= original + planted:
            break
        members = {original}
        for _ in range(copies):
            row -= 1
            scale = rng.uniform(0.1, 0.25)  # 0.96-0.995 cosine to the original
            x[row] = x[original] + scale * units(1)[0] * np.linalg.norm(x[original])
            members.add(row)
        groups.append(members)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), groups


rss_mb = rss_mib  # benchmarks/harness.py


@dataclass
class Run:
    wall_s: float
    cpu_s: float
    extra_mb: float  # peak resident memory above what the process held before the run
    pairs: set[tuple[int, int]]
    groups: list[list[tuple[int, float]]]


def run(vectors: np.ndarray, threshold: float, screen_dim: int) -> Run:
    """One range search + grouping, timed (wall and CPU of all threads), memory sampled."""
    before, peak, done = rss_mb(), [0.0], threading.Event()

    def sample() -> None:
        while not done.wait(0.02):
            peak[0] = max(peak[0], rss_mb())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    wall, cpu = time.perf_counter(), time.process_time()
    left, right, scores = range_pairs(vectors, threshold, screen_dim=screen_dim)
    groups = group_pairs(left, right, scores, int)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    done.set()
    sampler.join()
    pairs = set(zip(left.tolist(), right.tolist(), strict=True))
    return Run(wall, cpu, max(peak[0], rss_mb()) - before, pairs, groups)


def print_environment(argv: list[str]) -> None:
    """Versions, cores, load and the command that reproduces this run."""
    versions = [f"{p} {importlib.metadata.version(p)}" for p in ("faiss-cpu", "numpy")]
    sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                         text=True, check=False).stdout.strip()  # fmt: skip
    print(f"environment: {', '.join(versions)}; python {platform.python_version()}; "
          f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; git {sha}")  # fmt: skip
    print(f"reproduce: python -m benchmarks.duplicates {' '.join(argv)}".rstrip())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--planted", type=int, default=1000)
    parser.add_argument("--threshold", type=float, default=DEFAULT_DUPLICATE_THRESHOLD)
    parser.add_argument("--screen-dim", type=int, default=SCREEN_DIM)
    parser.add_argument("--skip-exact", action="store_true", help="no exact baseline (slow)")
    args = parser.parse_args(argv)
    vectors, planted = clip_like(args.n, args.dim, args.planted)
    sample = vectors[np.random.default_rng(1).choice(args.n, 2000, replace=False)]
    sims = sample @ sample.T
    print(f"{args.n} x {args.dim}-d vectors, {len(planted)} planted groups "
          f"({sum(len(g) for g in planted)} vectors); random pairs score "
          f"{np.median(sims[np.triu_indices(2000, 1)]):.3f} median")  # fmt: skip
    ours = run(vectors, args.threshold, args.screen_dim)
    found = [{row for row, _ in group} for group in ours.groups]
    planted_found = sum(any(p <= f for f in found) for p in planted)
    rows = [("mmsearch (auto)", ours)]
    if not args.skip_exact:
        rows.append(("Flat, full dim", run(vectors, args.threshold, args.dim)))
    print(f"\n{'method':<16} {'wall s':>8} {'CPU s':>8} {'pairs':>7} {'groups':>7} {'+MB':>6}")
    for name, r in rows:
        print(f"{name:<16} {r.wall_s:8.2f} {r.cpu_s:8.2f} {len(r.pairs):7d} {len(r.groups):7d} "
              f"{r.extra_mb:6.0f}")  # fmt: skip
    print(f"\nplanted groups found whole: {planted_found}/{len(planted)}")
    if len(rows) > 1:
        exact = rows[1][1]
        recall = len(ours.pairs & exact.pairs) / max(len(exact.pairs), 1)
        wall, cpu = exact.wall_s / ours.wall_s, exact.cpu_s / ours.cpu_s
        print(f"recall of the exact pairs: {recall:.4f}; exact / mmsearch: wall {wall:.1f}x, "
              f"CPU {cpu:.1f}x")  # fmt: skip
    print(f"vectors: {vectors.nbytes / 1e6:.0f} MB float32 (+MB: peak memory above them)")
    print_environment(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    main()
