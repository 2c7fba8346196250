"""The HTTP app: `create_app(service, config)` builds a FastAPI app over one SearchService.

Handlers stay thin: they turn requests into SearchRequests, run the service in a worker thread
(admission-limited, so overload is a 429 and never a hang), and answer with the SearchResult's
own JSON, byte for byte what `mmsearch query --json` prints, plus `took_ms`. Failures become
JSON errors in errors.py."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any

import anyio.to_thread
from fastapi import APIRouter, Depends, FastAPI, File, Query, Request, UploadFile
from fastapi.responses import FileResponse, PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware

from .. import __version__
from ..compose import open_writer
from ..config import ServeConfig
from ..errors import ImageDecodeError, MmsearchError
from ..ingest.product_api import ProductWriter
from ..search.batching import LruCache
from ..search.duplicates import find_duplicates
from ..search.merch import Boost, parse_boosts, parse_facets, parse_sort
from ..search.queries import DEFAULT_DUPLICATE_THRESHOLD, QueryPart
from ..search.requests import DEFAULT_TEXT_WEIGHT, SearchRequest
from ..search.service import SearchService
from .docs import DOCS_ASSETS_PATH, docs_assets, docs_routes
from .errors import (
    ERROR_RESPONSES,
    http_error,
    install_error_handlers,
    internal_error,
    overloaded,
)
from .headers import HeadMiddleware, SecurityHeadersMiddleware
from .items import (
    FILE_HEADERS,
    ThumbnailKey,
    indexed_file,
    item_out,
    make_thumbnail,
    media_type,
    thumbnail_key,
    thumbnail_megapixels,
)
from .keys import KeyBook, ScopedKeyMiddleware
from .limits import (
    HEAD_LIMIT_BYTES,
    AdmissionLimiter,
    BodyLimitMiddleware,
    BodyTimeoutMiddleware,
    EarlyRefusalMiddleware,
    HeadLimitMiddleware,
    PixelBudget,
)
from .metrics import Metrics, ObserveMiddleware
from .models import (
    MAX_QUERY_CHARS,
    NOT_BLANK,
    DuplicatesOut,
    HealthOut,
    ItemOut,
    PartIn,
    ReadyOut,
    SearchBody,
    SearchOut,
    StatsOut,
)
from .params import (
    BROWSE_PARAMS,
    FILTER_HELP,
    SEARCH_PARAMS,
    UPLOAD_PARAMS,
    BoostParam,
    CollapseParam,
    FacetsParam,
    ItemId,
    KParam,
    MinScoreParam,
    ModeParam,
    OffsetParam,
    SizeParam,
    SortParam,
    TargetParam,
    ThresholdParam,
    WeightParam,
    check_upload_size,
    decode_base64,
    query_filters,
    request_megapixels,
)
from .products import product_routes
from .security import HostCheckMiddleware, document_key_schemes
from .storefront import storefront_routes

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
# base64 turns 3 bytes into 4, and JSON or multipart framing adds a little around the image.
BODY_OVERHEAD = 64 * 1024
IMAGE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {f"image/{kind}": {} for kind in ("jpeg", "png", "webp", "gif", "bmp", "tiff")},
        "description": "the indexed file, or a JPEG thumbnail when `size` is given",
    }
}
# The documented answer shape; handlers return the service's own JSON bytes, which match it.
SEARCH_OPTIONS: dict[str, Any] = {"response_model": SearchOut}


# Probes that answer even when every worker is busy (EarlyRefusalMiddleware).
STATUS_PATHS = frozenset({"/health", "/ready", "/stats", "/metrics"})


@dataclass
class _Server:
    """What the route handlers share."""

    service: SearchService
    config: ServeConfig
    admission: AdmissionLimiter
    decoding: PixelBudget
    thumbnails: LruCache[ThumbnailKey, bytes]
    default_boosts: tuple[Boost, ...] = ()
    ready: bool = False
    not_ready_reason: str = "starting: the model is loading"

    def merch(
        self,
        facets: list[str] | None,
        sort: list[str] | None,
        boost: list[str] | None,
        target: str | None,
    ) -> dict[str, Any]:
        """SearchRequest fields of the merchandising parameters; without `boost`, the
        server's default boosts (`serve --boost`) when the search is over products."""
        boosts: tuple[Boost, ...] = ()
        if boost is not None:
            boosts = parse_boosts(boost)
        elif target == "products" or (target is None and self.service.has_catalog):
            boosts = self.default_boosts
        return {
            "facets": parse_facets(facets or []),
            "sort": parse_sort(sort or []),
            "boosts": boosts,
        }

    def search(self, request: SearchRequest) -> Response:
        """Run one search (in a worker thread): the service's JSON plus the time it took. A
        search with uploaded images holds their megapixels of the decode budget while it runs."""
        started = time.perf_counter()
        sources = (request.image, *(part.image for part in request.parts))
        images = [image for image in sources if isinstance(image, bytes)]
        megapixels = request_megapixels(images, self.config.max_megapixels)
        with self.decoding.hold(megapixels):
            result = self.service.search(request)
        took_ms = round((time.perf_counter() - started) * 1000, 3)
        return Response(result.to_json(took_ms=took_ms), media_type="application/json")

    async def warm(self) -> None:
        """Load the model and indexes; on failure stay up, not ready, saying why."""
        try:
            await anyio.to_thread.run_sync(self.service.warm)
            self.ready = True
        except MmsearchError as err:
            # runner.py warms before binding the port and refuses to start on this, so only
            # other embedders of the app get here; /health still answers and /ready says why.
            logger.error("not ready: %s", err)
            self.not_ready_reason = str(err)


