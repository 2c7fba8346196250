"""Catalog imports as upserts by SKU: stable item ids, upsert vs --sync, --dry-run, bad rows with
line numbers (--strict), typed columns (schema.py) and true/false booleans everywhere."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from clirun import invoke, json_lines, run_ok
from testdata import cpu_config, write_catalog

from retrieval.compose import open_for_search
from retrieval.search.service import SearchRequest
from retrieval.storage.schema import infer_type
from retrieval.storage.store import IndexStore


def index(*args: object) -> dict:
    return json_lines("index", *args, "--quiet", "--json")[0]


def ids_by_product(directory: Path) -> dict[str, dict[str, int]]:
    """SKU -> {image path or 'title': item id}."""
    with IndexStore.open(directory, readonly=True) as store:
        catalog = store.catalog
        found = catalog.get_product_items(catalog.get_product_ids())
    return {sku: {item.path or "title": item.id for item in items} for sku, items in found.items()}


def rewrite(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def rows_of(path: Path) -> list[dict]:
    return list(csv.DictReader(path.read_text().splitlines()))


@pytest.fixture
def shop(tiny_model: str, tmp_path: Path) -> Path:
    path = write_catalog(tmp_path / "shop")
    assert index("--catalog", path, "--model", tiny_model)["created"] == 9
    return path


def test_price_edit_keeps_every_item_id(shop: Path, tmp_path: Path) -> None:
    directory = tmp_path / "indexes" / "default"
    before = ids_by_product(directory)
    rows = rows_of(shop)
    rows[4]["price"] = "99.5"
    rows[5]["title"] = "renamed hat"
    rewrite(shop, rows)
    report = index("--catalog", shop)
    assert (report["replaced"], report["unchanged"], report["embedded"]) == (2, 7, 0)
    assert ids_by_product(directory) == before  # a new title keeps its item id too
    service = open_for_search(directory, cpu_config())
    hits = service.search(SearchRequest(text="x", k=9, filters={"price_min": 99})).hits
    assert [h.metadata["product_id"] for h in hits] == ["SKU-004"]
    assert index("--catalog", shop)["unchanged"] == 9


def test_product_with_an_unreadable_image_keeps_its_ids_run_after_run(
    tiny_model: str, tmp_path: Path
) -> None:
    extra = [{"id": "SKU-BAD", "title": "half broken", "image": "img/img_000.png|img/broken.png"}]
    path = write_catalog(tmp_path / "shop", count=3, extra=extra)
    (tmp_path / "shop" / "img" / "broken.png").write_bytes(b"\x89PNG not really")
    first = index("--catalog", path, "--model", tiny_model)
    assert any(s["path"].endswith("broken.png") for s in first["skipped"])
    directory = tmp_path / "indexes" / "default"
    before = ids_by_product(directory)
    for _ in range(2):
        again = index("--catalog", path)
        assert (again["unchanged"], again["created"], again["replaced"]) == (4, 0, 0)
    assert ids_by_product(directory) == before
    with IndexStore.open(directory, readonly=True) as store:
        states = store.catalog.get_product_records(["SKU-BAD"])["SKU-BAD"].images
    assert [s["status"] for s in states] == ["embedded", "not-an-image"]


def test_upsert_keeps_absent_rows_and_sync_deletes_them(shop: Path, tmp_path: Path) -> None:
    delta = shop.parent / "delta.csv"
    row = rows_of(shop)[0]
    rewrite(delta, [{**row, "price": "1.5"}])
    report = index("--catalog", delta)
    assert (report["replaced"], report["deleted"], report["removed"]) == (1, 0, 0)
    directory = tmp_path / "indexes" / "default"
    assert len(ids_by_product(directory)) == 9
    report = index("--catalog", delta, "--sync")
    assert (report["unchanged"], report["deleted"]) == (1, 8)
    assert list(ids_by_product(directory)) == ["SKU-000"]


def test_dry_run_reports_the_plan_and_writes_nothing(shop: Path, tmp_path: Path) -> None:
    directory = tmp_path / "indexes" / "default"
    with IndexStore.open(directory, readonly=True) as store:
        generation = store.catalog.generation
    rows = rows_of(shop)
    rows[0]["price"] = "2"
    rewrite(shop.parent / "delta.csv", [rows[0], {**rows[1], "id": "SKU-NEW"}])
    report = index("--catalog", shop.parent / "delta.csv", "--sync", "--dry-run")
    assert report["dry_run"] and (report["created"], report["replaced"]) == (1, 1)
    assert report["deleted"] == 8
    outcomes = {o["sku"]: o["outcome"] for o in report["outcomes"]}
    assert outcomes["SKU-NEW"] == "created" and outcomes["SKU-005"] == "deleted"
    text = run_ok("index", "--catalog", shop.parent / "delta.csv", "--dry-run", "-q")
    assert "would be created (1): SKU-NEW" in text and "nothing written" in text
    with IndexStore.open(directory, readonly=True) as store:
        assert store.catalog.generation == generation
        assert store.catalog.product_count() == 9
        assert store.catalog.get_product("SKU-000")["price"] == 10.5


BAD = (
    "id,title,image,price\n"
    "A-1,first,,10\n"  # line 2
    "A-2,,,11\n"  # line 3: no title
    "A-1,again,,12\n"  # line 4: duplicate SKU
    "A-3,third,,N/A\n"  # line 5: not a number in a number column
    'A-4,"multi\nline title",,13\n'  # lines 6-7
    "A-5,fifth,,14\n"  # line 8
)


def test_bad_rows_are_reported_by_line_and_skipped(tiny_model: str, tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(BAD)
    result = invoke("index", "--catalog", path, "--model", tiny_model, "-q")
    assert result.exit_code == 0, result.output
    assert "line 3: A-2: missing title" in result.stdout
    assert "line 4: A-1: SKU 'A-1' appears twice (first on line 2)" in result.stdout
    assert "line 5: A-3: column 'price' is a number column; 'N/A'" in result.stdout
    report = index("--catalog", path)
    assert report["schema"]["price"] == "number"
    assert {o["sku"] for o in report["outcomes"] if o["outcome"] == "unchanged"} == {
        "A-1",
        "A-4",
        "A-5",
    }
    assert [o["line"] for o in report["outcomes"] if o["outcome"] == "failed"] == [3, 4, 5]
    stats = run_ok("info")
    assert "price (number)" in stats


def test_strict_refuses_a_catalog_with_bad_rows(tiny_model: str, tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(BAD)
    result = invoke("index", "--catalog", path, "--model", tiny_model, "--strict")
    assert result.exit_code == 2
    assert "line 3: missing title" in result.stderr and "nothing written" in result.stderr
    with IndexStore.open(tmp_path / "indexes" / "default", readonly=True) as store:
        assert store.catalog.product_count() == 0


def test_one_bad_cell_cannot_flip_a_column() -> None:
    assert infer_type(["10", "N/A", "12", ""]) == "number"
    assert infer_type(["true", "false", "maybe"]) == "boolean"
    assert infer_type(["shoes", "hats", "12"]) == "keyword"
    assert infer_type(["a red shoe", "blue hat", "x"]) == "text"
    assert infer_type([["a", "b"], ["c"]]) == "list"


def test_booleans_are_true_false_in_jsonl_csv_filters_and_cli(
    tiny_model: str, tmp_path: Path
) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text(
        "\n".join(
            json.dumps(row)
            for row in [
                {"id": "J1", "title": "boots", "in_stock": True, "tags": ["a", "b"]},
                {"id": "J2", "title": "hat", "in_stock": False, "tags": ["b"]},
                {"id": "J3", "title": "sock", "in_stock": "TRUE", "tags": []},
            ]
        )
    )
    report = index("--catalog", path, "--model", tiny_model)
    assert report["schema"] == {"in_stock": "boolean", "tags": "list"}
    service = open_for_search(tmp_path / "indexes" / "default", cpu_config())

    def skus(filters: dict) -> set[str]:
        hits = service.search(SearchRequest(text="x", k=5, filters=filters)).hits
        return {h.metadata["product_id"] for h in hits}

    assert skus({"in_stock": True}) == skus({"in_stock": "true"}) == {"J1", "J3"}
    assert skus({"in_stock": "false"}) == {"J2"}
    assert skus({"tags": "b"}) == {"J1", "J2"}
    body = json.loads(run_ok("query", "x", "--filter", "in_stock=true", "--json"))
    assert {r["product_id"] for r in body["results"]} == {"J1", "J3"}
    result = invoke("query", "x", "--filter", "in_stock=yes")
    assert result.exit_code == 2 and "true or false" in result.stderr


def test_schema_file_overrides_inference(tiny_model: str, tmp_path: Path) -> None:
    path = tmp_path / "p.csv"
    path.write_text("id,title,code\nA,a,0012\nB,b,0013\n")
    schema = tmp_path / "schema.json"
    schema.write_text('{"code": "keyword"}')
    report = index("--catalog", path, "--model", tiny_model, "--schema", schema)
    assert report["schema"] == {"code": "keyword"}
    with IndexStore.open(tmp_path / "indexes" / "default", readonly=True) as store:
        assert store.catalog.get_product("A")["code"] == "0012"
    schema.write_text('{"code": "colour"}')
    result = invoke("index", "--catalog", path, "--schema", schema)
    assert result.exit_code == 2 and "number, boolean, keyword, text, list" in result.stderr
