"""Merchandising SQL against brute force in Python: filters (OR, not, exists, ranges, case and
accents), facet counts (each facet without its own filter), sort order and paging, over random
catalogs (Hypothesis). No model: products are written straight into a catalog."""

from __future__ import annotations

import math
import tempfile
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from retrieval.errors import InvalidQueryError
from retrieval.search.merch import (
    CatalogCache,
    Facet,
    boosted,
    facet_counts,
    filters_from_pairs,
    parse_boosts,
    parse_conditions,
    parse_facets,
    parse_sort,
    sort_keys,
)
from retrieval.storage import folding, product_sql
from retrieval.storage.catalog import Catalog, product_columns

SCHEMA = {
    "category": "keyword",
    "brand": "keyword",
    "price": "number",
    "in_stock": "boolean",
    "tags": "list",
}
# Each spelling and what it means once case and accents are ignored: the oracle's own table,
# so the test does not reuse the code under test.
SPELLINGS = {
    "Dogs": "dogs",
    "dogs": "dogs",
    "DÖGS": "dogs",
    "cats": "cats",
    "Cats": "cats",
    "birds": "birds",
    "acme": "acme",
    "ACME": "acme",
    "Zoë": "zoe",
    "zoe": "zoe",
    "ZOE": "zoe",
    "red": "red",
    "Red": "red",
    "RED": "red",
    "blue": "blue",
}

products_strategy = st.lists(
    st.fixed_dictionaries(
        {
            "category": st.sampled_from(["Dogs", "dogs", "DÖGS", "cats", "Cats", "birds"]),
            "brand": st.sampled_from(["acme", "ACME", "Zoë", "zoe", None]),
            "price": st.one_of(st.none(), st.integers(0, 200), st.floats(0, 200, width=32)),
            "in_stock": st.one_of(st.none(), st.booleans()),
            "tags": st.lists(st.sampled_from(["red", "Red", "blue"]), max_size=3),
        }
    ),
    max_size=30,
)
filters_strategy = st.fixed_dictionaries(
    {},
    optional={
        "category": st.one_of(
            st.sampled_from(list(SPELLINGS)[:6]),
            st.lists(st.sampled_from(list(SPELLINGS)[:6]), min_size=1, max_size=3),
        ),
        "brand": st.one_of(
            st.fixed_dictionaries({"not": st.sampled_from(["ACME", "zoe", "Zoë"])}),
            st.fixed_dictionaries({"exists": st.booleans()}),
        ),
        "price_min": st.integers(0, 200),
        "price_max": st.integers(0, 200),
        "in_stock": st.sampled_from([True, False, "true", "FALSE"]),
        "tags": st.sampled_from(["RED", "blue"]),
    },
)


@contextmanager
def catalog_of(products: list[dict[str, Any]]) -> Iterator[Catalog]:
    with tempfile.TemporaryDirectory() as folder:
        catalog = Catalog(Path(folder) / "catalog.sqlite")
        try:
            with catalog.transaction():
                catalog.set_schema(SCHEMA)
                for n, row in enumerate(products):
                    metadata = {"title": f"product {n}"}
                    metadata.update({k: v for k, v in row.items() if v is not None})
                    catalog.put_product(f"SKU-{n:03d}", metadata["title"], str(n), metadata)
            yield catalog
        finally:
            catalog.close()


def norm(value: Any) -> Any:
    return SPELLINGS.get(value, value) if isinstance(value, str) else value


def passes(row: dict[str, Any], name: str, spec: Any) -> bool:
    """The documented meaning of one filter, by hand."""
    if name == "price_min":
        return isinstance(row["price"], (int, float)) and row["price"] >= spec
    if name == "price_max":
        return isinstance(row["price"], (int, float)) and row["price"] <= spec
    value = row[name]
    if isinstance(spec, dict) and "exists" in spec:
        present = value is not None and value != []
        return present == spec["exists"]
    if isinstance(spec, dict):
        wanted = {norm(spec["not"])}
        return norm(value) not in wanted
    if name == "in_stock":
        return value is (spec is True or spec == "true")
    wanted = {norm(v) for v in (spec if isinstance(spec, list) else [spec])}
    if name == "tags":
        return bool({norm(t) for t in value} & wanted)
    return norm(value) in wanted


def column_of(name: str) -> str:
    return name.removesuffix("_min").removesuffix("_max")


def oracle_ids(products: list[dict], filters: dict, skip: str | None = None) -> list[str]:
    return [
        f"SKU-{n:03d}"
        for n, row in enumerate(products)
        if all(passes(row, name, spec) for name, spec in filters.items() if column_of(name) != skip)
    ]


NO_BRAND = {"category": "cats", "brand": None, "price": None, "in_stock": None, "tags": []}


