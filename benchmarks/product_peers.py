"""Product writes and filtered searches beside two peers, for scale (issue 22): the same
single-row upserts, bulk upsert, single deletes and filtered vector searches (a category plus a
price range, k=10) on the same pre-made 512-d unit vectors, in mmsearch (its library write path,
ProductWriter, the object behind the HTTP routes; its product search for a given vector),
qdrant-client's local mode (`QdrantClient(path=...)`) and LanceDB (a local directory).

    python -m benchmarks.product_peers --products 10000 100000

Per size, each system loads the same N products (timed as `load`), answers the same queries on
that state (recall@10 against an exact numpy search of the same filter), then upserts the same
rows (existing SKUs with a new title, vector and price), bulk-upserts the same new rows and
deletes the same SKUs. All three persist to disk; none runs a model (mmsearch reads the title
vectors stored beforehand, as the peers take them with the row). Needs the `bench` extra
(pip install 'mmsearch[bench]').

What each peer is: qdrant's local mode is its embedded Python implementation (exact search in
numpy, points pickled into SQLite), not the Rust server; LanceDB here has no ANN index (exact
search, filter applied before the search) and each write adds a table version and fragment
(no compaction between writes). Both take a row and return; mmsearch's write returns once its
SQLite transaction (and any faiss generation) has committed."""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from benchmarks.harness import (
    ProductSet,
    cpu_model,
    git_sha,
    load_average,
    percentiles_ms,
    product_set,
    recall_at_k,
    store_title_vectors,
    write_premade_products,
)

DIM = 512
K = 10
# A price window of 300 out of 0..996 and one category of 50: ~0.6% of the products match.
PRICE_WINDOW = 300


class Peer(Protocol):
    name: str

    def load(self, products: ProductSet) -> None: ...
    def upsert(self, products: ProductSet, n: int) -> None: ...
    def bulk(self, products: ProductSet) -> None: ...
    def delete(self, sku: str) -> None: ...
    def search(self, vector: np.ndarray, category: str, low: int, high: int) -> list[str]: ...
    def close(self) -> None: ...


class Mmsearch:
    """mmsearch through ProductWriter (writes) and SearchService (searches)."""

    name = "mmsearch"

    def __init__(self, directory: Path, model: str) -> None:
        self.directory, self.model = directory, model

    def load(self, products: ProductSet) -> None:
        from retrieval.compose import open_for_search
        from retrieval.config import EmbedConfig
        from retrieval.ingest.product_api import ProductWriter

        write_premade_products(self.directory, self.model, products)
        self.service = open_for_search(self.directory, EmbedConfig(device="cpu"))
        self.writer = ProductWriter(self.directory, _no_model)

    def premake(self, products: ProductSet) -> None:
        """Untimed: store the rows' title vectors, as the peers get them with the rows."""
        store_title_vectors(self.writer.store.catalog, products.titles, products.vectors)

    def upsert(self, products: ProductSet, n: int) -> None:
        row = products.row(n)
        self.writer.put(str(row.pop("id")), row)

    def bulk(self, products: ProductSet) -> None:
        lines = [(n + 1, products.row(n)) for n in range(len(products.skus))]
        report = self.writer.bulk(lines, sync=False)
        if report.errors:
            raise RuntimeError(f"bulk failed rows: {report.errors[:3]}")

    def delete(self, sku: str) -> None:
        self.writer.delete(sku)

    def search(self, vector: np.ndarray, category: str, low: int, high: int) -> list[str]:
        from retrieval.search.requests import SearchRequest

        filters = {"category": category, "price_min": low, "price_max": high}
        request = SearchRequest(target="products", k=K, filters=filters)
        # What /search runs for a products query once the query is a vector, titles only
        # (text weight 1: these products have no images, as the peers hold one vector each).
        hits = self.service._search_products(vector, request, 1.0)
        return [hit.metadata["product_id"] for hit in hits]

    def close(self) -> None:
        self.writer.close()
        self.service.close()


def _no_model() -> Any:
    raise RuntimeError("the benchmark's title vectors are pre-made: no model should run")


