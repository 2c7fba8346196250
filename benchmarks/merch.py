"""Merchandised product search at N products (issue 25): a filtered text search with facets
(category, brand, price bands) and a sort, against the same search without them (target: < 2x
at p50), and browsing by filter (sorted, paged, faceted) against browsing without facets and
sort (browsing's facet counts are cached until the catalog changes: one row measures them
uncached). Title vectors are pre-made (random, normalised, as benchmarks/product_writes.py
builds its catalog) and the tiny test model (dim 32) embeds the queries, so the model costs next to
nothing: the ratios are as high as they get (a real model adds ~35 ms to both sides of a text
search on 2 CPU cores).

    python -m benchmarks.merch --products 100000 --repeat 60

Calls the library (SearchService, the object behind the HTTP routes and the CLI)."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from benchmarks.harness import cpu_model, percentile

CATEGORIES = 50
BRANDS = 200


def build(directory: Path, model: str, count: int) -> float:
    """An index of `count` title-only products with typed columns and pre-made vectors."""
    from retrieval.compose import open_for_indexing
    from retrieval.config import EmbedConfig
    from retrieval.ingest.indexer import Indexer
    from retrieval.ingest.product_writes import write_products
    from retrieval.ingest.products import ProductRow
    from retrieval.ingest.sync import text_key
    from retrieval.types import ModelSpec

    started = time.perf_counter()
    store, factory = open_for_indexing(directory, ModelSpec(model, None), EmbedConfig(device="cpu"))
    words = ["red", "blue", "leather", "canvas", "dog", "cat", "lamp", "chair", "shoe", "bag"]
    titles = [f"{words[n % 10]} {words[(n // 10) % 10]} item {n}" for n in range(count)]
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((count, store.identity.dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    with store.catalog.transaction():
        store.catalog.put_vectors([text_key(t) for t in titles], vectors)
    rows = [
        ProductRow(
            n,
            f"SKU-{n:06d}",
            title,
            (),
            {
                "category": f"Cat{n % CATEGORIES}",
                "brand": f"Brand{(n * 7) % BRANDS}",
                "price": round(float(rng.uniform(1, 500)), 2),
                "in_stock": bool(n % 3),
                "popularity": int(rng.integers(0, 5000)),
            },
        )
        for n, title in enumerate(titles)
    ]
    with store, Indexer(store, factory) as indexer:
        write_products(indexer, rows)
    return time.perf_counter() - started


def timed(run: Callable[[int], object], repeat: int) -> tuple[float, float]:
    """p50, p99 in ms of `repeat` runs (after 3 warm-up runs)."""
    for n in range(3):
        run(n)
    samples = []
    for n in range(repeat):
        started = time.perf_counter()
        run(n)
        samples.append((time.perf_counter() - started) * 1000)
    return percentile(samples, 0.5), percentile(samples, 0.99)


def measure(directory: Path, repeat: int) -> list[tuple[str, float, float]]:
    from retrieval.compose import open_for_search
    from retrieval.config import EmbedConfig
    from retrieval.search.merch import CatalogCache, parse_facets, parse_sort
    from retrieval.search.requests import SearchRequest

    facets = parse_facets("category,brand,price")
    sort = parse_sort("price:asc")
    queries = ["red leather", "blue dog", "canvas bag", "cat lamp", "shoe chair", "red item"]
    rows = []
    with open_for_search(directory, EmbedConfig(device="cpu")) as service:
        for mode in ("semantic", "hybrid"):

            def plain(n: int, mode: str = mode, **merch: object) -> object:
                filters = {"category": f"cat{n % CATEGORIES}", "in_stock": True}
                request = SearchRequest(
                    text=queries[n % len(queries)], k=24, filters=filters, mode=mode, **merch
                )
                return service.search(request)

            rows.append((f"{mode} text search, filtered, k=24", *timed(plain, repeat)))
            rows.append(
                (
                    f"{mode} same + facets category,brand,price + sort price:asc",
                    *timed(lambda n, p=plain: p(n, facets=facets, sort=sort), repeat),
                )
            )
            rows.append(
                (
                    f"{mode} same + facets + sort, min_score -1 (1,000-deep matched set)",
                    *timed(
                        lambda n, p=plain: p(n, facets=facets, sort=sort, min_score=-1.0), repeat
                    ),
                )
            )

        def browse(n: int, **merch: object) -> object:
            filters = {"category": f"cat{n % CATEGORIES}"}
            return service.search(SearchRequest(target="products", k=24, filters=filters, **merch))

        rows.append(("browse category=..., k=24 (SKU order)", *timed(browse, repeat)))
        rows.append(
            (
                "browse same + sort price:asc + facets brand,price",
                *timed(lambda n: browse(n, sort=sort, facets=parse_facets("brand,price")), repeat),
            )
        )

        def everything(n: int, cold: bool = False) -> object:
            if cold:  # what the first visitor after a catalog change waits for
                service._catalog_cache = CatalogCache()
            return service.search(SearchRequest(target="products", k=24, sort=sort, facets=facets))

        rows.append(
            (
                "browse everything, sort price:asc + facets category,brand,price",
                *timed(everything, repeat),
            )
        )
        rows.append(
            (
                "browse everything, same, facet counts not cached",
                *timed(lambda n: everything(n, cold=True), max(repeat // 3, 5)),
            )
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--products", type=int, nargs="+", default=[100_000])
    parser.add_argument("--repeat", type=int, default=60)
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from testdata import write_tiny_model

    print(f"cpu: {cpu_model()}, load average {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as tmp:
        model = f"local-dir:{write_tiny_model(Path(tmp) / 'tiny')}"
        for count in args.products:
            directory = Path(tmp) / f"index-{count}"
            built = build(directory, model, count)
            print(f"\n{count:,} products (built in {built:.0f} s), {args.repeat} runs each")
            rows = measure(directory, args.repeat)
            print(f"{'search':<66} {'p50 ms':>8} {'p99 ms':>8} {'x base p50':>10}")
            base = 0.0
            for name, p50, p99 in rows:
                is_base = not ("+" in name or "everything" in name)
                base = p50 if is_base else base
                print(f"{name:<66} {p50:>8.1f} {p99:>8.1f} {p50 / base:>10.2f}")
    print(f"\nload average after: {os.getloadavg()[0]:.1f}")
    print("reproduce: python -m benchmarks.merch --products " + " ".join(map(str, args.products)))


if __name__ == "__main__":
    main()