@settings(max_examples=60, deadline=None)
@given(products=products_strategy, filters=filters_strategy)
@example(products=[NO_BRAND, {**NO_BRAND, "brand": "acme"}], filters={"brand": {"exists": False}})
def test_filters_and_facets_match_a_brute_force_count(
    products: list[dict[str, Any]], filters: dict[str, Any]
) -> None:
    with catalog_of(products) as catalog:
        db = catalog.db
        columns = product_columns(db)
        conditions = parse_conditions(filters, columns)
        assert sorted(product_sql.select_ids(db, conditions)) == oracle_ids(products, filters)
        assert product_sql.count(db, conditions) == len(oracle_ids(products, filters))
        facets = (Facet("category"), Facet("brand"), Facet("in_stock"), Facet("tags"))
        bands = ((None, 50.0), (50.0, 100.0), (100.0, None), (20.0, 30.0))
        got = facet_counts(
            db, (*facets, Facet("price", bands)), conditions, columns, None, CatalogCache()
        )
        rows = dict(enumerate(products))
        for facet in facets:
            passing = [rows[int(i[4:])] for i in oracle_ids(products, filters, facet.column)]
            values = [  # a product counts once per value (tags may repeat a spelling)
                v
                for row in passing
                for v in {
                    norm(t)
                    for t in (row["tags"] if facet.column == "tags" else [row[facet.column]])
                }
            ]
            want = Counter(v for v in values if v is not None)
            shown = Counter()
            for entry in got[facet.column]:
                shown[norm(entry["value"])] += entry["count"]
            assert shown == want, facet.column
        priced = [
            rows[int(i[4:])]["price"]
            for i in oracle_ids(products, filters, "price")
            if rows[int(i[4:])]["price"] is not None
        ]
        for (low, high), entry in zip(bands, got["price"], strict=True):
            inside = [p for p in priced if (low is None or p >= low) and (high is None or p < high)]
            assert entry == {"from": low, "to": high, "count": len(inside)}


@settings(max_examples=40, deadline=None)
@given(
    products=products_strategy,
    sort=st.sampled_from(["price:asc", "price:desc", "brand:asc,price:desc", "category:desc"]),
    page=st.integers(1, 7),
)
def test_sorted_pages_follow_the_sort_keys_then_the_sku(
    products: list[dict[str, Any]], sort: str, page: int
) -> None:
    with catalog_of(products) as catalog:
        keys = sort_keys(parse_sort(sort), product_columns(catalog.db))
        pages, offset = [], 0
        while chunk := product_sql.select_ids(
            catalog.db, [], order=keys, limit=page, offset=offset
        ):
            pages.extend(chunk)
            offset += page
        order = [f"SKU-{n:03d}" for n in range(len(products))]
        for spec in reversed(sort.split(",")):  # stable sorts, last key first
            column, _, direction = spec.partition(":")

            def value(sku: str, column: str = column) -> Any:
                return norm(products[int(sku[4:])][column])

            present = [sku for sku in order if value(sku) is not None]
            present.sort(key=value, reverse=direction == "desc")
            order = present + [sku for sku in order if value(sku) is None]  # missing: last
        assert pages == order  # every product once, no page overlaps


def test_value_facets_keep_the_top_twenty_and_count_the_rest_as_other() -> None:
    products = [{"category": f"c{n:02d}", "brand": None, "price": None, "in_stock": None,
                 "tags": []} for n in range(25) for _ in range(1 + (n < 3))]  # fmt: skip
    with catalog_of(products) as catalog:
        columns = product_columns(catalog.db)
        got = facet_counts(catalog.db, (Facet("category"),), [], columns, None, CatalogCache())[
            "category"
        ]
    assert got[:3] == [{"value": f"c0{n}", "count": 2} for n in range(3)]
    assert len(got) == 21 and got[-1] == {"other": True, "count": 5}


def test_quantile_bands_cover_every_priced_product_once() -> None:
    prices = [1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144]
    products = [{"category": "x", "brand": None, "price": p, "in_stock": None, "tags": []}
                for p in prices]  # fmt: skip
    with catalog_of(products) as catalog:
        columns = product_columns(catalog.db)
        got = facet_counts(catalog.db, (Facet("price"),), [], columns, None, CatalogCache())[
            "price"
        ]
    assert got[0]["from"] is None and got[-1]["to"] is None
    assert [a["to"] for a in got[:-1]] == [b["from"] for b in got[1:]]  # contiguous
    assert sum(band["count"] for band in got) == len(prices)
    for band in got:
        inside = [p for p in prices if (band["from"] is None or p >= band["from"])
                  and (band["to"] is None or p < band["to"])]  # fmt: skip
        assert band["count"] == len(inside) > 0