class Qdrant:
    """qdrant-client's local mode, persisted under a directory."""

    name = "qdrant-local"

    def __init__(self, directory: Path) -> None:
        from qdrant_client import QdrantClient, models

        self.models, self.directory = models, directory
        self.client = QdrantClient(path=str(directory))
        self.client.create_collection(
            "products", vectors_config=models.VectorParams(size=DIM, distance=models.Distance.DOT)
        )

    def _points(self, products: ProductSet, numbers: range | list[int]) -> list[Any]:
        return [
            self.models.PointStruct(
                id=int(products.skus[n].removeprefix("SKU-")),
                vector=products.vectors[n].tolist(),
                payload=products.row(n),
            )
            for n in numbers
        ]

    def load(self, products: ProductSet) -> None:
        """Seeded: local mode commits every point on its own (an fsync each: ~20 ms here, so
        100k points would take over half an hour), so the initial points are written into its
        SQLite file in one transaction, exactly as its `persist` writes each, and the client
        reopened; `load s` for qdrant is that, not its upsert (whose speed `bulk` shows)."""
        import pickle
        import sqlite3

        from qdrant_client.local.persistence import STORAGE_FILE_NAME, CollectionPersistence

        self.client.close()
        storage = sqlite3.connect(self.directory / "collection" / "products" / STORAGE_FILE_NAME)
        count = len(products.skus)
        points = (  # a thousand at a time: 100k points as Python float lists would take GBs
            point
            for start in range(0, count, 1000)
            for point in self._points(products, range(start, min(start + 1000, count)))
        )
        with storage:
            storage.executemany(
                "INSERT OR REPLACE INTO points VALUES (?, ?)",
                (
                    (CollectionPersistence.encode_key(p.id), sqlite3.Binary(pickle.dumps(p)))
                    for p in points
                ),
            )
        storage.close()
        from qdrant_client import QdrantClient

        self.client = QdrantClient(path=str(self.directory))
        if self.client.count("products").count != count:
            raise RuntimeError("qdrant did not load the seeded points")

    def upsert(self, products: ProductSet, n: int) -> None:
        self.client.upsert("products", self._points(products, [n]))

    def bulk(self, products: ProductSet) -> None:
        self.client.upsert("products", self._points(products, range(len(products.skus))))

    def delete(self, sku: str) -> None:
        selector = self.models.PointIdsList(points=[int(sku.removeprefix("SKU-"))])
        self.client.delete("products", points_selector=selector)

    def search(self, vector: np.ndarray, category: str, low: int, high: int) -> list[str]:
        models = self.models
        where = models.Filter(
            must=[
                models.FieldCondition(key="category", match=models.MatchValue(value=category)),
                models.FieldCondition(key="price", range=models.Range(gte=low, lte=high)),
            ]
        )
        answer = self.client.query_points(
            "products", query=vector.tolist(), query_filter=where, limit=K, with_payload=["id"]
        )
        return [point.payload["id"] for point in answer.points]

    def close(self) -> None:
        self.client.close()


class Lance:
    """LanceDB on a local directory (no ANN index: exact, pre-filtered search)."""

    name = "lancedb"

    def __init__(self, directory: Path) -> None:
        import lancedb

        self.db = lancedb.connect(str(directory))

    def _table(self, products: ProductSet, numbers: range | list[int]) -> Any:
        import pyarrow as pa

        numbers = list(numbers)
        vectors = products.vectors[numbers].reshape(-1)
        return pa.table(
            {
                "id": [products.skus[n] for n in numbers],
                "title": [products.titles[n] for n in numbers],
                "price": products.prices[numbers],
                "category": [products.categories[n] for n in numbers],
                "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors), DIM),
            }
        )

    def load(self, products: ProductSet) -> None:
        self.table = self.db.create_table(
            "products", self._table(products, range(len(products.skus)))
        )

    def _merge(self, data: Any) -> None:
        builder = self.table.merge_insert("id")
        builder.when_matched_update_all().when_not_matched_insert_all().execute(data)

    def upsert(self, products: ProductSet, n: int) -> None:
        self._merge(self._table(products, [n]))

    def bulk(self, products: ProductSet) -> None:
        self._merge(self._table(products, range(len(products.skus))))

    def delete(self, sku: str) -> None:
        self.table.delete(f"id = '{sku}'")

    def search(self, vector: np.ndarray, category: str, low: int, high: int) -> list[str]:
        query = (
            self.table.search(vector)
            .distance_type("dot")
            .where(
                f"category = '{category}' AND price >= {low} AND price <= {high}", prefilter=True
            )
            .select(["id", "_distance"])
            .limit(K)
        )
        return [row["id"] for row in query.to_list()]

    def close(self) -> None:
        pass


