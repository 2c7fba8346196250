"""benchmarks/product_peers.py's pieces its figures rest on, at tiny n: the exact filtered
search equals a plain loop over the rows, and each peer adapter answers that exact result,
sees an upsert and forgets a delete (so the peers' timings are of the right work)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from benchmarks.harness import product_set
from benchmarks.product_peers import DIM, K, Lance, Qdrant, exact, queries


def loop_exact(products, query) -> list[str]:  # type: ignore[no-untyped-def]
    vector, category, low, high = query
    scored = [
        (-float(products.vectors[n] @ vector), n)
        for n in range(len(products.skus))
        if products.categories[n] == category and low <= products.prices[n] <= high
    ]
    return [products.skus[n] for _, n in sorted(scored)[:K]]


def test_the_exact_filtered_search_is_a_loop_over_the_matching_rows() -> None:
    products = product_set(3000, DIM, seed=0)
    asked = queries(products, 20)
    assert all(exact(products, q) == loop_exact(products, q) for q in asked)
    assert sum(len(exact(products, q)) for q in asked) > 20 * K // 2  # the filters match rows


@pytest.mark.parametrize("adapter", [Qdrant, Lance])
def test_each_peer_answers_the_exact_result_and_sees_its_writes(adapter, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("qdrant_client" if adapter is Qdrant else "lancedb")
    products = product_set(600, DIM, seed=0)
    peer = adapter(tmp_path / "peer")
    peer.load(products)
    asked = queries(products, 10)
    assert [peer.search(*q) for q in asked] == [exact(products, q) for q in asked]
    query = next(q for q in asked if len(exact(products, q)) >= 3)
    top, second, third = exact(products, query)[:3]
    peer.delete(top)
    assert top not in peer.search(*query)
    n = products.skus.index(third)  # an upsert moves it onto the query itself
    vector, category, low, high = query
    moved = type(products)(
        skus=[products.skus[n]],
        titles=["moved"],
        prices=np.array([low]),
        categories=[category],
        vectors=vector.reshape(1, -1),  # now the query itself: must come first
    )
    peer.upsert(moved, 0)
    assert peer.search(*query)[:2] == [products.skus[n], second]
    fresh = product_set(5, DIM, seed=9, first=600)
    peer.bulk(fresh)
    for m in range(5):
        price = int(fresh.prices[m])
        assert peer.search(fresh.vectors[m], fresh.categories[m], price, price)[0] == fresh.skus[m]
    peer.close()
