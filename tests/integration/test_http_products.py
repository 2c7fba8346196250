"""Products by SKU over HTTP: the PUT/PATCH/DELETE/GET contract, bulk NDJSON (upsert and sync),
SKU rules, bad input as 4xx that writes nothing, booleans in filters, and the bounded wait for
the writer lock (503 + Retry-After)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from httpkit import index_shop, open_app
from testdata import cpu_config

from benchmarks.harness import png_data_url as data_url
from retrieval.config import ServeConfig
from retrieval.ingest.product_api import ProductWriter
from retrieval.storage.store import IndexStore


@pytest.fixture
def shop_index(tiny_model: str, tmp_path: Path) -> Path:
    return index_shop(tiny_model, tmp_path)


@pytest.fixture
def shop(shop_index: Path) -> Iterator[TestClient]:
    with open_app(shop_index) as (app, _), TestClient(app) as client:
        yield client


def skus(client: TestClient, **params: object) -> list[str]:
    results = client.get("/search", params={"q": "x", "k": 50, **params}).json()["results"]
    return [hit["product_id"] for hit in results]


def test_put_creates_then_replaces_and_is_searchable_at_once(shop: TestClient) -> None:
    row = {"title": "trail shoe", "images": [data_url(1)], "price": 59.9, "category": "shoes"}
    created = shop.put("/products/NEW-1", json=row)
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["id"] == "NEW-1" and body["price"] == 59.9 and body["title"] == "trail shoe"
    [image] = body["images"]
    assert image["status"] == "embedded" and isinstance(image["item_id"], int)
    assert "NEW-1" in skus(shop, category="shoes")
    again = shop.put("/products/NEW-1", json=row)  # idempotent
    assert again.status_code == 200 and again.json() == body
    hit = shop.post("/search", json={"image_b64": row["images"][0], "k": 1}).json()["results"][0]
    assert hit["product_id"] == "NEW-1" and hit["id"] == image["item_id"]
    assert shop.get("/products/NEW-1").json() == body


def test_patch_merges_fields_keeps_ids_and_null_removes(shop: TestClient) -> None:
    before = shop.get("/products/SKU-001").json()
    patched = shop.patch("/products/SKU-001", json={"price": 1.5, "brand": None})
    assert patched.status_code == 200, patched.text
    after = patched.json()
    assert after["price"] == 1.5 and "brand" not in after
    assert after["images"] == before["images"] and after["title"] == before["title"]
    assert skus(shop, price_max=2) == ["SKU-001"]
    swapped = shop.patch("/products/SKU-001", json={"images": [data_url(7)]})
    [image] = swapped.json()["images"]
    assert image["item_id"] not in {i["item_id"] for i in before["images"]}
    assert shop.patch("/products/NOPE", json={"price": 1}).status_code == 404


def test_field_only_patch_runs_no_model(shop_index: Path) -> None:
    def no_model() -> None:
        raise AssertionError("a field-only patch loaded the model")

    writer = ProductWriter(shop_index, no_model)
    try:
        ids = [i["item_id"] for i in writer.get("SKU-002")["images"]]
        view = writer.patch("SKU-002", {"price": 3, "category": "hats"})
        assert [i["item_id"] for i in view["images"]] == ids and view["category"] == "hats"
    finally:
        writer.close()


def test_delete_answers_204_then_404(shop: TestClient) -> None:
    assert shop.delete("/products/SKU-003").status_code == 204
    assert shop.get("/products/SKU-003").status_code == 404
    assert shop.delete("/products/SKU-003").status_code == 404
    assert "SKU-003" not in skus(shop)


def test_skus_are_one_percent_encoded_segment_without_control_characters(
    shop: TestClient,
) -> None:
    row = {"title": "slash", "images": []}
    assert shop.put("/products/A%2FB-7", json=row).status_code == 201
    assert shop.get("/products/A%2FB-7").json()["id"] == "A/B-7"
    assert shop.put("/products/bad%01sku", json=row).status_code == 422
    assert shop.put("/products/" + "x" * 257, json=row).status_code == 422
    assert shop.put("/products/" + "x" * 256, json=row).status_code == 201


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"title": "t", "colour": "red"}, "unknown field 'colour'"),
        ({"title": "t", "price": "cheap"}, "'price' is a number column"),
        ({"title": "t", "images": ["data:image/png;base64,aGVsbG8="]}, "not-an-image"),
        ({"title": "t", "images": ["/etc/passwd"]}, "data:image"),
        ({"images": []}, "missing title"),
        ({"title": "t", "id": "OTHER"}, "differs"),
    ],
)
def test_bad_rows_are_422_naming_the_problem_and_write_nothing(
    shop: TestClient, body: dict, needle: str
) -> None:
    answer = shop.put("/products/SKU-000", json=body)
    assert answer.status_code == 422 and needle in answer.text
    assert shop.get("/products/SKU-000").json()["title"] == "shoes model 0"


def test_malformed_json_is_a_4xx_that_writes_nothing(shop: TestClient) -> None:
    answer = shop.put(
        "/products/X", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert answer.status_code == 400, answer.text  # the app's answer to any malformed JSON
    assert shop.get("/products/X").status_code == 404


def test_bulk_upsert_reports_every_line_and_sync_deletes_the_rest(shop: TestClient) -> None:
    lines = [
        json.dumps({"id": "SKU-000", "title": "shoes model 0", "price": 2}),
        "{broken",
        json.dumps({"id": "B-1", "title": "bulk one", "images": [data_url(3)]}),
        json.dumps({"id": "B-2", "title": "bulk two", "price": "N/A"}),
        "",
        json.dumps({"id": "B-1", "title": "again"}),
    ]
    answer = shop.post("/products/bulk", content="\n".join(lines))
    assert answer.status_code == 200, answer.text
    body = answer.json()
    outcomes = [(r["line"], r["sku"], r["outcome"]) for r in body["results"]]
    assert outcomes == [
        (1, "SKU-000", "replaced"),
        (2, None, "failed"),
        (3, "B-1", "created"),
        (4, "B-2", "failed"),
        (6, "B-1", "failed"),
    ]
    assert "appears twice" in body["results"][4]["reason"]
    assert body["counts"]["created"] == 1 and body["counts"]["failed"] == 3
    keep = "\n".join(lines[:3])
    synced = shop.post("/products/bulk?mode=sync", content=keep).json()
    assert synced["counts"]["deleted"] == 8 and synced["counts"]["unchanged"] == 2
    assert sorted(skus(shop)) == ["B-1", "SKU-000"]


def test_boolean_filters_in_query_strings_and_json(shop: TestClient) -> None:
    assert shop.put("/schema", json={"in_stock": "boolean"}).json()["in_stock"] == "boolean"
    shop.patch("/products/SKU-004", json={"in_stock": True})
    shop.patch("/products/SKU-005", json={"in_stock": "false"})
    assert skus(shop, in_stock="true") == ["SKU-004"]
    body = {"text": "x", "k": 20, "filters": {"in_stock": False}}
    assert [h["product_id"] for h in shop.post("/search", json=body).json()["results"]] == [
        "SKU-005"
    ]
    assert shop.get("/stats").json()["product_columns"]["in_stock"] == "boolean"
    assert shop.put("/schema", json={"price": "keyword"}).status_code == 422


def test_a_write_waits_a_bounded_time_for_the_lock_then_503(shop_index: Path) -> None:
    writer = ProductWriter(shop_index, lambda: None, lock_wait_s=0.2)
    with (
        open_app(shop_index, ServeConfig()) as (app, service),
        IndexStore.open(shop_index) as other,
        other.writer_lock(),
    ):
        from retrieval.http import create_app

        config = ServeConfig(allowed_hosts=("testserver",))
        with TestClient(create_app(service, config, writer)) as client:
            answer = client.patch("/products/SKU-000", json={"price": 1})
            assert answer.status_code == 503 and answer.headers["retry-after"]
            assert client.get("/products/SKU-000").json()["price"] == 10.5
    writer.close()


def test_writes_reuse_the_index_they_saved_and_show_on_another_replica_at_once(
    shop_index: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from retrieval.compose import open_for_search, open_writer
    from retrieval.index import FaissIndex
    from retrieval.search.service import SearchRequest

    with (
        open_for_search(shop_index, cpu_config()) as primary,
        open_for_search(shop_index, cpu_config()) as replica,
    ):
        writer = open_writer(primary)
        assert writer is not None
        writer.put("W-0", {"title": "warm", "images": [data_url(20)]})
        loads = []
        real_load = FaissIndex.load
        monkeypatch.setattr(
            FaissIndex, "load", lambda *a, **k: loads.append(a) or real_load(*a, **k)
        )
        for n in range(1, 4):
            writer.put(f"W-{n}", {"title": f"written {n}", "images": [data_url(20 + n)]})
            assert not loads  # the writer kept the index it saved
            hits = replica.search(SearchRequest(text=f"written {n}", k=20)).hits
            assert f"W-{n}" in {h.metadata["product_id"] for h in hits}
            loads.clear()  # the replica read the new generation, as it must
        writer.close()


def test_more_like_a_product_leaves_it_out_and_honours_filters(shop: TestClient) -> None:
    own = shop.get("/products/SKU-004").json()["images"][0]["item_id"]
    url = f"/items/{own}/similar"
    results = shop.get(url, params={"target": "products", "k": 20}).json()["results"]
    assert "SKU-004" not in [hit["product_id"] for hit in results] and len(results) == 8
    assert [hit["rank"] for hit in results] == list(range(1, 9))
    hats = shop.get(url, params={"target": "products", "category": "hats"}).json()["results"]
    assert {hit["category"] for hit in hats} == {"hats"} and len(hats) == 3
    page = shop.get(url, params={"target": "products", "k": 3, "offset": 3}).json()["results"]
    assert [h["product_id"] for h in page] == [h["product_id"] for h in results[3:6]]