# -- the workload, the same for every system ---------------------------------------------------
def queries(products: ProductSet, count: int) -> list[tuple[np.ndarray, str, int, int]]:
    rng = np.random.default_rng(7)
    vectors = product_set(count, DIM, seed=8).vectors
    return [
        (vectors[q], f"c{rng.integers(50)}", int(low), int(low) + PRICE_WINDOW)
        for q, low in enumerate(rng.integers(0, 997 - PRICE_WINDOW, count))
    ]


def exact(products: ProductSet, query: tuple[np.ndarray, str, int, int]) -> list[str]:
    vector, category, low, high = query
    mask = (np.asarray(products.categories) == category) & (products.prices >= low)
    mask &= products.prices <= high
    matching = np.flatnonzero(mask)
    order = np.argsort(-(products.vectors[matching] @ vector), kind="stable")[:K]
    return [products.skus[i] for i in matching[order]]


def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def run(peer: Peer, products: ProductSet, work: dict[str, Any]) -> dict[str, Any]:
    """The workload on one system; its figures."""
    result: dict[str, Any] = {"load_s": timed(lambda: peer.load(products))}
    asked = work["queries"]
    peer.search(*asked[0])  # warm: first search loads files
    search_s, found = [], []
    for query in asked:
        started = time.perf_counter()
        found.append(peer.search(*query))
        search_s.append(time.perf_counter() - started)
    truth = [exact(products, query) for query in asked]
    width = max(1, max(len(t) for t in truth))
    result["recall"] = recall_at_k(_padded(found, width), _padded(truth, width))
    result["search_ms"] = percentiles_ms(search_s)
    changed, numbers, fresh = work["changed"], work["upserted"], work["fresh"]
    if isinstance(peer, Mmsearch):
        peer.premake(changed)
        peer.premake(fresh)
    result["upsert_ms"] = percentiles_ms([timed(lambda n=n: peer.upsert(changed, n))
                                          for n in range(len(numbers))])  # fmt: skip
    result["bulk_rows_per_s"] = len(fresh.skus) / timed(lambda: peer.bulk(fresh))
    result["delete_ms"] = percentiles_ms([timed(lambda s=s: peer.delete(s))
                                          for s in work["deleted"]])  # fmt: skip
    after = peer.search(*asked[0])
    if set(after) & set(work["deleted"]):
        raise RuntimeError(f"{peer.name} still finds a deleted product")
    peer.close()
    return result


def _padded(rows: list[list[str]], width: int) -> np.ndarray:
    """SKU lists as an int array (-1 padding) for recall_at_k: the SKU's number."""
    out = np.full((len(rows), width), -1, dtype=np.int64)
    for r, row in enumerate(rows):
        for c, sku in enumerate(row[:width]):
            out[r, c] = int(sku.removeprefix("SKU-"))
    return out


def workload(products: ProductSet, args: argparse.Namespace) -> dict[str, Any]:
    count = len(products.skus)
    rng = np.random.default_rng(3)
    upserted = sorted(int(n) for n in rng.choice(count, args.upserts, replace=False))
    changed = product_set(len(upserted), DIM, seed=4)
    changed = ProductSet(
        skus=[products.skus[n] for n in upserted],
        titles=[f"{products.titles[n]}, new edition" for n in upserted],
        prices=(products.prices[upserted] + 1) % 997,
        categories=[products.categories[n] for n in upserted],
        vectors=changed.vectors,
    )
    fresh = product_set(args.bulk_rows, DIM, seed=5, first=count)
    kept = sorted(set(range(count)) - set(upserted))
    deleted = [products.skus[int(n)] for n in rng.choice(kept, args.deletes, replace=False)]
    return {
        "queries": queries(products, args.searches),
        "upserted": upserted,
        "changed": changed,
        "fresh": fresh,
        "deleted": deleted,
    }