def create_app(
    service: SearchService, config: ServeConfig, writer: ProductWriter | None = None
) -> FastAPI:
    """A FastAPI app serving `service` (its text batcher, if any, is reported in /stats and
    /metrics) and product writes through `writer` (default: one on the service's index, when
    it is writable). The caller closes the service; the app closes a writer it made."""
    admission = AdmissionLimiter(
        config.max_concurrency, config.max_queue, config.queue_timeout_s, config.retry_after_s
    )
    decoding = PixelBudget(
        config.decode_budget_megapixels, config.queue_timeout_s, config.retry_after_s
    )
    thumbnails: LruCache[ThumbnailKey, bytes] = LruCache(config.thumbnail_cache_bytes, weigh=len)
    server = _Server(service, config, admission, decoding, thumbnails, parse_boosts(config.boosts))
    metrics = Metrics(service, admission, decoding)

    own_writer = writer is None
    if writer is None:
        writer = open_writer(service, config.fetch_allow, config.compact_rows)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await server.warm()
        try:
            yield
        finally:
            if own_writer and writer is not None:
                writer.close()

    app = FastAPI(
        title="mmsearch",
        version=__version__,
        description="Cross-modal (CLIP) image and text search. " + FILTER_HELP,
        lifespan=lifespan,
        responses=ERROR_RESPONSES,
        # docs.py serves both pages with their scripts from the package, not from a CDN.
        docs_url=None,
        redoc_url=None,
    )
    install_error_handlers(app, service.store.directory)
    # --api-key (an admin key) and the index's scoped keys (`mmsearch keys`): keys.py.
    key_book = KeyBook(service.store.catalog.path)
    keyed = bool(config.api_key) or key_book.has_keys()
    # Added innermost first: requests pass the security headers, Observe, HEAD-as-GET, the head
    # cap, the Host check (keyless servers), CORS (so a page can read a 429), the early 429,
    # the key check, the body-read timeout, then the body cap.
    app.add_middleware(
        BodyLimitMiddleware,
        limit=config.max_upload_bytes * 4 // 3 + BODY_OVERHEAD,
        reject=lambda err: http_error(None, err),
    )
    app.add_middleware(
        BodyTimeoutMiddleware, idle_s=config.body_idle_timeout_s, total_s=config.body_timeout_s
    )
    app.add_middleware(
        ScopedKeyMiddleware,
        book=key_book,
        api_key=config.api_key,
        reject=lambda err: http_error(None, err),
    )
    app.add_middleware(
        EarlyRefusalMiddleware,
        admission=admission,
        reject=lambda err: overloaded(None, err),
        exempt=STATUS_PATHS,
    )
    if config.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(config.cors_origins),
            allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
            allow_headers=["Authorization", "X-API-Key", "Content-Type"],
        )
    if not keyed:
        app.add_middleware(
            HostCheckMiddleware,
            allowed=frozenset(config.allowed_hosts),
            reject=lambda err: http_error(None, err),
        )
    app.add_middleware(
        HeadLimitMiddleware, limit=HEAD_LIMIT_BYTES, reject=lambda err: http_error(None, err)
    )
    app.add_middleware(HeadMiddleware)
    app.add_middleware(ObserveMiddleware, metrics=metrics, internal_error=internal_error)
    app.add_middleware(SecurityHeadersMiddleware, keyed=keyed)  # the 500s too

    # Documents the key schemes in OpenAPI when keys are required at start; the middleware
    # is the judge either way (it also sees keys created while the server runs).
    guard = [Depends(document_key_schemes)] if keyed else []
    api = APIRouter(dependencies=guard)
    _add_search_routes(api, server)
    _add_item_routes(api, server)
    _add_status_routes(api, server, metrics)
    api.include_router(storefront_routes(service, admission, config.currency))
    if writer is not None:
        api.include_router(product_routes(writer, admission))
    app.include_router(_public_routes())
    app.include_router(docs_routes())
    app.include_router(api)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.mount(DOCS_ASSETS_PATH, docs_assets(), name="docs-assets")
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
        min_score: MinScoreParam = None,
        collapse: CollapseParam = False,
        mode: ModeParam = None,
        facets: FacetsParam = None,
        sort: SortParam = None,
        boost: BoostParam = None,
    ) -> Response:
        filters = query_filters(request, SEARCH_PARAMS)
        query = SearchRequest(
            text=q,
            target=target,
            k=k,
            offset=offset,
            filters=filters,
            text_weight=text_weight,
            min_score=min_score,
            collapse=collapse,
            mode=mode,
            **server.merch(facets, sort, boost, target),
        )
        return await server.admission.run(lambda: server.search(query))

    @api.get("/products", **SEARCH_OPTIONS, description="Browse products. " + FILTER_HELP)
    async def browse(
        request: Request,
        k: KParam = 10,
        offset: OffsetParam = 0,
        facets: FacetsParam = None,
        sort: SortParam = None,
    ) -> Response:
        """The products passing the filters (no query), in `sort` order (SKU when none), one
        page with `total` and `facets`: the answer shape of a product search."""
        filters = query_filters(request, BROWSE_PARAMS)
        query = SearchRequest(
            target="products",
            k=k,
            offset=offset,
            filters=filters,
            **server.merch(facets, sort, [], "products"),
        )
        return await server.admission.run(lambda: server.search(query))

    @api.post("/search", **SEARCH_OPTIONS)
    async def search_post(body: SearchBody) -> Response:
        """Search by `text`, by a base64 `image_b64`, or by weighted `parts` (texts, images,
        indexed items; negative weights subtract), with optional product `filters`, `facets`,
        `sort` and `boost`; with none of text, image_b64 and parts, browse the products."""

        def work() -> Response:
            image = None
            if body.image_b64 is not None:
                image = decode_base64(body.image_b64, config.max_upload_bytes)
            parts = tuple(_query_part(part, config.max_upload_bytes) for part in body.parts or ())
            fields = body.model_dump(exclude={"image_b64", "parts", "facets", "sort", "boost"})
            merch = server.merch(
                _listed(body.facets), _listed(body.sort), _listed(body.boost), body.target
            )
            return server.search(
                SearchRequest(image=image, image_name="base64", parts=parts, **fields, **merch)
            )

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
        min_score: MinScoreParam = None,
        collapse: CollapseParam = False,
        facets: FacetsParam = None,
        sort: SortParam = None,
        boost: BoostParam = None,
    ) -> Response:
        data = await file.read(config.max_upload_bytes + 1)
        check_upload_size(data, config.max_upload_bytes)
        filters = query_filters(request, UPLOAD_PARAMS)
        query = SearchRequest(
            image=data,
            image_name=file.filename or "upload",
            target=target,
            k=k,
            offset=offset,
            filters=filters,
            min_score=min_score,
            collapse=collapse,
            **server.merch(facets, sort, boost, target),
        )
        return await server.admission.run(lambda: server.search(query))

    @api.get(
        "/items/{item_id}/similar",
        **SEARCH_OPTIONS,
        description="More like this: items nearest to the item's stored vector (no model run); "
        "the item itself (for products: its whole product) is left out. `target` defaults to "
        "the item's own collection. " + FILTER_HELP,
    )
    async def similar(
        request: Request,
        item_id: ItemId,
        k: KParam = 10,
        offset: OffsetParam = 0,
        target: TargetParam = None,
        min_score: MinScoreParam = None,
        collapse: CollapseParam = False,
        facets: FacetsParam = None,
        sort: SortParam = None,
        boost: BoostParam = None,
    ) -> Response:
        filters = query_filters(request, UPLOAD_PARAMS)

        def work() -> Response:
            item = server.service.require_item(item_id)
            merch = server.merch(facets, sort, boost, target or item.collection)
            query = SearchRequest(
                like=item_id,
                target=target or item.collection,
                filters=filters,
                k=k,
                offset=offset,
                min_score=min_score,
                collapse=collapse,
                **merch,
            )
            return server.search(query)

        return await server.admission.run(work)


