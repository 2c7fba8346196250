"""Merchandised product search with the tiny model: browse, facets under a query's cutoff
(against a brute-force count over exact scores), sort and stable paging, OR/case/accent/not/
exists filters in HTTP and the CLI, boosts against hand computation, server default boosts."""

from __future__ import annotations

import csv
import math
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from clirun import invoke, run_ok
from fastapi.testclient import TestClient
from httpkit import cli_query, open_app
from testdata import make_images

from retrieval.config import ServeConfig

CATEGORIES = ("dogs", "cats", "birds")
BRANDS = ("acme", "ACME", "Zoë", "zoe", "")
COUNT = 15


def product_rows() -> list[dict[str, str]]:
    rows = []
    for n in range(COUNT):
        rows.append(
            {
                "id": f"SKU-{n:03d}",
                "title": f"{CATEGORIES[n % 3]} toy number {n}",
                "image": f"img/img_{n:03d}.png",
                "category": CATEGORIES[n % 3],
                "brand": BRANDS[n % 5],
                "price": str([30, 10, 20][n % 3] + n % 4),  # ties on price: SKU breaks them
                "in_stock": "true" if n % 2 else "false",
                "popularity": str(n * 7),
            }
        )
    rows[-1]["brand"] = "Rarebrand"  # one product only: filtered search must still find it
    return rows


