"""Product catalog mode: indexing, fused text->product search, filters, grouping, updates."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from clirun import invoke, json_lines
from testdata import cpu_config, write_catalog

from retrieval.compose import load_embedder, open_for_search
from retrieval.search.service import SearchRequest
from retrieval.types import ModelSpec


def index(*args: object) -> list[dict]:
    return json_lines("index", *args, "--quiet", "--json")


@pytest.fixture
def catalog_index(tiny_model: str, tmp_path: Path) -> Path:
    path = write_catalog(tmp_path / "shop")
    report = index("--catalog", path, "--model", tiny_model)[0]
    assert report["kind"] == "catalog" and report["indexed"] == 9
    return tmp_path / "indexes" / "default"


def test_text_search_fuses_title_and_best_image_exactly(
    catalog_index: Path, tiny_model: str
) -> None:
    service = open_for_search(catalog_index, cpu_config())
    embedder = load_embedder(ModelSpec(tiny_model, None), cpu_config())
    query = embedder.encode_texts(["shoes model 3"])[0]
    catalog = service.store.catalog
    for weight in (0.0, 0.3, 1.0):
        request = SearchRequest(text="shoes model 3", k=9, text_weight=weight, mode="semantic")
        hits = service.search(request).hits
        expected = {}
        for product_id in catalog.get_products():
            ids = catalog.item_ids_for_products([product_id]).tolist()
            items = catalog.get_items(ids)
            sims = catalog.get_vectors_by_id(ids, 32) @ query
            image = max(
                s for i, s in zip(ids, sims, strict=True) if items[i].collection == "images"
            )
            title = next(
                s for i, s in zip(ids, sims, strict=True) if items[i].collection == "texts"
            )
            expected[product_id] = weight * title + (1 - weight) * image
        got = [(h.metadata["product_id"], h.score) for h in hits]
        assert len({pid for pid, _ in got}) == 9  # one hit per product
        want = sorted(expected.items(), key=lambda kv: -kv[1])
        assert [pid for pid, _ in got] == [pid for pid, _ in want]
        np.testing.assert_allclose([s for _, s in got], [s for _, s in want], atol=1e-5)


def test_product_hits_carry_catalog_fields(catalog_index: Path) -> None:
    service = open_for_search(catalog_index, cpu_config())
    hit = service.search(SearchRequest(text="a hat", k=1)).hits[0]
    assert hit.metadata["product_id"].startswith("SKU-")
    assert {"title", "category", "price", "brand"} <= set(hit.metadata)
    assert isinstance(hit.metadata["price"], float)
    assert hit.path and Path(hit.path).is_file()
    as_json = hit.to_dict()
    assert as_json["product_id"] == hit.metadata["product_id"] and as_json["path"] == hit.path


def test_image_query_finds_its_product_first(catalog_index: Path, tmp_path: Path) -> None:
    service = open_for_search(catalog_index, cpu_config())
    image = tmp_path / "shop" / "img" / "img_009.png"  # second image of SKU-004
    hits = service.search(SearchRequest(image=image, k=3)).hits
    assert hits[0].metadata["product_id"] == "SKU-004"
    assert hits[0].path == str(image)
    assert hits[0].score == pytest.approx(1.0, abs=2e-3)
    assert len({h.metadata["product_id"] for h in hits}) == 3


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({"category": "shoes"}, {"SKU-000", "SKU-003", "SKU-006"}),
        ({"price_min": 20, "price_max": 35}, {"SKU-002", "SKU-003", "SKU-004"}),
        ({"category": "hats", "brand": "acme"}, {"SKU-005"}),
        ({"category": "socks"}, set()),
    ],
)
def test_filters_return_every_match_up_to_k(
    catalog_index: Path, filters: dict, expected: set
) -> None:
    service = open_for_search(catalog_index, cpu_config())
    for text_weight in (0.0, 0.5):
        hits = service.search(
            SearchRequest(text="anything", k=5, filters=filters, text_weight=text_weight)
        ).hits
        assert {h.metadata["product_id"] for h in hits} == expected
    hits = service.search(SearchRequest(text="anything", k=2, filters=filters)).hits
    assert len(hits) == min(2, len(expected))


def test_selective_filter_on_a_large_catalog_still_fills_k(tiny_model: str, tmp_path: Path) -> None:
    path = write_catalog(tmp_path / "shop", count=60)
    index("--catalog", path, "--model", tiny_model)
    service = open_for_search(tmp_path / "indexes" / "default", cpu_config())
    hits = service.search(
        SearchRequest(text="x", k=4, filters={"category": "hats", "price_min": 200})
    ).hits
    assert len(hits) == 4
    assert all(h.metadata["category"] == "hats" and h.metadata["price"] >= 200 for h in hits)


def test_paging_with_offset_continues_the_ranking(catalog_index: Path) -> None:
    service = open_for_search(catalog_index, cpu_config())
    full = service.search(SearchRequest(text="shirt", k=6)).hits
    page = service.search(SearchRequest(text="shirt", k=3, offset=3)).hits
    assert [h.metadata["product_id"] for h in page] == [h.metadata["product_id"] for h in full[3:]]
    assert [h.rank for h in page] == [4, 5, 6]


def test_reindexing_an_edited_catalog_updates_only_what_changed(
    catalog_index: Path, tmp_path: Path, tiny_model: str
) -> None:
    path = tmp_path / "shop" / "products.csv"
    rows = list(csv.DictReader(path.read_text().splitlines()))
    rows[1]["title"] = "golden shirt deluxe"  # edited
    del rows[2]  # deleted
    rows.append({**rows[0], "id": "SKU-NEW", "title": "new arrival"})  # added, reuses images
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    report = index("--catalog", path, "--sync")[0]
    assert (report["indexed"], report["removed"], report["unchanged"]) == (2, 1, 7)
    assert report["embedded"] == 0  # every image was already embedded
    service = open_for_search(catalog_index, cpu_config())
    ids = {h.metadata["product_id"] for h in service.search(SearchRequest(text="x", k=20)).hits}
    assert "SKU-002" not in ids and "SKU-NEW" in ids and len(ids) == 9
    hits = service.search(SearchRequest(text="golden shirt deluxe", k=1, text_weight=1.0)).hits
    assert hits[0].metadata["product_id"] == "SKU-001"
    assert index("--catalog", path)[0]["unchanged"] == 9


def test_catalog_missing_image_is_reported_and_product_kept(
    tiny_model: str, tmp_path: Path
) -> None:
    extra = [
        {
            "id": "SKU-X",
            "title": "ghost",
            "image": "img/missing.png",
            "category": "hats",
            "price": "1",
            "brand": "acme",
        }
    ]
    path = write_catalog(tmp_path / "shop", count=3, extra=extra)
    result = invoke("index", "--catalog", path, "--model", tiny_model, "-q")
    assert result.exit_code == 0, result.output
    assert "missing.png: missing" in result.stderr
    service = open_for_search(tmp_path / "indexes" / "default", cpu_config())
    hits = service.search(SearchRequest(text="ghost", k=4, text_weight=1.0)).hits
    assert hits[0].metadata["product_id"] == "SKU-X" and hits[0].text == "ghost"


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ("id,title,image\n1,,a.png\n", "line 2: missing title"),
        ("id,title,image\n1,a,a.png\n1,b,b.png\n", "line 3: SKU '1' appears twice"),
    ],
)
def test_bad_catalogs_are_refused_under_strict(
    tiny_model: str, tmp_path: Path, content: str, needle: str
) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(content)
    result = invoke("index", "--catalog", path, "--model", tiny_model, "--strict")
    assert result.exit_code == 2 and needle in result.stderr


def test_cli_product_query_with_filters(catalog_index: Path) -> None:
    result = invoke("query", "shoe", "--filter", "category=shoes", "--json")
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    assert body["query"]["target"] == "products"
    assert {r["category"] for r in body["results"]} == {"shoes"}
    result = invoke("query", "shoe", "--filter", "colour=red")
    assert result.exit_code == 2 and "product columns" in result.stderr
    result = invoke("query", "shoe", "--target", "images", "--filter", "category=shoes")
    assert result.exit_code == 2 and "products only" in result.stderr


def test_a_non_finite_number_is_that_rows_error_and_filters_still_work(
    tiny_model: str, tmp_path: Path
) -> None:
    extra = [
        {
            "id": "SKU-NAN",
            "title": "odd",
            "image": "",
            "category": "hats",
            "price": "nan",
            "brand": "acme",
        },
    ]
    path = write_catalog(tmp_path / "shop", count=3, extra=extra)
    report = index("--catalog", path, "--model", tiny_model)[0]
    assert [o["sku"] for o in report["outcomes"] if o["outcome"] == "failed"] == ["SKU-NAN"]
    service = open_for_search(tmp_path / "indexes" / "default", cpu_config())
    hits = service.search(SearchRequest(text="odd", k=10, filters={"price_min": 0})).hits
    assert {h.metadata["product_id"] for h in hits} == {"SKU-000", "SKU-001", "SKU-002"}
    jsonl = tmp_path / "shop" / "p.jsonl"
    jsonl.write_text('{"id": "J1", "title": "t", "images": [], "size": NaN}\n')
    index("--catalog", jsonl)
    assert service.store.catalog.get_product("J1")["size"] == "nan"
