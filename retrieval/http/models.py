"""Request and response shapes of the HTTP API: pydantic models (the only place pydantic is
used). params.py turns raw request parts into SearchRequest fields."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    field_validator,
    model_validator,
)

from ..config import MAX_K
from ..search.queries import MAX_PARTS
from ..search.requests import DEFAULT_TEXT_WEIGHT

Target = Literal["images", "texts", "products"]
Mode = Literal["semantic", "keyword", "hybrid"]
MODE_HELP = (
    "semantic (CLIP), keyword (BM25 over file/folder names, titles, texts, captions) or hybrid "
    "(reciprocal rank fusion of both, k=60); default: hybrid for text queries of an index with "
    "a product catalog, else semantic. Image queries are semantic."
)

# CLIP's tokenizer keeps 77 tokens (roughly 300 characters of English); 2,000 characters leaves
# room for any real query while keeping tokenisation cost and cache keys small.
MAX_QUERY_CHARS = 2000
# Equality and range filters together; a catalog with more filterable columns than this is
# unusual, and the bound keeps one request from building an enormous SQL WHERE clause.
MAX_FILTERS = 32
# service.check_k allows offset + k <= MAX_K * 10; a schema cannot relate two fields, so the
# offset alone is bounded such that every k it allows still fits.
MAX_OFFSET = MAX_K * 10 - MAX_K
# At least one non-space character: a blank query cannot be searched for.
NOT_BLANK = r"\S"

# Strict, so that `true` stays a boolean (for boolean columns) rather than read as 1, and 2020
# stays an int (it compares as the text "2020" against a keyword column, not "2020.0").
FilterValue = StrictBool | StrictStr | StrictInt | StrictFloat
# A value, any of several (OR), or an operator object: {"not": V or [V, ...]}, {"exists": true},
# {"min": N, "max": N} (search/merch.py checks the operators, 422 when unknown).
FilterSpec = FilterValue | list[FilterValue] | dict[str, FilterValue | list[FilterValue]]
Specs = str | list[str]


def not_a_bool(value: Any) -> Any:
    """For number fields of JSON bodies: pydantic's lax mode reads `true` as 1 (schemathesis
    found `"min_score": true` searched with min_score 1.0). Not StrictInt/StrictFloat, which
    would also refuse `"k": 10.0` (an integer by JSON Schema's rules) and, on optional fields,
    write their bounds into the schema under pydantic's names (ge/le) instead of minimum/maximum."""
    if isinstance(value, bool):
        raise ValueError("expected a number, not true or false")
    return value


class ErrorOut(BaseModel):
    """Every 4xx/5xx answer: a machine-readable `error` code and a message saying what to fix."""

    error: str = Field(description="short code, e.g. invalid_query, image_decode, overloaded")
    message: str = Field(description="what was wrong and how to fix it")
    reason: str | None = Field(None, description="image errors: truncated, not-an-image, ...")
    details: list[dict[str, Any]] | None = Field(None, description="validation errors, per field")


class PartIn(BaseModel):
    """One part of a composed query: exactly one of `text`, `image_b64` and `item`, with a
    signed weight (negative subtracts it)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "oneOf": [{"required": ["text"]}, {"required": ["image_b64"]}, {"required": ["item"]}]
        },
    )

    text: str | None = Field(None, max_length=MAX_QUERY_CHARS, pattern=NOT_BLANK)
    image_b64: str | None = Field(None, description="an image file's bytes, base64")
    item: int | None = Field(
        None, ge=0, le=2**63 - 1, description="an indexed item's id: its stored vector is used"
    )
    weight: float = Field(1.0, allow_inf_nan=False, ge=-100.0, le=100.0, examples=[-0.5])

    _numbers = field_validator("item", "weight", mode="before")(not_a_bool)

    @model_validator(mode="after")
    def _one_source(self) -> PartIn:
        given = [n for n in ("text", "image_b64", "item") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError(
                f"a part needs exactly one of text, image_b64 and item, got {given or 'none'}"
            )
        return self


class SearchBody(BaseModel):
    """POST /search: search by `text`, by `image_b64`, or by weighted `parts` (at most one;
    none browses the products passing `filters`)."""

    model_config = ConfigDict(extra="forbid")

    parts: list[PartIn] | None = Field(
        None,
        min_length=1,
        max_length=MAX_PARTS,
        description="a composed query: the normalised weighted sum of the parts' vectors",
        examples=[[{"text": "red dress"}, {"text": "stripes", "weight": -0.5}, {"item": 42}]],
    )
    min_score: float | None = Field(
        None, ge=-1.0, le=1.0, allow_inf_nan=False, description="drop hits below this cosine"
    )
    collapse: StrictBool = Field(False, description="fold near-duplicates of a better hit into it")

    text: str | None = Field(
        None, max_length=MAX_QUERY_CHARS, pattern=NOT_BLANK, examples=["red running shoes"]
    )
    image_b64: str | None = Field(
        None, description="the image file's bytes, base64 (a data: URL prefix is allowed)"
    )
    k: int = Field(10, ge=1, le=MAX_K, description="results per page")
    offset: int = Field(0, ge=0, le=MAX_OFFSET, description="results to skip (paging)")
    target: Target | None = Field(
        None, description="default: products when the index has a catalog, else images"
    )
    filters: dict[str, FilterSpec] = Field(
        default_factory=dict,
        max_length=MAX_FILTERS,
        description="products only: COLUMN equals a value (text ignores case and accents) or "
        'any of a list; {"not": V} none of them; {"exists": true|false}; COLUMN_min / '
        'COLUMN_max bound a number, e.g. {"category": ["shoes", "boots"], "price_max": 50, '
        '"brand": {"not": "acme"}}',
    )
    facets: Specs | None = Field(
        None,
        description="products: facet counts per column, bands for numbers given or from the "
        "quantiles",
        examples=[["category", "brand", "price:0-50,50-100,100-"]],
    )
    sort: Specs | None = Field(
        None, description="products: sort keys (default relevance)", examples=[["price:asc"]]
    )
    boost: Specs | None = Field(
        None,
        description="products: `in_stock:1.2` multiplies when true, `popularity:log[:SCALE]` "
        "adds SCALE * log1p(value) (SCALE 0.01 by default); none: the server's default boosts",
        examples=[["in_stock:1.2", "popularity:log"]],
    )
    text_weight: float = Field(
        DEFAULT_TEXT_WEIGHT,
        ge=0.0,
        le=1.0,
        allow_inf_nan=False,
        description="products, text queries: score = w * title match + (1 - w) * image match",
    )
    mode: Mode | None = Field(None, description=MODE_HELP)

    _numbers = field_validator("k", "offset", "min_score", "text_weight", mode="before")(not_a_bool)


class PartEcho(BaseModel):
    """A composed query's part as the server understood it."""

    text: str | None = None
    image: str | None = Field(None, description="'base64' for an uploaded part")
    item: int | None = None
    weight: float


class QueryOut(BaseModel):
    """The search as the server understood it (target resolved)."""

    text: str | None = None
    image: str | None = Field(None, description="upload file name, or 'base64'")
    target: Target
    k: int
    offset: int
    filters: dict[str, Any] | None = None
    text_weight: float | None = None
    parts: list[PartEcho] | None = Field(None, description="composed queries: the parts")
    like: int | None = Field(None, description="more like this item (left out of the results)")
    min_score: float | None = None
    collapse: bool | None = None
    facets: list[str] | None = None
    sort: list[str] | None = None
    boosts: list[str] | None = None
    mode: Mode | None = Field(
        None, description="the search mode used (the default resolved); none when browsing"
    )


class HitOut(BaseModel):
    """One result, as `mmsearch query --json` prints it; product hits add every catalog column
    (price, category, ...) beside product_id and title."""

    model_config = ConfigDict(extra="allow")

    rank: int
    score: float
    id: int = Field(description="item id: GET /items/{id}, /items/{id}/image")
    path: str | None = Field(None, description="image hits: the indexed file")
    text: str | None = Field(None, description="text hits: the indexed text")
    caption: str | None = Field(None, description="image hits: the generated caption, if any")
    signals: dict[str, int] | None = Field(
        None,
        description="keyword and hybrid modes: the hit's 1-based rank in each ranking that "
        'found it, e.g. {"semantic": 3, "keyword": 1}; `score` is then BM25 (keyword) or the '
        "reciprocal rank fusion score (hybrid) instead of a cosine similarity",
    )
    product_id: str | None = None
    title: str | None = None
    duplicates: list[int] | None = Field(
        None, description="with collapse: ids of near-duplicates folded into this hit"
    )


class SearchOut(BaseModel):
    """A page of search results, best first."""

    query: QueryOut
    results: list[HitOut]
    has_more: bool = Field(description="true when a next page (offset + k) has results")
    total: int | None = Field(
        None,
        description="browsing and product searches with facets, sort or boost: how many "
        "products match in all (query searches: at most 1000, at or above the cutoff)",
    )
    facets: dict[str, list[dict[str, Any]]] | None = Field(
        None,
        description='per column: [{"value": v, "count": n}, ..., {"other": true, "count": n}] '
        'or, for numbers, [{"from": a, "to": b, "count": n}] (from inclusive, to exclusive, '
        "null an open end); each facet ignores its own column's filters",
    )
    took_ms: float = Field(description="server time for the search, milliseconds")


class ItemOut(BaseModel):
    """One indexed item: an image file or a text, with its product's fields when it has one."""

    id: int
    collection: Literal["images", "texts"]
    path: str | None = None
    text: str | None = None
    product_id: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    image_url: str | None = Field(None, description="where to fetch the image (image items)")


class DuplicateMemberOut(BaseModel):
    id: int
    path: str | None = None
    score: float = Field(description="cosine to the group's first (best) image; 1.0 for it")


class DuplicateGroupOut(BaseModel):
    items: list[DuplicateMemberOut] = Field(description="best representative first")


class DuplicatesOut(BaseModel):
    """Near-duplicate image groups, as `mmsearch duplicates --json` prints them."""

    threshold: float
    groups: list[DuplicateGroupOut] = Field(description="largest group first")


class HealthOut(BaseModel):
    """Liveness: the process answers."""

    status: Literal["ok"] = "ok"


class ReadyOut(BaseModel):
    """Readiness: the index is open and the model is loaded."""

    ready: bool


class ModelOut(BaseModel):
    """The model the index was built with."""

    model_config = ConfigDict(extra="allow")

    name: str
    pretrained: str | None = None
    dim: int


class CollectionOut(BaseModel):
    """One collection (images or texts) of the index."""

    model_config = ConfigDict(extra="allow")

    count: int
    index_type: str | None = None
    faiss: str | None = None


class ServerOut(BaseModel):
    """Serving state: load, limits, and the query-embedding cache."""

    in_flight: int
    max_concurrency: int
    max_queue: int
    text_batches: int | None = None
    texts_embedded: int | None = None
    cache_hits: int | None = None
    cache_misses: int | None = None
    cache_entries: int | None = None


class StatsOut(BaseModel):
    """What the index holds, and which product columns can be filtered on."""

    model_config = ConfigDict(extra="allow")

    model: ModelOut
    collections: dict[str, CollectionOut]
    products: int
    has_catalog: bool
    product_columns: dict[str, Literal["number", "boolean", "keyword", "text", "list"]] = Field(
        default_factory=dict,
        description="filterable columns and their types: every type by equality (true/false "
        "for booleans, one element for lists), numbers also by COLUMN_min/COLUMN_max",
    )
    generation: int | None = None
    size_bytes: int | None = None
    server: ServerOut