def test_text_syntax_makes_or_not_and_exists_filters() -> None:
    pairs = [("category", "dogs"), ("category", "cats"), ("brand!", "acme"), ("price_min", "5")]
    assert filters_from_pairs(pairs) == {
        "category": ["dogs", "cats"],
        "brand!": ["acme"],
        "price_min": "5",
    }
    with pytest.raises(InvalidQueryError, match="2 times"):
        filters_from_pairs([("price_min", "1"), ("price_min", "2")])


@pytest.mark.parametrize(
    ("filters", "message"),
    [
        ({"colour": "red"}, "unknown filter 'colour'"),
        ({"price": "cheap"}, "needs a number"),
        ({"in_stock": "maybe"}, "true or false"),
        ({"brand": {"like": "a"}}, "use one of"),
        ({"brand": {"exists": "perhaps"}}, "exists takes true or false"),
        ({"category": []}, "1 to 100 values"),
    ],
)
def test_bad_filters_say_what_is_wrong(filters: dict, message: str) -> None:
    with catalog_of([]) as catalog, pytest.raises(InvalidQueryError, match=message):
        parse_conditions(filters, product_columns(catalog.db))


def test_facet_sort_and_boost_syntax() -> None:
    assert parse_facets("category,price:0-50,50-100,100-") == (
        Facet("category"),
        Facet("price", ((0.0, 50.0), (50.0, 100.0), (100.0, None))),
    )
    assert [key.echo() for key in parse_sort(["price:desc,title", "brand:asc"])] == [
        "price:desc",
        "title:asc",
        "brand:asc",
    ]
    assert parse_boosts("none") == ()
    for bad in ("price:50-10", "price:abc", "price:1e999-"):
        with pytest.raises(InvalidQueryError, match="band"):
            parse_facets(bad)
    with pytest.raises(InvalidQueryError, match="asc or desc"):
        parse_sort("price:up")
    with pytest.raises(InvalidQueryError, match="COLUMN:FACTOR"):
        parse_boosts("in_stock:lots")


def test_boosts_multiply_when_true_and_add_a_scaled_log() -> None:
    boosts = parse_boosts(["in_stock:1.5", "sales:log:0.1"])
    assert boosted(0.4, {"in_stock": True, "sales": 9}, boosts) == pytest.approx(
        0.4 * 1.5 + 0.1 * math.log(10)
    )
    assert boosted(0.4, {"in_stock": False, "sales": -3}, boosts) == pytest.approx(0.4)
    assert boosted(0.4, {}, parse_boosts("sales:log")) == 0.4


def test_fold_ignores_case_and_accents() -> None:
    assert folding.fold("Zoë ÉCOLE Straße") == "zoe ecole strasse"
    assert folding.fold_value(["Äb", 3, True]) == ["ab", "3", "true"]


def test_range_objects_and_suffixes_select_the_same_products() -> None:
    products = [{**NO_BRAND, "price": price} for price in (5, 10, 15.5, 20, None)]
    with catalog_of(products) as catalog:
        columns = product_columns(catalog.db)

        def select(filters: dict) -> list[str]:
            return sorted(product_sql.select_ids(catalog.db, parse_conditions(filters, columns)))

        by_suffix = select({"price_min": 10, "price_max": "20"})
        assert (
            by_suffix
            == select({"price": {"min": 10, "max": 20}})
            == ["SKU-001", "SKU-002", "SKU-003"]
        )
        assert select({"price": {"min": 16}}) == ["SKU-003"]
        assert select({"price": [5, "20"]}) == ["SKU-000", "SKU-003"]


def test_cached_browse_counts_follow_writes_from_any_connection() -> None:
    products = [{**NO_BRAND, "category": "dogs"}]
    with catalog_of(products) as catalog:
        columns = product_columns(catalog.db)
        cache = CatalogCache()

        def counts() -> list[dict]:
            facets = (Facet("category"),)
            got = facet_counts(catalog.db, facets, [], columns, None, cache, cache_key="all")
            return got["category"]

        assert counts() == [{"value": "dogs", "count": 1}]
        other = Catalog(catalog.path)  # a second connection, as the HTTP writer has
        with other.transaction():
            other.put_product("SKU-900", "x", "h", {"title": "x", "category": "cats"})
        other.close()
        assert counts() == [{"value": "cats", "count": 1}, {"value": "dogs", "count": 1}]
        with catalog.transaction():  # this connection's own write
            catalog.put_product("SKU-901", "y", "h", {"title": "y", "category": "cats"})
        assert counts() == [{"value": "cats", "count": 2}, {"value": "dogs", "count": 1}]
