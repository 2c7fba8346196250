"""What the storefront page reads beyond search: `GET /config` (the `serve --currency` setting)
and `GET /main-images` (each product's first listed image that is indexed)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from clirun import invoke, run_ok
from fastapi.testclient import TestClient
from httpkit import open_app
from testdata import write_catalog

from retrieval.config import ServeConfig
from retrieval.http.storefront import MAX_SKUS

BROKEN = {
    "id": "SKU-BROKEN",
    "title": "hats model broken",
    "image": "img/missing.png|img/img_000.png",  # the first image cannot be read
    "category": "hats",
    "price": "9.5",
    "brand": "acme",
}


@pytest.fixture(scope="module")
def shop_index(tiny_model: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("storefront-api")
    catalog = write_catalog(root / "shop", extra=[BROKEN])
    run_ok("index", "--catalog", catalog, "--model", tiny_model, "--index", root / "index",
           "--quiet")  # fmt: skip
    return root / "index"


@pytest.fixture(scope="module")
def shop(shop_index: Path) -> Iterator[TestClient]:
    config = ServeConfig(currency="EUR")
    with open_app(shop_index, config) as (app, _), TestClient(app) as client:
        yield client


def test_config_says_the_currency_given_to_serve(shop: TestClient, shop_index: Path) -> None:
    assert shop.get("/config").json() == {"currency": "EUR"}
    with open_app(shop_index) as (app, _), TestClient(app) as client:
        assert client.get("/config").json() == {"currency": None}


def test_main_image_is_the_first_listed_image_that_was_indexed(shop: TestClient) -> None:
    skus = ["SKU-000", "SKU-004", "SKU-BROKEN", "NO-SUCH-SKU"]
    answer = shop.get("/main-images", params=[("sku", sku) for sku in skus])
    assert answer.status_code == 200, answer.text
    main = answer.json()
    assert set(main) == {"SKU-000", "SKU-004", "SKU-BROKEN"}  # unknown SKUs are left out
    for sku in main:
        images = shop.get(f"/products/{sku}").json()["images"]
        indexed = [image["item_id"] for image in images if image["status"] == "embedded"]
        assert main[sku] == indexed[0]
        assert shop.get(f"/items/{main[sku]}/image?size=64").status_code == 200
    broken = shop.get("/products/SKU-BROKEN").json()["images"]
    assert broken[0]["status"] != "embedded" and main["SKU-BROKEN"] == broken[1]["item_id"]


def test_main_images_refuses_no_sku_and_too_many(shop: TestClient) -> None:
    assert shop.get("/main-images").status_code == 422
    many = [("sku", f"SKU-{n}") for n in range(MAX_SKUS + 1)]
    answer = shop.get("/main-images", params=many)
    assert answer.status_code == 422 and "sku" in answer.json()["message"]


def test_serve_refuses_a_currency_that_is_no_iso_code(shop_index: Path) -> None:
    result = invoke("serve", "--index", shop_index, "--currency", "euro")
    assert result.exit_code == 2
    assert "--currency 'euro' is not an ISO 4217 currency code" in result.output
    assert "Traceback" not in result.output
