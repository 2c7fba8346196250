"""The HTTP app: `create_app(service, config)` builds a FastAPI app over one SearchService.

Handlers stay thin: they turn requests into SearchRequests, run the service in a worker thread
(admission-limited, so overload is a 429 and never a hang), and return the same hit dicts as
`mmsearch query --json`. MmsearchError and every other failure become JSON errors in one table
(ERROR_STATUS) and the handlers registered next to it."""

from __future__ import annotations

import logging
import mimetypes
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Annotated, Any

import anyio.to_thread
from fastapi import APIRouter, Depends, FastAPI, File, Query, Request, UploadFile
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware

from . import __version__
from .batching import BatchingTextEncoder, LruCache
from .catalog import IMAGES
from .config import ServeConfig
from .errors import (
    ImageDecodeError,
    ImageTooLargeError,
    IndexBusyError,
    IndexCorruptError,
    IndexMismatchError,
    IndexNotFoundError,
    InputFileError,
    InvalidQueryError,
    MmsearchError,
    ModelUnavailableError,
)
from .http_models import (
    MAX_OFFSET,
    MAX_QUERY_CHARS,
    NOT_BLANK,
    ErrorOut,
    HealthOut,
    ItemOut,
    ReadyOut,
    SearchBody,
    SearchOut,
    StatsOut,
    Target,
    check_megapixels,
    check_upload_size,
    decode_base64,
    query_echo,
    query_filters,
)
from .http_support import (
    AdmissionLimiter,
    BodyLimitMiddleware,
    Metrics,
    ObserveMiddleware,
    Overloaded,
    api_key_dependency,
    indexed_file,
    item_out,
    make_thumbnail,
)
from .service import DEFAULT_TEXT_WEIGHT, MAX_K, PRODUCTS, SearchRequest, SearchService
from .types import Hit

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
# base64 turns 3 bytes into 4, and JSON or multipart framing adds a little around the image.
BODY_OVERHEAD = 64 * 1024


# -- errors: the one table and the handlers beside it -------------------------------------------
ERROR_STATUS: dict[type[MmsearchError], tuple[int, str]] = {
    InvalidQueryError: (422, "invalid_query"),
    InputFileError: (422, "invalid_input"),
    ImageDecodeError: (422, "image_decode"),
    ImageTooLargeError: (413, "too_large"),
    IndexNotFoundError: (503, "index_unavailable"),
    IndexCorruptError: (503, "index_unavailable"),
    IndexMismatchError: (503, "index_unavailable"),
    IndexBusyError: (503, "index_busy"),
    ModelUnavailableError: (503, "model_unavailable"),
}
HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    429: "overloaded",
    503: "not_ready",
}
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorOut} for status in (400, 401, 404, 413, 422, 429, 500, 503)
}


def error_response(
    status: int, code: str, message: str, headers: Mapping[str, str] | None = None, **extra: Any
) -> JSONResponse:
    """The JSON body of every error answer (ErrorOut)."""
    body = ErrorOut(error=code, message=message, **extra).model_dump(exclude_none=True)
    return JSONResponse(body, status_code=status, headers=dict(headers or {}))


def _mmsearch_error(_: Request, err: MmsearchError) -> JSONResponse:
    for kind in type(err).__mro__:
        if kind in ERROR_STATUS:
            status, code = ERROR_STATUS[kind]
            break
    else:
        logger.error("unexpected %s", type(err).__name__, exc_info=err)
        return error_response(500, "internal", "internal error; the server log has the details")
    headers = {"Retry-After": "5"} if isinstance(err, IndexBusyError) else None
    reason = err.reason if isinstance(err, ImageDecodeError) else None
    return error_response(status, code, str(err), headers, reason=reason)


def _http_error(_: Request | None, err: HTTPException) -> JSONResponse:
    code = HTTP_CODES.get(err.status_code, "error")
    return error_response(err.status_code, code, str(err.detail), err.headers)


def _validation_error(_: Request, err: RequestValidationError) -> JSONResponse:
    details = [
        {
            "loc": [str(part) for part in e.get("loc", ())],
            "msg": e.get("msg"),
            "type": e.get("type"),
        }
        for e in err.errors()
    ]
    message = "; ".join(f"{'.'.join(d['loc'])}: {d['msg']}" for d in details)
    # Unparseable JSON is a malformed request (400); a well-formed one with bad values is 422.
    malformed = all(d["type"] == "json_invalid" for d in details)
    status, code = (400, "bad_request") if malformed else (422, "validation")
    return error_response(status, code, message or "invalid request", details=details)


def _overloaded(_: Request, err: Overloaded) -> JSONResponse:
    return error_response(429, "overloaded", str(err), {"Retry-After": str(err.retry_after_s)})