@pytest.fixture(scope="module")
def shop_index(tiny_model: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("merch")
    make_images(root / "shop" / "img", COUNT, seed=7)
    catalog = root / "shop" / "products.csv"
    rows = product_rows()
    with open(catalog, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    directory = root / "index"
    run_ok("index", "--catalog", catalog, "--model", tiny_model, "--index", directory, "--quiet")
    return directory


@pytest.fixture(scope="module")
def shop(shop_index: Path) -> Iterator[TestClient]:
    with open_app(shop_index) as (app, _), TestClient(app) as client:
        yield client


def skus(answer: dict) -> list[str]:
    return [hit["product_id"] for hit in answer["results"]]


def rows_where(**wanted: tuple[str, ...]) -> list[dict[str, str]]:
    return [row for row in product_rows() if all(row[k] in v for k, v in wanted.items())]


def test_browse_lists_sorts_pages_and_facets_alike_in_get_post_and_cli(
    shop: TestClient, shop_index: Path
) -> None:
    params = [("category", "dogs"), ("category", "CATS"), ("sort", "price:desc"), ("k", "4")]
    first = shop.get("/products", params=[*params, ("facets", "brand,category")]).json()
    want = sorted(rows_where(category=("dogs", "cats")), key=lambda r: r["id"])
    want.sort(key=lambda r: -int(r["price"]))  # stable: SKU breaks ties
    assert first["total"] == len(want) == 10 and first["has_more"] is True
    assert skus(first) == [r["id"] for r in want[:4]]
    assert [hit["rank"] for hit in first["results"]] == [1, 2, 3, 4]
    pages, offset = [], 0
    while True:  # stable paging: every product once, in order
        page = shop.get("/products", params=[*params, ("offset", str(offset))]).json()
        pages += skus(page)
        offset += 4
        if not page["has_more"]:
            break
    assert pages == [r["id"] for r in want]
    # brand ignores case and accents; category's own filter is left out of its counts
    brands = {e["value"].casefold().replace("ë", "e"): e["count"] for e in first["facets"]["brand"]}
    assert brands == {"acme": 4, "zoe": 4}
    assert {e["value"]: e["count"] for e in first["facets"]["category"]} == Counter(
        r["category"] for r in product_rows()
    )
    body = {"filters": {"category": ["dogs", "CATS"]}, "sort": "price:desc", "k": 4}
    posted = shop.post("/search", json={**body, "facets": ["brand", "category"]}).json()
    assert posted["results"] == first["results"] and posted["facets"] == first["facets"]
    cli = cli_query(
        shop_index, "--target", "products", "--filter", "category=dogs",
        "--filter", "category=CATS", "--sort", "price:desc", "-k", "4",
    )  # fmt: skip
    assert cli["results"] == first["results"] and cli["total"] == 10


@pytest.mark.parametrize(
    ("params", "body", "cli", "expected"),
    [
        ([("brand", "ACMÉ")], {"brand": "acme"}, ["brand=Acme"], {"acme", "ACME"}),
        ([("brand", "ZOE")], {"brand": ["zoë"]}, ["brand=ZOË"], {"Zoë", "zoe"}),
        ([("brand!", "acme"), ("brand", "zoe")], {"brand": "zoe"}, ["brand=zoe"], {"Zoë", "zoe"}),
        ([("brand_exists", "false")], {"brand": {"exists": False}}, ["brand_exists=false"], {""}),
        (
            [("brand!", "acme"), ("brand!", "zoe")],
            {"brand": {"not": ["ACME", "Zoe"]}},
            ["brand!=acme", "brand!=zoe"],
            {"", "Rarebrand"},
        ),
        ([("in_stock", "TRUE")], {"in_stock": True}, ["in_stock=true"], None),
    ],
)
def test_filters_or_case_accents_not_exists_in_http_and_cli(
    shop: TestClient,
    shop_index: Path,
    params: list,
    body: dict,
    cli: list[str],
    expected: set[str] | None,
) -> None:
    rows = product_rows()
    if expected is None:
        want = {r["id"] for r in rows if r["in_stock"] == "true"}
    else:
        want = {r["id"] for r in rows if r["brand"] in expected}
    got_get = shop.get("/products", params=[*params, ("k", "50")]).json()
    got_post = shop.post("/search", json={"filters": body, "k": 50}).json()
    options = [arg for value in cli for arg in ("--filter", value)]
    got_cli = cli_query(shop_index, "--target", "products", *options, "-k", "50")
    for answer in (got_get, got_post, got_cli):
        assert set(skus(answer)) == want and answer["total"] == len(want)


def test_a_rare_filter_value_is_found_inside_the_vector_search(shop: TestClient) -> None:
    for mode in ("semantic", "hybrid"):
        params = {"q": "a toy", "brand": "RAREBRAND", "k": 3, "mode": mode}
        assert skus(shop.get("/search", params=params).json()) == ["SKU-014"]
    either = [("q", "dogs toy"), ("brand", "rarebrand"), ("brand", "ZOE"), ("k", "10")]
    found = skus(shop.get("/search", params=[*either, ("mode", "semantic")]).json())
    wanted = ("Rarebrand", "Zoë", "zoe")
    assert set(found) == {r["id"] for r in product_rows() if r["brand"] in wanted}


def test_query_facets_count_every_product_at_or_above_min_score(shop: TestClient) -> None:
    base = {"text": "cats toy", "mode": "semantic", "k": 50}
    exact = shop.post("/search", json=base).json()["results"]  # every product, exact scores
    assert len(exact) == COUNT
    cutoff = sorted(hit["score"] for hit in exact)[COUNT // 2]
    by_id = {row["id"]: row for row in product_rows()}
    asked = {
        **base,
        "min_score": cutoff,
        "filters": {"category": "cats", "price_max": 12},
        "facets": ["category", "price:0-11,11-"],
        "sort": "price:asc",
        "k": 2,
    }
    got = shop.post("/search", json=asked).json()
    above = [by_id[hit["product_id"]] for hit in exact if hit["score"] >= cutoff]
    matched = [r for r in above if r["category"] == "cats" and int(r["price"]) <= 12]
    assert got["total"] == len(matched)
    want_order = sorted(matched, key=lambda r: (int(r["price"]), r["id"]))
    assert skus(got) == [r["id"] for r in want_order[:2]]
    categories = Counter(r["category"] for r in above if int(r["price"]) <= 12)
    assert {e["value"]: e["count"] for e in got["facets"]["category"]} == categories
    cats = [int(r["price"]) for r in above if r["category"] == "cats"]
    assert got["facets"]["price"] == [
        {"from": 0.0, "to": 11.0, "count": sum(p < 11 for p in cats)},
        {"from": 11.0, "to": None, "count": sum(p >= 11 for p in cats)},
    ]


def test_facets_without_min_score_use_the_default_margin(shop: TestClient) -> None:
    params = {"q": "birds toy", "mode": "semantic", "k": 50}
    exact = shop.get("/search", params=params).json()["results"]
    best = exact[0]["score"]
    near = {hit["product_id"] for hit in exact if hit["score"] >= best - 0.1}
    got = shop.get("/search", params={**params, "facets": "category"}).json()
    assert set(skus(got)) == near and got["total"] == len(near)
    assert sum(e["count"] for e in got["facets"]["category"]) == len(near)


def test_boosts_rescore_as_computed_by_hand(shop: TestClient, shop_index: Path) -> None:
    base = {"text": "dogs toy", "mode": "semantic", "k": 50, "min_score": -1}
    exact = shop.post("/search", json=base).json()["results"]
    boost = ["in_stock:1.5", "popularity:log:0.02"]
    got = shop.post("/search", json={**base, "boost": boost}).json()
    want = {
        hit["product_id"]: hit["score"] * (1.5 if hit["in_stock"] else 1.0)
        + 0.02 * math.log1p(hit["popularity"])
        for hit in exact
    }
    order = sorted(want, key=lambda sku: (-want[sku], sku))
    assert skus(got) == order
    assert [hit["score"] for hit in got["results"]] == pytest.approx(
        [want[sku] for sku in order], abs=1e-5
    )
    assert got["query"]["boosts"] == ["in_stock:1.5", "popularity:log:0.02"]
    cli = cli_query(shop_index, "dogs toy", "--mode", "semantic", "-k", "50",
                    "--min-score", "-1", "--boost", "in_stock:1.5", "--boost",
                    "popularity:log:0.02")  # fmt: skip
    assert skus(cli) == order


def test_server_default_boosts_apply_unless_a_request_says_none(shop_index: Path) -> None:
    config = ServeConfig(boosts=("in_stock:3",))
    with open_app(shop_index, config) as (app, _), TestClient(app) as client:
        params = {"q": "cats toy", "mode": "semantic", "k": 50, "min_score": -1}
        boosted = client.get("/search", params=params).json()
        plain = client.get("/search", params={**params, "boost": "none"}).json()
        images = client.get("/search", params={"q": "toy", "target": "images"})
        similar = client.get(f"/items/{plain['results'][0]['id']}/similar")
    for answer in (images, similar):  # the defaults are for product searches only
        assert answer.status_code == 200 and "boosts" not in answer.json()["query"]
    assert boosted["query"]["boosts"] == ["in_stock:3"] and "boosts" not in plain["query"]
    want = sorted(
        plain["results"],
        key=lambda hit: (-hit["score"] * (3 if hit["in_stock"] else 1), hit["product_id"]),
    )
    assert skus(boosted) == [hit["product_id"] for hit in want] != skus(plain)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"sort": "category:sideways"}, "asc or desc"),
        ({"sort": "colour"}, "cannot sort by 'colour'"),
        ({"facets": "colour"}, "unknown facet 'colour'"),
        ({"facets": "brand:0-10"}, "no bands"),
        ({"boost": "brand:2"}, "needs a boolean column"),
        ({"price": "cheap"}, "needs a number"),
    ],
)
def test_bad_merchandising_parameters_are_422_saying_why(
    shop: TestClient, params: dict, message: str
) -> None:
    for path, extra in (("/search", {"q": "toy"}), ("/products", {})):
        if "boost" in params and path == "/products":
            continue  # browsing takes no boosts
        response = shop.get(path, params={**extra, **params})
        assert response.status_code == 422, response.text
        assert message in response.json()["message"]


