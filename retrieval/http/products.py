"""Product routes: GET/PUT/PATCH/DELETE /products/{sku}, POST /products/bulk (NDJSON), GET/PUT
/schema. Thin: parse, call the ProductWriter in a worker thread, answer."""

from __future__ import annotations

import json
import uuid
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Path, Query, Request
from fastapi.responses import JSONResponse, Response

from ..ingest.product_api import ProductWriter
from ..ingest.products import MAX_SKU_CHARS
from ..storage.audit import Actor
from .limits import AdmissionLimiter

# `:path` so that a percent-encoded slash (`/products/A%2FB-7`, which the server decodes
# before routing) still names one SKU, `A/B-7`.
SKU_ROUTE = "/products/{sku:path}"
# A client's X-Request-ID is kept in the audit log up to this length.
MAX_REQUEST_ID = 128
SkuParam = Annotated[
    str,
    Path(
        min_length=1,
        max_length=MAX_SKU_CHARS,
        description="the product's SKU, one percent-encoded path segment",
    ),
]
RefetchParam = Annotated[
    bool,
    Query(
        description="fetch image URLs again in full, even when a stored copy is current "
        "(by default the server is asked whether they changed: If-None-Match / "
        "If-Modified-Since)"
    ),
]
ROW_EXAMPLE = {
    "title": "Trail shoe",
    "images": ["data:image/png;base64,iVBORw0..."],
    "price": 59.9,
    "category": "shoes",
}
RowBody = Annotated[
    dict[str, Any],
    Body(description="a catalog row without id (JSON object)", examples=[ROW_EXAMPLE]),
]


def product_routes(writer: ProductWriter, admission: AdmissionLimiter) -> APIRouter:
    """The product routes over `writer` (its writes share the search admission limit)."""
    api = APIRouter(tags=["products"])

    @api.post("/products/bulk")
    async def bulk(
        request: Request,
        mode: Annotated[Literal["upsert", "sync"], Query()] = "upsert",
        refetch: RefetchParam = False,
    ) -> dict[str, Any]:
        """NDJSON, one catalog row (with `id`) per line. `mode=sync` deletes products not in
        the body. Every line's outcome (created, replaced, unchanged, failed with a reason) and
        the counts; a bad line never stops the others."""
        raw = await request.body()
        lines = list(_ndjson(raw))

        def work() -> dict[str, Any]:
            report = writer.bulk(lines, sync=mode == "sync", actor=actor(request), refetch=refetch)
            outcomes = sorted(report.outcomes, key=lambda o: (o.line is None, o.line or 0))
            counts = {
                action: report.count(action)
                for action in ("created", "replaced", "unchanged", "deleted", "failed")
            }
            return {"results": [o.to_dict() for o in outcomes], "counts": counts}

        return await admission.run(work)

    @api.get(SKU_ROUTE)
    async def get_product(sku: SkuParam) -> dict[str, Any]:
        """The product as stored, every image with its item id and state."""
        return await admission.run(lambda: writer.get(sku))

    @api.put(SKU_ROUTE)
    async def put_product(
        request: Request, sku: SkuParam, body: RowBody, refetch: RefetchParam = False
    ) -> JSONResponse:
        """Create (201) or replace (200) one product; the answer is the product as stored.
        Image URLs fetched before are only downloaded again when they changed (a conditional
        GET), or always with `refetch=true`."""
        created, view = await admission.run(
            lambda: writer.put(sku, body, actor(request), refetch=refetch)
        )
        return JSONResponse(view, status_code=201 if created else 200)

    @api.patch(SKU_ROUTE)
    async def patch_product(request: Request, sku: SkuParam, body: RowBody) -> dict[str, Any]:
        """Merge fields (`null` removes one; `images` replaces the list). A field-only patch
        runs no model."""
        return await admission.run(lambda: writer.patch(sku, body, actor(request)))

    @api.delete(SKU_ROUTE, status_code=204)
    async def delete_product(request: Request, sku: SkuParam) -> Response:
        """Delete one product: 204, or 404 when unknown."""
        await admission.run(lambda: writer.delete(sku, actor(request)))
        return Response(status_code=204)

    @api.get("/schema")
    async def get_schema() -> dict[str, str]:
        """Column -> type (number, boolean, keyword, text, list)."""
        return await admission.run(writer.schema)

    @api.put("/schema")
    async def put_schema(
        request: Request,
        body: Annotated[dict[str, str], Body(examples=[{"in_stock": "boolean"}])],
    ) -> dict[str, str]:
        """Add columns or set types of columns no product uses yet; the whole schema."""
        return await admission.run(lambda: writer.set_schema(body, actor(request)))

    @api.get("/audit")
    async def get_audit(
        since: Annotated[float | None, Query(description="unix time; entries at or after")] = None,
        limit: Annotated[int, Query(ge=1, le=10000)] = 1000,
    ) -> dict[str, Any]:
        """The audit log (admin keys): every product change with time, key name, action,
        SKU, outcome and request id, oldest first."""
        return {"entries": await admission.run(lambda: writer.audit_log(since, limit))}

    return api


def actor(request: Request) -> Actor:
    """Who makes this request: the key's name (keys.py middleware) and the request's id (its
    X-Request-ID header when sane, else a new one)."""
    given = request.headers.get("x-request-id", "")
    ok = 0 < len(given) <= MAX_REQUEST_ID and given.isprintable()
    request_id = given if ok else uuid.uuid4().hex
    return Actor(getattr(request.state, "key_name", "anonymous"), request_id)


def _ndjson(raw: bytes) -> list[tuple[int, Any]]:
    """(line number, object or ValueError) per non-blank line."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        return [(1, ValueError(f"body is not UTF-8: {err}"))]
    rows: list[tuple[int, Any]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append((number, json.loads(line)))
        except ValueError as err:
            rows.append((number, ValueError(f"not valid JSON: {err}")))
    return rows


__all__ = ["product_routes"]