def _install_error_handlers(app: FastAPI) -> None:
    # Starlette types handlers as taking any Exception; each of these gets only its own kind.
    app.add_exception_handler(MmsearchError, _mmsearch_error)  # type: ignore[arg-type]
    app.add_exception_handler(HTTPException, _http_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(Overloaded, _overloaded)  # type: ignore[arg-type]


def _internal_error() -> JSONResponse:
    return error_response(500, "internal", "internal error; the server log has the traceback")


# -- request parameters -------------------------------------------------------------------------
SEARCH_PARAMS = frozenset({"q", "k", "offset", "target", "text_weight"})
UPLOAD_PARAMS = frozenset({"k", "offset", "target"})
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
WeightParam = Annotated[
    float, Query(ge=0.0, le=1.0, allow_inf_nan=False, description="products: title weight")
]
ItemId = Annotated[int, PathParam(ge=0, le=2**63 - 1, description="item id from a result")]
SizeParam = Annotated[
    int | None, Query(ge=16, le=1024, description="thumbnail: longest side in pixels")
]
IMAGE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {f"image/{kind}": {} for kind in ("jpeg", "png", "webp", "gif", "bmp", "tiff")},
        "description": "the indexed file, or a JPEG thumbnail when `size` is given",
    }
}
SEARCH_OPTIONS: dict[str, Any] = {
    "response_model": SearchOut,
    # Keys a hit does not have stay absent (as in `query --json`), rather than null.
    "response_model_exclude_unset": True,
}


# -- the app ------------------------------------------------------------------------------------
@dataclass
class _Server:
    """What the route handlers share."""

    service: SearchService
    config: ServeConfig
    admission: AdmissionLimiter
    text_encoder: BatchingTextEncoder | None
    thumbnails: LruCache[tuple[int, int, int, int], bytes]
    ready: bool = False
    not_ready_reason: str = "starting: the model is loading"

    def search(self, request: SearchRequest, image_name: str | None = None) -> dict[str, Any]:
        """Run one search (in a worker thread) and shape the answer like `query --json`."""
        started = time.perf_counter()
        if isinstance(request.image, bytes):
            check_megapixels(request.image, self.config.max_megapixels)
        target = request.target or (PRODUCTS if self.service.has_catalog else IMAGES)
        hits: list[Hit] = self.service.search(replace(request, target=target))
        return {
            "query": query_echo(request, target, image_name),
            "results": [hit.to_dict() for hit in hits],
            "took_ms": round((time.perf_counter() - started) * 1000, 3),
        }

    async def warm(self) -> None:
        """Load the model and indexes; on failure stay up, not ready, saying why."""
        try:
            await anyio.to_thread.run_sync(self.service.warm)
            self.ready = True
        except MmsearchError as err:
            # serve.py warms before binding the port and refuses to start on this, so only
            # other embedders of the app get here; /health still answers and /ready says why.
            logger.error("not ready: %s", err)
            self.not_ready_reason = str(err)


def create_app(
    service: SearchService,
    config: ServeConfig,
    *,
    text_encoder: BatchingTextEncoder | None = None,
) -> FastAPI:
    """A FastAPI app serving `service`; `text_encoder`, when given, is reported in /stats and
    /metrics (the service uses it through its embedder). The caller closes the service."""
    admission = AdmissionLimiter(
        config.max_concurrency, config.max_queue, config.queue_timeout_s, config.retry_after_s
    )
    thumbnails: LruCache[tuple[int, int, int, int], bytes] = LruCache(
        config.thumbnail_cache_bytes, weigh=len
    )
    server = _Server(service, config, admission, text_encoder, thumbnails)
    metrics = Metrics(service, admission, text_encoder)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await server.warm()
        yield

    app = FastAPI(
        title="mmsearch",
        version=__version__,
        description="Cross-modal (CLIP) image and text search. " + FILTER_HELP,
        lifespan=lifespan,
        responses=ERROR_RESPONSES,
    )
    _install_error_handlers(app)
    # Added innermost first: requests pass Observe, then CORS, then the body cap.
    app.add_middleware(
        BodyLimitMiddleware,
        limit=config.max_upload_bytes * 4 // 3 + BODY_OVERHEAD,
        reject=lambda err: _http_error(None, err),
    )
    if config.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(config.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "X-API-Key", "Content-Type"],
        )
    app.add_middleware(ObserveMiddleware, metrics=metrics, internal_error=_internal_error)

    guard = [Depends(api_key_dependency(config.api_key))] if config.api_key else []
    api = APIRouter(dependencies=guard)
    _add_search_routes(api, server)
    _add_item_routes(api, server)
    _add_status_routes(api, server, metrics)
    app.include_router(_public_routes())
    app.include_router(api)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