def test_cli_browse_prints_a_table_with_total_and_facets_and_errors_cleanly(
    shop_index: Path,
) -> None:
    table = run_ok("query", "--target", "products", "--filter", "category=birds",
                   "--facets", "brand", "--index", shop_index, "--device", "cpu")  # fmt: skip
    assert "5 products in all" in table and "brand:" in table
    bad = invoke("query", "--target", "products", "--sort", "nope", "--index", shop_index)
    assert bad.exit_code == 2 and "cannot sort by 'nope'" in bad.output
    assert "Traceback" not in bad.output


@pytest.mark.parametrize(
    "filters",
    [
        {"in_stock": True},  # most products pass: checked after an unrestricted search
        {"brand": {"not": "rarebrand"}},
        {"brand": "RAREBRAND"},  # one product: restricted inside faiss
        {"category": ["dogs", "birds"], "price_max": 25},
    ],
)
def test_filtered_searches_return_the_best_passing_products_exactly(
    shop: TestClient, filters: dict
) -> None:
    base = {"text": "cats toy", "mode": "semantic", "k": 50}
    every = shop.post("/search", json=base).json()["results"]
    for k in (1, 3, 6):
        got = shop.post("/search", json={**base, "k": k, "filters": filters}).json()
        passing = shop.post("/search", json={"filters": filters, "k": 50}).json()
        allowed = set(skus(passing))
        want = [hit for hit in every if hit["product_id"] in allowed][:k]
        assert skus(got) == [hit["product_id"] for hit in want]
        assert [hit["score"] for hit in got["results"]] == [hit["score"] for hit in want]
