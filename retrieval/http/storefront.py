"""What the storefront page needs beyond the search API: the shop's display settings
(`GET /config`: the `--currency` prices are in) and each product's main image (`GET
/main-images?sku=A&sku=B`: the first listed image that was indexed, so a card shows the
product's own photo and not only the photo that matched the query)."""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import APIRouter, Query

from ..errors import InvalidOptionError
from ..search.service import SearchService
from ..types import IMAGES
from .limits import AdmissionLimiter

# ISO 4217 codes are three capital letters; the page formats prices with Intl.NumberFormat,
# which throws on anything else.
CURRENCY_CODE = re.compile(r"[A-Z]{3}")
# One page of results asks for its cards' images at once; MAX_K is 1000, a page far fewer.
MAX_SKUS = 100


def check_currency(code: str | None) -> str | None:
    """`code` upper-cased when it is an ISO 4217 code (EUR, USD, JPY), None for none."""
    if not code:
        return None
    upper = code.strip().upper()
    if not CURRENCY_CODE.fullmatch(upper):
        raise InvalidOptionError(
            f"--currency {code!r} is not an ISO 4217 currency code; give three letters, "
            "e.g. --currency EUR"
        )
    return upper


def main_images(service: SearchService, skus: list[str]) -> dict[str, int | None]:
    """SKU -> item id of its first listed image that is indexed (None: no usable image);
    unknown SKUs are left out."""
    catalog = service.store.catalog
    records = catalog.get_product_records(skus)
    items = catalog.get_product_items(list(records))
    found: dict[str, int | None] = {}
    for sku, record in records.items():
        ids = {item.path: item.id for item in items.get(sku, []) if item.collection == IMAGES}
        listed = (ids.get(state["source"]) for state in record.images)
        found[sku] = next((item_id for item_id in listed if item_id is not None), None)
    return found


def storefront_routes(
    service: SearchService, admission: AdmissionLimiter, currency: str | None
) -> APIRouter:
    """`GET /config` and `GET /main-images` for the page at `/`."""
    api = APIRouter(tags=["storefront"])

    @api.get("/config")
    async def get_config() -> dict[str, Any]:
        """Display settings for the search page: `currency` (ISO 4217, from `serve
        --currency`; null when not set)."""
        return {"currency": currency}

    @api.get("/main-images")
    async def get_main_images(
        sku: Annotated[
            list[str],
            Query(min_length=1, max_length=MAX_SKUS, description="a product's SKU (repeatable)"),
        ],
    ) -> dict[str, int | None]:
        """SKU -> the item id of the product's main image (its first listed image that is
        indexed; null when none is), for `/items/{id}/image`. Unknown SKUs are left out."""
        return await admission.run(lambda: main_images(service, sku))

    return api


__all__ = ["check_currency", "main_images", "storefront_routes"]