def _listed(value: str | list[str] | None) -> list[str] | None:
    return [value] if isinstance(value, str) else value


def _query_part(part: PartIn, max_upload_bytes: int) -> QueryPart:
    """A validated request part as the service's QueryPart (base64 images decoded)."""
    image = None
    if part.image_b64 is not None:
        image = decode_base64(part.image_b64, max_upload_bytes)
    return QueryPart(
        text=part.text, image=image, item=part.item, weight=part.weight, image_name="base64"
    )


def _add_item_routes(api: APIRouter, server: _Server) -> None:
    service, admission = server.service, server.admission

    @api.get("/duplicates", response_model=DuplicatesOut)
    async def duplicates(
        threshold: ThresholdParam = DEFAULT_DUPLICATE_THRESHOLD,
    ) -> DuplicatesOut:
        """Groups of near-duplicate images from the stored vectors (no model run), the best
        image (most pixels, then largest file) first: `mmsearch duplicates --json`. An exact
        search over all pairs: about a minute of CPU per 100k images."""

        def work() -> DuplicatesOut:
            report = find_duplicates(service.store, threshold)
            return DuplicatesOut.model_validate(report.to_dict())

        return await admission.run(work)

    @api.get("/items/{item_id}", response_model=ItemOut)
    async def get_item(item_id: ItemId) -> ItemOut:
        """An indexed item's stored fields (and its product's, in catalog mode)."""
        return await admission.run(lambda: item_out(service, item_id))

    @api.get("/items/{item_id}/image", response_class=Response, responses=IMAGE_RESPONSES)
    async def get_item_image(item_id: ItemId, size: SizeParam = None) -> Response:
        """The indexed image file, or a JPEG thumbnail of it (cached in memory)."""
        if size is not None:
            # A cached thumbnail was made from verified bytes, so a cheap stat (the file is
            # still the one read then: same inode, size, mtime and ctime) is enough to serve it.
            key = await admission.run(lambda: thumbnail_key(service, item_id, size))
            cached = server.thumbnails.get(key)
            if cached is not None:
                return Response(cached, media_type="image/jpeg", headers=FILE_HEADERS)
        file = await admission.run(lambda: indexed_file(service, item_id))
        if size is None:  # the original file, labelled by what its bytes decode as
            return Response(file.data, media_type=media_type(file.data), headers=FILE_HEADERS)

        def thumbnail() -> bytes:
            # Indexed files may be larger than uploads (up to images.MAX_IMAGE_PIXELS); one
            # over the whole budget decodes alone.
            with server.decoding.hold(thumbnail_megapixels(file.data, size)):
                return make_thumbnail(file.data, size)

        try:
            data = await admission.run(thumbnail)
        except ImageDecodeError as err:
            # The indexed file broke after indexing: the client asked nothing wrong.
            raise HTTPException(404, f"image {item_id} can no longer be read: {err}") from err
        server.thumbnails.put((item_id, size, file.identity), data)
        return Response(data, media_type="image/jpeg", headers=FILE_HEADERS)


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
        if server.service.text_batcher is not None:
            counters.update(asdict(server.service.text_batcher.stats()))
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
        """Liveness: always 200 while the process serves (the one route needing no API key)."""
        return HealthOut()

    @public.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        # With keys, ScopedKeyMiddleware asks a browser for one (HTTP Basic) before this runs.
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    return public