def _add_search_routes(api: APIRouter, server: _Server) -> None:
    config = server.config

    @api.get("/search", **SEARCH_OPTIONS, description="Search by text. " + FILTER_HELP)
    async def search_get(
        request: Request,
        q: Annotated[
            str, Query(max_length=MAX_QUERY_CHARS, pattern=NOT_BLANK, description="search text")
        ],
        k: KParam = 10,
        offset: OffsetParam = 0,
        target: TargetParam = None,
        text_weight: WeightParam = DEFAULT_TEXT_WEIGHT,
    ) -> dict[str, Any]:
        filters = query_filters(request, SEARCH_PARAMS)
        query = SearchRequest(
            text=q, target=target, k=k, offset=offset, filters=filters, text_weight=text_weight
        )
        return await server.admission.run(lambda: server.search(query))

    @api.post("/search", **SEARCH_OPTIONS)
    async def search_post(body: SearchBody) -> dict[str, Any]:
        """Search by `text` or by a base64 `image_b64`, with optional product `filters`."""

        def work() -> dict[str, Any]:
            image = None
            if body.image_b64 is not None:
                image = decode_base64(body.image_b64, config.max_upload_bytes)
            fields = body.model_dump(exclude={"image_b64"})
            return server.search(SearchRequest(image=image, **fields), "base64")

        return await server.admission.run(work)

    @api.post(
        "/search/image", **SEARCH_OPTIONS, description="Search by an uploaded image. " + FILTER_HELP
    )
    async def search_image(
        request: Request,
        file: Annotated[UploadFile, File(description="the query image")],
        k: KParam = 10,
        offset: OffsetParam = 0,
        target: TargetParam = None,
    ) -> dict[str, Any]:
        data = await file.read(config.max_upload_bytes + 1)
        check_upload_size(data, config.max_upload_bytes)
        filters = query_filters(request, UPLOAD_PARAMS)
        query = SearchRequest(image=data, target=target, k=k, offset=offset, filters=filters)
        return await server.admission.run(lambda: server.search(query, file.filename or "upload"))


def _add_item_routes(api: APIRouter, server: _Server) -> None:
    service, admission = server.service, server.admission

    @api.get("/items/{item_id}", response_model=ItemOut)
    async def get_item(item_id: ItemId) -> ItemOut:
        """An indexed item's stored fields (and its product's, in catalog mode)."""
        return await admission.run(lambda: item_out(service, item_id))

    @api.get("/items/{item_id}/image", response_class=Response, responses=IMAGE_RESPONSES)
    async def get_item_image(item_id: ItemId, size: SizeParam = None) -> Response:
        """The indexed image file, or a JPEG thumbnail of it (cached in memory)."""
        path, key = await admission.run(lambda: indexed_file(service, item_id))
        headers = {"Cache-Control": "private, max-age=3600"}
        if size is None:
            media_type = mimetypes.guess_type(path)[0] or "application/octet-stream"
            return FileResponse(path, media_type=media_type, headers=headers)
        thumbnail = server.thumbnails.get((*key, size))
        if thumbnail is None:
            try:
                thumbnail = await admission.run(lambda: make_thumbnail(path, size))
            except ImageDecodeError as err:
                # The indexed file broke after indexing: the client asked nothing wrong.
                raise HTTPException(404, f"image {item_id} can no longer be read: {err}") from err
            server.thumbnails.put((*key, size), thumbnail)
        return Response(thumbnail, media_type="image/jpeg", headers=headers)


def _add_status_routes(api: APIRouter, server: _Server, metrics: Metrics) -> None:
    @api.get("/ready", response_model=ReadyOut)
    async def ready() -> ReadyOut:
        """200 once the index is open and the model warm, 503 before (or if loading failed)."""
        if not server.ready:
            raise HTTPException(503, server.not_ready_reason)
        return ReadyOut(ready=True)

    @api.get("/stats", response_model=StatsOut)
    async def stats() -> dict[str, Any]:
        """Index contents, filterable product columns, and serving counters."""
        details: dict[str, Any] = await anyio.to_thread.run_sync(server.service.stats)
        counters: dict[str, Any] = {
            "in_flight": server.admission.in_flight,
            "max_concurrency": server.config.max_concurrency,
            "max_queue": server.config.max_queue,
        }
        if server.text_encoder is not None:
            counters.update(asdict(server.text_encoder.stats()))
            counters["text_batches"] = counters.pop("batches")
        return {**details, "has_catalog": details.get("products", 0) > 0, "server": counters}

    @api.get(
        "/metrics",
        response_class=PlainTextResponse,
        responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text"}},
    )
    async def get_metrics() -> Response:
        """Prometheus metrics: requests, latency, in-flight requests, index size."""
        text = await anyio.to_thread.run_sync(generate_latest, metrics.registry)
        return Response(text, media_type=CONTENT_TYPE_LATEST)


def _public_routes() -> APIRouter:
    public = APIRouter()

    @public.get("/health", response_model=HealthOut)
    async def health() -> HealthOut:
        """Liveness: always 200 while the process serves (no API key needed)."""
        return HealthOut()

    @public.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        # The page holds no data, so it loads without a key; its API calls send the key.
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    return public
