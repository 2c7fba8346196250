"""Request parameters: the query-parameter types shared by the search routes, and the helpers
that turn raw request parts (query strings, base64, uploads) into SearchRequest fields."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from typing import Annotated, Any

from fastapi import Path as PathParam
from fastapi import Query, Request
from starlette.exceptions import HTTPException

from ..config import MAX_K
from ..errors import ImageDecodeError, ImageTooLargeError, InvalidQueryError
from ..images import header_size
from ..search.merch import filters_from_pairs
from .models import MAX_FILTERS, MAX_OFFSET, MODE_HELP, Mode, Target

MERCH_PARAMS = frozenset({"facets", "sort", "boost"})
SEARCH_PARAMS = (
    frozenset({"q", "k", "offset", "target", "text_weight", "min_score", "collapse", "mode"})
    | MERCH_PARAMS
)
UPLOAD_PARAMS = frozenset({"k", "offset", "target", "min_score", "collapse"}) | MERCH_PARAMS
BROWSE_PARAMS = frozenset({"k", "offset"}) | MERCH_PARAMS
FILTER_HELP = (
    "Any other query parameter is a product filter (see /stats for the columns): COLUMN=VALUE "
    "for equality (text ignores case and accents; repeat it for any of several values), "
    "COLUMN!=VALUE for none of them, COLUMN_exists=true|false, COLUMN_min=N / COLUMN_max=N "
    "for numeric ranges."
)
FacetsParam = Annotated[
    list[str] | None,
    Query(
        description="products: facet counts, e.g. `category,brand,price` or bands "
        "`price:0-50,50-100,100-` (repeatable)"
    ),
]
SortParam = Annotated[
    list[str] | None,
    Query(description="products: `price:asc`, `price:desc,title:asc` (default: relevance)"),
]
BoostParam = Annotated[
    list[str] | None,
    Query(
        description="products: `in_stock:1.2` (multiply when true), `popularity:log[:SCALE]` "
        "(add SCALE * log1p(value), SCALE 0.01 by default); `none`: not even the server's"
    ),
]
KParam = Annotated[int, Query(ge=1, le=MAX_K, description="results per page")]
OffsetParam = Annotated[int, Query(ge=0, le=MAX_OFFSET, description="results to skip")]
TargetParam = Annotated[
    Target | None,
    Query(description="default: products when the index has a catalog, else images"),
]
ModeParam = Annotated[Mode | None, Query(description=MODE_HELP)]
WeightParam = Annotated[
    float, Query(ge=0.0, le=1.0, allow_inf_nan=False, description="products: title weight")
]
ItemId = Annotated[int, PathParam(ge=0, le=2**63 - 1, description="item id from a result")]
MinScoreParam = Annotated[
    float | None,
    Query(ge=-1.0, le=1.0, allow_inf_nan=False, description="drop hits scoring below this cosine"),
]
CollapseParam = Annotated[
    bool, Query(description="fold near-duplicates of a better hit into it (`duplicates`)")
]
ThresholdParam = Annotated[
    float,
    Query(gt=0.0, le=1.0, allow_inf_nan=False, description="cosine at or above which two images "
          "count as near-duplicates"),
]  # fmt: skip
SizeParam = Annotated[
    int | None, Query(ge=16, le=1024, description="thumbnail: longest side in pixels")
]


def query_filters(request: Request, known: frozenset[str]) -> dict[str, Any]:
    """Query parameters other than `known`, as product filters (merch.filters_from_pairs)."""
    pairs = [(name, value) for name, value in request.query_params.multi_items()]
    filters = filters_from_pairs((name, value) for name, value in pairs if name not in known)
    if len(filters) > MAX_FILTERS:
        raise InvalidQueryError(f"at most {MAX_FILTERS} filters per query, got {len(filters)}")
    return filters


def decode_base64(data: str, max_bytes: int) -> bytes:
    """The bytes of a base64 image (a `data:image/...;base64,` prefix is allowed)."""
    if data.startswith("data:"):
        data = data.partition(",")[2]
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as err:
        raise HTTPException(400, f"image_b64 is not valid base64 ({err})") from err
    check_upload_size(raw, max_bytes)
    return raw


def check_upload_size(data: bytes, max_bytes: int) -> None:
    """413 for an image over the byte cap."""
    if len(data) > max_bytes:
        raise ImageTooLargeError(
            f"the image is over this server's limit of {max_bytes:,} bytes; send a smaller "
            "file (or raise --max-upload-mb)"
        )


def image_megapixels(data: bytes, max_megapixels: float) -> float:
    """Megapixels of an uploaded image from its header alone (nothing is decoded), or 0 when
    the bytes are no image (load_image then says why); 422 over the per-image cap."""
    size = header_size(data)
    if size is None:
        return 0.0
    width, height = size
    megapixels = width * height / 1e6
    if megapixels > max_megapixels:
        raise ImageDecodeError(
            "<upload>",
            "too-many-pixels",
            f"{width}x{height} is {megapixels:.1f} megapixels; this server accepts at most "
            f"{max_megapixels:g} (--max-megapixels)",
        )
    return megapixels


def request_megapixels(images: Sequence[bytes], max_megapixels: float) -> float:
    """Megapixels of all of a request's uploaded images together; 422 over the cap, which
    holds per request too: 16 parts of a 49 Mpx PNG took 10 s of decoding in one request."""
    total = sum(image_megapixels(data, max_megapixels) for data in images)
    if total > max_megapixels:
        raise ImageDecodeError(
            "<upload>",
            "too-many-pixels",
            f"the query's {len(images)} images hold {total:.1f} megapixels together; this "
            f"server decodes at most {max_megapixels:g} per request (--max-megapixels)",
        )
    return total
