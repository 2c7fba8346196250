"""Product writes at N products (issue 22): field-only PATCH, PUT with one new image (embedding
included), DELETE, bulk upsert rows/s, and the time from a write's return until a second
`mmsearch serve` process on the same index ranks the new image first in an HTTP search; then
search p50/p99 at concurrency 8 with and without 10 writes/s. Title vectors are pre-made
(random, normalised) so the model is not what is timed, except for the PUT's one image.

    python -m benchmarks.product_writes --products 10000 100000

Writes call the library (ProductWriter, the object behind the HTTP routes), so HTTP parsing is
not included. The model is the tests' tiny open_clip towers with a 512-d embedding (ViT-B-32's
size, --dim), so faiss files and the change log are as large as a real catalog's while
embedding stays cheap. The 100k/10k ratio of each per-write figure shows that no write costs
O(catalog): writes append to the change log (retrieval/storage/delta.py) and compaction runs in
the background (or inline in the bulk request that fills the log)."""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def percentiles(samples: list[float]) -> tuple[float, float]:
    values = np.asarray(samples) * 1000
    return float(np.percentile(values, 50)), float(np.percentile(values, 99))


def build(directory: Path, model: str, count: int) -> float:
    """An index of `count` title-only products with pre-made vectors; seconds taken."""
    from retrieval.compose import open_for_indexing
    from retrieval.config import EmbedConfig
    from retrieval.ingest.indexer import Indexer
    from retrieval.ingest.product_writes import write_products
    from retrieval.ingest.products import ProductRow
    from retrieval.ingest.sync import text_key
    from retrieval.types import ModelSpec

    started = time.perf_counter()
    store, factory = open_for_indexing(directory, ModelSpec(model, None), EmbedConfig(device="cpu"))
    titles = [f"product {n} in category {n % 50}" for n in range(count)]
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((count, store.identity.dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    with store.catalog.transaction():
        store.catalog.put_vectors([text_key(t) for t in titles], vectors)
    rows = [
        ProductRow(n, f"SKU-{n:06d}", title, (), {"price": n % 997, "category": f"c{n % 50}"})
        for n, title in enumerate(titles)
    ]
    with store, Indexer(store, factory) as indexer:
        write_products(indexer, rows)
    return time.perf_counter() - started


def start_replica(directory: Path) -> tuple[subprocess.Popen[bytes], str]:
    """A second `mmsearch serve` process on the same index directory; (process, base URL)."""
    from benchmarks.livekit import start_serve

    return start_serve(directory, "--device", "cpu")


def replica_sees(client: object, base: str, image: str, item_id: int) -> float:
    """Seconds until the replica's image search ranks `item_id` first (polled, each poll a
    full HTTP search that embeds the image: the figure is an upper bound)."""
    started = time.perf_counter()
    body = {"image_b64": image, "target": "images", "k": 1}
    while time.perf_counter() - started < 30:
        results = client.post(f"{base}/search", json=body).json()["results"]  # type: ignore[attr-defined]
        if results and results[0]["id"] == item_id:
            return time.perf_counter() - started
        time.sleep(0.001)
    raise RuntimeError(f"the replica never showed item {item_id}")


def measure(
    directory: Path, model: str, patches: int, puts: int, bulk_rows: int, bulk_batch: int
) -> dict:
    import httpx

    from benchmarks.harness import png_data_url
    from retrieval.compose import load_embedder
    from retrieval.config import EmbedConfig
    from retrieval.errors import IndexBusyError
    from retrieval.ingest.product_api import ProductWriter
    from retrieval.ingest.sync import text_key
    from retrieval.types import ModelSpec

    embedder = load_embedder(ModelSpec(model, None), EmbedConfig(device="cpu"))
    writer = ProductWriter(directory, lambda: embedder)
    count = writer.store.catalog.product_count()
    rng = np.random.default_rng(1)
    writer.patch("SKU-000000", {"price": 1})  # warm: first write loads the faiss files
    patch_s = []
    for n in range(patches):
        sku = f"SKU-{int(rng.integers(count)):06d}"
        started = time.perf_counter()
        writer.patch(sku, {"price": n})
        patch_s.append(time.perf_counter() - started)
    replica, base = start_replica(directory)
    put_s, seen_s, delete_s = [], [], []
    try:
        with httpx.Client(timeout=30) as client:
            for n in range(puts):
                image = png_data_url(1000 + n)
                body = {"title": f"new product {n}", "images": [image], "price": n}
                started = time.perf_counter()
                _, view = writer.put(f"NEW-{n}", body)
                put_s.append(time.perf_counter() - started)
                seen_s.append(replica_sees(client, base, image, view["images"][0]["item_id"]))
    finally:
        replica.kill()
        replica.wait()
    for n in range(puts):
        started = time.perf_counter()
        writer.delete(f"NEW-{n}")
        delete_s.append(time.perf_counter() - started)
    # Bulk upserts that change titles, whose vectors are pre-made (cached under their content
    # keys, as an earlier embedding run leaves them): each row replaces a text vector.
    titles = [f"product {n} renamed" for n in range(bulk_rows)]
    vectors = rng.standard_normal((bulk_rows, writer.store.identity.dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    with writer.store.catalog.transaction():
        writer.store.catalog.put_vectors([text_key(t) for t in titles], vectors)
    replaced = busy = 0
    started = time.perf_counter()
    for first in range(0, bulk_rows, bulk_batch):
        lines = [
            (n + 1, {"id": f"SKU-{n:06d}", "title": titles[n], "price": 5})
            for n in range(first, min(first + bulk_batch, bulk_rows))
        ]
        while True:
            try:
                replaced += writer.bulk(lines, sync=False).count("replaced")
                break
            except IndexBusyError:  # HTTP's 503 + Retry-After: a compaction holds the lock
                busy += 1
                time.sleep(1)
    bulk_s = time.perf_counter() - started
    generation = writer.store.catalog.generation
    writer.close()
    return {
        "products": count,
        "patch_ms": percentiles(patch_s),
        "put_image_ms": percentiles(put_s),
        "delete_ms": percentiles(delete_s),
        "replica_sees_ms": percentiles(seen_s),
        "bulk_rows_per_s": bulk_rows / bulk_s,
        "bulk_replaced": replaced,
        "bulk_busy_retries": busy,
        "generation": generation,
    }


def compaction_lock(directory: Path, changes: int) -> dict:
    """How long a compaction of `changes` title changes holds the writer lock, which every
    product write then waits for: built beside writers (the lock only for the swap, the path
    now) against the whole compaction under the lock (the path before), same catalog and log."""
    from retrieval.ingest.indexer import Indexer
    from retrieval.ingest.product_api import ProductWriter
    from retrieval.ingest.sync import text_key
    from retrieval.storage.compaction import Compaction
    from retrieval.storage.store import IndexStore

    def no_model() -> None:
        raise RuntimeError("title vectors are pre-made: no model should load")

    result: dict[str, float] = {}
    rng = np.random.default_rng(2)
    with IndexStore.open(directory) as store, Indexer(store) as indexer:
        indexer.compact()  # start from an empty log
    for mode in ("beside", "locked"):
        writer = ProductWriter(directory, no_model)
        titles = [f"product {n} {mode}" for n in range(changes)]
        vectors = rng.standard_normal((changes, writer.store.identity.dim)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        with writer.store.catalog.transaction():
            writer.store.catalog.put_vectors([text_key(t) for t in titles], vectors)
        lines = [(n + 1, {"id": f"SKU-{n:06d}", "title": titles[n]}) for n in range(changes)]
        writer.bulk(lines, sync=False)
        writer.close()
        with IndexStore.open(directory) as store:
            started = time.perf_counter()
            if mode == "beside":
                with Compaction(store) as compaction:
                    if not compaction.build():
                        raise RuntimeError("the compaction beside writers did not build")
                    built = time.perf_counter()
                    compaction.swap(10.0)
                result["beside_build_s"] = built - started
                result["beside_lock_s"] = time.perf_counter() - built
            else:
                with Indexer(store) as indexer:
                    indexer.compact()
                result["locked_lock_s"] = time.perf_counter() - started
    return result


def search_load(directory: Path, model: str, seconds: float, writes_per_s: float) -> dict:
    """Search p50/p99 from 8 threads for `seconds`, with a writer doing `writes_per_s` PUTs of a
    new product (a title to embed: a texts faiss commit each) in the same process."""
    import threading

    from retrieval.compose import open_for_search, open_writer
    from retrieval.config import BatchConfig, EmbedConfig
    from retrieval.search.service import SearchRequest

    service = open_for_search(directory, EmbedConfig(device="cpu"), batching=BatchConfig())
    service.warm()
    writer = open_writer(service) if writes_per_s else None
    stop = time.monotonic() + seconds
    latencies: list[float] = []
    lock = threading.Lock()

    def searcher(seed: int) -> None:
        rng = np.random.default_rng(seed)
        while time.monotonic() < stop:
            started = time.perf_counter()
            # semantic: every benchmark title shares the word "product", so a keyword or
            # hybrid search ranks all n rows by BM25 and measures FTS5, not the vector path
            # the writes change
            text = f"product {rng.integers(1000)}"
            service.search(SearchRequest(text=text, k=10, mode="semantic"))
            with lock:
                latencies.append(time.perf_counter() - started)

    def write() -> None:
        n = 0
        while writer is not None and time.monotonic() < stop:
            started = time.monotonic()
            writer.put(f"LOAD-{n}", {"title": f"load product {n}", "price": n})
            n += 1
            time.sleep(max(0.0, 1 / writes_per_s - (time.monotonic() - started)))

    threads = [threading.Thread(target=searcher, args=(seed,)) for seed in range(8)]
    threads.append(threading.Thread(target=write))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if writer is not None:
        writer.close()
    service.close()
    return {"search_ms": percentiles(latencies), "searches": len(latencies)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--products", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--patches", type=int, default=200)
    parser.add_argument("--puts", type=int, default=30)
    parser.add_argument("--bulk-rows", type=int, default=2000)
    parser.add_argument("--bulk-batch", type=int, default=500, help="rows per bulk request")
    parser.add_argument("--dim", type=int, default=512, help="embedding size (ViT-B-32's: 512)")
    parser.add_argument("--load-seconds", type=float, default=20, help="search under writes")
    parser.add_argument(
        "--compaction-changes",
        type=int,
        default=500,
        help="title changes in the compaction whose writer-lock time is measured",
    )
    args = parser.parse_args()
    # The environment first, before torch and faiss load (forking git after them crashed).
    sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    cpu = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")), platform.processor())  # fmt: skip
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from testdata import TINY_MODEL_CONFIG, write_random_model

    config = json.loads(json.dumps(TINY_MODEL_CONFIG))
    config["model_cfg"]["embed_dim"] = args.dim
    with tempfile.TemporaryDirectory() as tmp:
        model = f"local-dir:{write_random_model(Path(tmp) / 'tiny', config)}"
        rows = []
        for count in args.products:
            directory = Path(tmp) / f"idx-{count}"
            built = build(directory, model, count)
            print(f"built {count} in {built:.0f} s", file=sys.stderr, flush=True)
            result = measure(
                directory, model, args.patches, args.puts, args.bulk_rows, args.bulk_batch
            )
            if args.load_seconds:
                quiet = search_load(directory, model, args.load_seconds, 0)
                loaded = search_load(directory, model, args.load_seconds, 10)
                result["search_idle_ms"], result["search_writes_ms"] = (
                    quiet["search_ms"],
                    loaded["search_ms"],
                )
            if args.compaction_changes:
                result.update(compaction_lock(directory, args.compaction_changes))
            rows.append((count, built, result))
            print(f"measured {count}: {result}", file=sys.stderr, flush=True)
    print("| products | build s | PATCH p50/p99 ms | PUT+image p50/p99 ms | DELETE p50 ms | "
          "replica sees p50/p99 ms | bulk rows/s |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for count, built, r in rows:
        print(
            f"| {count:,} | {built:.1f} | {r['patch_ms'][0]:.1f} / {r['patch_ms'][1]:.1f} | "
            f"{r['put_image_ms'][0]:.1f} / {r['put_image_ms'][1]:.1f} | "
            f"{r['delete_ms'][0]:.1f} | "
            f"{r['replica_sees_ms'][0]:.1f} / {r['replica_sees_ms'][1]:.1f} | "
            f"{r['bulk_rows_per_s']:.0f} ({r['bulk_busy_retries']} busy retries) |"
        )
    if len(rows) > 1:
        (small, _, a), (large, _, b) = rows[0], rows[-1]
        print(
            f"\nper-write cost {large:,} / {small:,} products (p50 ratio): "
            f"PATCH {b['patch_ms'][0] / a['patch_ms'][0]:.2f}x, "
            f"PUT+image {b['put_image_ms'][0] / a['put_image_ms'][0]:.2f}x, "
            f"DELETE {b['delete_ms'][0] / a['delete_ms'][0]:.2f}x, "
            f"replica sees {b['replica_sees_ms'][0] / a['replica_sees_ms'][0]:.2f}x, "
            f"bulk rows/s {b['bulk_rows_per_s'] / a['bulk_rows_per_s']:.2f}x"
        )
    for count, _, r in rows:
        if "search_idle_ms" in r:
            idle, busy = r["search_idle_ms"], r["search_writes_ms"]
            print(
                f"search at {count:,}, concurrency 8: p50/p99 {idle[0]:.1f}/{idle[1]:.1f} ms "
                f"idle, {busy[0]:.1f}/{busy[1]:.1f} ms under 10 writes/s "
                f"(p99 ratio {busy[1] / idle[1]:.2f}x)"
            )
    for count, _, r in rows:
        if "beside_lock_s" in r:
            print(
                f"compaction at {count:,} ({args.compaction_changes} title changes): writer "
                f"lock held {r['beside_lock_s'] * 1e3:.0f} ms (built beside writers in "
                f"{r['beside_build_s']:.2f} s) vs {r['locked_lock_s'] * 1e3:.0f} ms for the "
                f"whole compaction under the lock "
                f"({r['beside_lock_s'] / r['locked_lock_s']:.3f}x)"
            )
    print(f"\ncpu: {cpu} ({os.cpu_count()} cores), python {platform.python_version()}, "
          f"git {sha.stdout.strip()}, dim {args.dim}")  # fmt: skip
    print(
        "command: python -m benchmarks.product_writes --products "
        + " ".join(map(str, args.products))
    )


if __name__ == "__main__":
    main()
