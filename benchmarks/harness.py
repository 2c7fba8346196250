"""Helpers every benchmark shares, defined once: recall against exact truth, percentiles,
resident memory, the machine line a figure is recorded with, and a catalog of products with
pre-made title vectors (the product benchmarks time writes and searches, not the model).
Standard library and numpy (retrieval is imported inside the functions that need it)."""

from __future__ import annotations

import os
import platform
import resource
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.index.tuning import per_query_recall, recall_at_k

__all__ = [
    "ProductSet",
    "cpu_model",
    "git_sha",
    "load_average",
    "peak_rss_mib",
    "percentiles_ms",
    "premade_vectors",
    "product_set",
    "store_title_vectors",
    "write_premade_products",
    "per_query_recall",
    "percentile",
    "recall_at_k",
    "rss_mib",
]


def noise_png(seed: int, width: int = 48, height: int = 40) -> bytes:
    """A PNG of seeded random pixels: other bytes (and another vector) for every seed, the same
    bytes on every run. The product tests and benchmarks store these as product images."""
    import io

    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def png_data_url(seed: int, width: int = 48, height: int = 40) -> str:
    """noise_png as a `data:` URL, the way a product write sends an image inline."""
    import base64

    return "data:image/png;base64," + base64.b64encode(noise_png(seed, width, height)).decode()


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th quantile (0..1) of `values` by nearest rank (NaN when empty): the value a
    request at that rank saw, never an interpolation between two requests."""
    if not len(values):
        return float("nan")
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, int(q * len(ordered)))])


def rss_mib(pid: int | None = None) -> float:
    """Resident memory of process `pid` (this one by default) now, MiB (Linux /proc)."""
    status = Path(f"/proc/{pid or 'self'}/status")
    for line in status.read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mib(children: bool = False) -> float:
    """Peak resident memory of this process (or of its waited-for children), MiB."""
    who = resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF
    return resource.getrusage(who).ru_maxrss / 1024


def cpu_model() -> str:
    """The CPU's model name, for the machine column of RESULTS.md."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    except OSError:
        pass
    return platform.processor() or platform.machine()


def recall_of_sets(found: np.ndarray, truth: np.ndarray) -> float:
    """recall_at_k for result rows without -1 padding (kept for the callers' names)."""
    return recall_at_k(found, truth)


def percentiles_ms(samples: Sequence[float]) -> tuple[float, float]:
    """(p50, p99) of durations in seconds, in milliseconds (nearest rank, as `percentile`)."""
    return percentile(samples, 0.50) * 1000, percentile(samples, 0.99) * 1000


def git_sha() -> str:
    """The short commit benchmarked. Call it before torch or faiss load: forking git after
    them crashed (benchmarks/product_writes.py)."""
    answer = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return answer.stdout.strip() or "unknown"


def load_average() -> str:
    """The 1/5/15-minute load averages, to note how busy a shared machine was."""
    return " / ".join(f"{value:.1f}" for value in os.getloadavg())


def premade_vectors(count: int, dim: int, seed: int = 0) -> np.ndarray:
    """`count` random unit vectors of `dim` floats: stand-ins for embeddings."""
    vectors = np.random.default_rng(seed).standard_normal((count, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors


# Categories and prices spread so that a category plus a price range matches ~0.6% of products.
CATEGORY_COUNT = 50
PRICE_RANGE = 997


@dataclass(frozen=True)
class ProductSet:
    """Products with pre-made title vectors: `skus[n]`, `titles[n]`, `prices[n]`,
    `categories[n]` and `vectors[n]` describe product n."""

    skus: list[str]
    titles: list[str]
    prices: np.ndarray
    categories: list[str]
    vectors: np.ndarray

    def row(self, n: int) -> dict[str, object]:
        """Product n as a catalog row (JSONL shape)."""
        return {
            "id": self.skus[n],
            "title": self.titles[n],
            "price": int(self.prices[n]),
            "category": self.categories[n],
        }


def product_set(count: int, dim: int, seed: int = 0, *, first: int = 0) -> ProductSet:
    """Products `first`..`first + count - 1` with seeded unit title vectors."""
    numbers = range(first, first + count)
    return ProductSet(
        skus=[f"SKU-{n:07d}" for n in numbers],
        titles=[f"product {n} in category {n % CATEGORY_COUNT}" for n in numbers],
        prices=np.array([n % PRICE_RANGE for n in numbers], dtype=np.int64),
        categories=[f"c{n % CATEGORY_COUNT}" for n in numbers],
        vectors=premade_vectors(count, dim, seed),
    )


def store_title_vectors(catalog: Any, titles: Sequence[str], vectors: np.ndarray) -> None:
    """Put pre-made vectors where mmsearch's write path looks up a title's embedding, so the
    model never runs for these titles."""
    from retrieval.ingest.sync import text_key

    with catalog.transaction():
        catalog.put_vectors([text_key(t) for t in titles], vectors)


def write_premade_products(directory: Path, model: str, products: ProductSet) -> float:
    """A new mmsearch index at `directory` (built for `model`, whose dimension must match the
    vectors) holding `products` as title-only products, written through the one write path
    (`write_products`); seconds taken."""
    import time

    from retrieval.compose import open_for_indexing
    from retrieval.config import EmbedConfig
    from retrieval.ingest.indexer import Indexer
    from retrieval.ingest.product_writes import write_products
    from retrieval.ingest.products import ProductRow
    from retrieval.types import ModelSpec

    started = time.perf_counter()
    store, factory = open_for_indexing(directory, ModelSpec(model, None), EmbedConfig(device="cpu"))
    store_title_vectors(store.catalog, products.titles, products.vectors)
    rows = [
        ProductRow(n + 1, products.skus[n], products.titles[n], (),
                   {"price": int(products.prices[n]), "category": products.categories[n]})
        for n in range(len(products.skus))
    ]  # fmt: skip
    with store, Indexer(store, factory) as indexer:
        write_products(indexer, rows)
    return time.perf_counter() - started
