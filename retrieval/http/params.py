"""Request parameters: the query-parameter types shared by the search routes, and the helpers
that turn raw request parts (query strings, base64, uploads) into SearchRequest fields."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from typing import Annotated

from fastapi import Path as PathParam
from fastapi import Query, Request
from starlette.exceptions import HTTPException

from ..config import MAX_K
from ..errors import ImageDecodeError, ImageTooLargeError, InvalidQueryError
from ..images import header_size
from .models import MAX_FILTERS, MAX_OFFSET, MODE_HELP, Mode, Target

SEARCH_PARAMS = frozenset(
    {"q", "k", "offset", "target", "text_weight", "min_score", "collapse", "mode"}
)
UPLOAD_PARAMS = frozenset({"k", "offset", "target", "min_score", "collapse"})
FILTER_HELP = (
    "Any other query parameter is a product filter: COLUMN=VALUE for equality, COLUMN_min=N / "
    "COLUMN_max=N for numeric ranges (see /stats for the columns)."
)
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


def query_filters(request: Request, known: frozenset[str]) -> dict[str, str]:
    """Query parameters other than `known`, as product filters."""
    filters: dict[str, str] = {}
    for name in request.query_params:
        if name in known:
            continue
        values = request.query_params.getlist(name)
        if len(values) > 1:
            raise InvalidQueryError(f"filter {name!r} is given {len(values)} times; give it once")
        filters[name] = values[0]
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
