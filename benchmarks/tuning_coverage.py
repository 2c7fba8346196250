"""How often does a tuning rule's efSearch, chosen on a sample of queries, hold the target
recall on the whole query distribution? Measured, not assumed, on the cached 1M HNSW index.

    python -m benchmarks.tuning_coverage --n 1000000 --mean-cosine 0.5 --cache /work/bench-ann

Per-query recall@10 of every held-out and tuning query is measured once for each efSearch in
a range (one faiss search per efSearch); the population recall at each efSearch is the mean over
all of them. Then --trials random samples of --sample-size queries each replay the tuner's
search (smallest efSearch whose rule passes) offline, so each rule's chosen efSearch and its
population recall are known for every trial: the share of trials below the target is the rule's
miss rate. benchmarks/ann_matched.py builds the cached index this reads.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from benchmarks.ann import clip_like
from benchmarks.ann_matched import cached_set_args, cached_truth, data_key, faiss_hnsw
from benchmarks.harness import per_query_recall

per_query_recalls = per_query_recall  # benchmarks/harness.py


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cached_set_args(parser)
    parser.add_argument("--tune-queries", type=int, default=2000)
    parser.add_argument("--ef", type=int, nargs=2, default=(24, 96), metavar=("LO", "HI"))
    parser.add_argument("--sample-sizes", type=int, nargs="+", default=[500, 1000, 2000])
    parser.add_argument("--trials", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache", default="/work/bench-ann")
    args = parser.parse_args(argv)
    print(f"reproduce: python -m benchmarks.tuning_coverage {' '.join(argv)}".rstrip(), flush=True)
    from pathlib import Path

    import faiss

    from retrieval.index.tuning import lower_bound
    from retrieval.types import SearchParams

    args.cache = Path(args.cache)
    faiss.omp_set_num_threads(args.threads)
    xb, tq, xq = clip_like(
        args.n, args.queries, args.dim, args.seed, args.mean_cosine, args.tune_queries
    )
    key = data_key(args)
    truth = np.vstack(
        [
            cached_truth(args.cache / f"{key}_truth_q{args.queries}.npy", xb, xq, args.k),
            cached_truth(args.cache / f"{key}_truth_tq{len(tq)}.npy", xb, tq, args.k),
        ]
    )
    index, _ = faiss_hnsw(args, xb, args.cache)
    del xb
    queries = np.vstack([xq, tq])
    efs = np.arange(args.ef[0], args.ef[1] + 1)
    start = time.perf_counter()
    hits = np.empty((len(queries), len(efs)))
    for j, ef in enumerate(efs):
        index.set_search_params(SearchParams(ef_search=int(ef)))
        hits[:, j] = per_query_recalls(index.search(queries, args.k)[1], truth)
    population = hits.mean(axis=0)
    took = time.perf_counter() - start
    print(f"per-query recalls for efSearch {efs[0]}..{efs[-1]} in {took:.0f} s")
    curve = zip(efs, population, strict=True)
    print(f"population recall@10 ({len(queries):,} queries): "
          + ", ".join(f"{ef}: {r:.4f}" for ef, r in curve if ef % 4 == 0))  # fmt: skip
    met = population >= args.target
    reach = efs[np.argmax(met)] if met.any() else None
    print(f"smallest efSearch reaching {args.target} on the population: {reach}")
    first, held = slice(args.queries, args.queries + 500), slice(0, args.queries)
    print(
        "first 500 tuning queries / held-out, by efSearch: "
        + ", ".join(
            f"{ef}: {hits[first, j].mean():.4f}/{hits[held, j].mean():.4f}"
            for j, ef in enumerate(efs)
            if ef % 8 == 0
        )
    )

    rules = {"mean": lambda h: h.mean(), "lower 95% bound": lower_bound}
    rng = np.random.default_rng(0)
    print(
        "\n| rule | tuning queries | median efSearch | population recall at it: median, "
        f"5th percentile | miss rate (< {args.target}) |"
    )
    print("|---|---:|---:|---:|---:|")
    for size in args.sample_sizes:
        samples = [rng.choice(len(queries), size, replace=False) for _ in range(args.trials)]
        for name, rule in rules.items():
            chosen = []
            for rows in samples:
                sample = hits[rows]
                passing = [j for j in range(len(efs)) if rule(sample[:, j]) >= args.target]
                chosen.append(passing[0] if passing else len(efs) - 1)
            got = population[chosen]
            print(
                f"| {name} | {size:,} | {int(np.median(efs[chosen]))} | {np.median(got):.4f}, "
                f"{np.percentile(got, 5):.4f} | {np.mean(got < args.target):.1%} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