def make_model(folder: Path) -> str:
    """A tiny open_clip model with 512-d embeddings (the model never runs; the index's
    dimension comes from it)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from testdata import TINY_MODEL_CONFIG

    from benchmarks.make_model import write_random_model

    config = json.loads(json.dumps(TINY_MODEL_CONFIG))
    config["model_cfg"]["embed_dim"] = DIM
    return f"local-dir:{write_random_model(folder, config)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--products", type=int, nargs="+", default=[10_000])
    parser.add_argument("--searches", type=int, default=100)
    parser.add_argument("--upserts", type=int, default=100)
    parser.add_argument("--bulk-rows", type=int, default=2000)
    parser.add_argument("--deletes", type=int, default=50)
    parser.add_argument("--only", nargs="+", default=["mmsearch", "qdrant-local", "lancedb"])
    args = parser.parse_args()
    sha, load_before = git_sha(), load_average()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model = make_model(Path(tmp) / "model")
        for count in args.products:
            products = product_set(count, DIM, seed=0)
            work = workload(products, args)
            peers: dict[str, Callable[[Path], Peer]] = {
                "mmsearch": lambda d: Mmsearch(d, model),
                "qdrant-local": Qdrant,
                "lancedb": Lance,
            }
            for name in args.only:
                directory = Path(tmp) / f"{name}-{count}"
                result = run(peers[name](directory), products, work)
                rows.append((count, name, result))
                shutil.rmtree(directory, ignore_errors=True)
                print(f"measured {name} at {count}: {json.dumps(result)}", file=sys.stderr,
                      flush=True)  # fmt: skip
    report(rows)
    print(f"\ncpu: {cpu_model()}, load average before {load_before}, after {load_average()}; "
          f"python {platform.python_version()}, git {sha}")  # fmt: skip
    print("command: python -m benchmarks.product_peers " + " ".join(sys.argv[1:]))


def report(rows: list[tuple[int, str, dict[str, Any]]]) -> None:
    print("| products | system | load s | upsert p50/p99 ms | bulk rows/s | delete p50/p99 ms |"
          " filtered search p50/p99 ms | recall@10 |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for count, name, r in rows:
        print(
            f"| {count:,} | {name} | {r['load_s']:.1f} | "
            f"{r['upsert_ms'][0]:.1f} / {r['upsert_ms'][1]:.1f} | {r['bulk_rows_per_s']:,.0f} | "
            f"{r['delete_ms'][0]:.1f} / {r['delete_ms'][1]:.1f} | "
            f"{r['search_ms'][0]:.1f} / {r['search_ms'][1]:.1f} | {r['recall']:.3f} |"
        )
    print("\nratios (peer / mmsearch; above 1: mmsearch is faster, for bulk: peer rows/s over "
          "mmsearch's, above 1: the peer is faster)")  # fmt: skip
    ours = {count: r for count, name, r in rows if name == "mmsearch"}
    for count, name, r in rows:
        base = ours.get(count)
        if name == "mmsearch" or base is None:
            continue
        print(
            f"  {count:,} {name}: upsert p50 {r['upsert_ms'][0] / base['upsert_ms'][0]:.2f}x, "
            f"delete p50 {r['delete_ms'][0] / base['delete_ms'][0]:.2f}x, "
            f"search p50 {r['search_ms'][0] / base['search_ms'][0]:.2f}x "
            f"p99 {r['search_ms'][1] / base['search_ms'][1]:.2f}x, "
            f"bulk {r['bulk_rows_per_s'] / base['bulk_rows_per_s']:.2f}x"
        )


if __name__ == "__main__":
    main()
