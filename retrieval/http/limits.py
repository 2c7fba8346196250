"""Serving machinery behind retrieval.http: admission control (429 instead of a hang), a request
body cap (413), Prometheus metrics, item lookups and thumbnails. Nothing here knows routes."""

from __future__ import annotations

import hmac
import io
import logging
import os
import time
from collections.abc import Callable, Iterator
from typing import Annotated, Any, TypeVar

import anyio
import anyio.to_thread
from fastapi import Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .batching import BatchingTextEncoder
from .catalog import COLLECTIONS, IMAGES
from .http_models import ItemOut
from .images import load_image
from .service import SearchService

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Latency buckets from a cached text query (~1 ms) to a slow image upload on a busy CPU.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# JPEG quality 85 is visually clean at thumbnail sizes and about a third the bytes of 95.
THUMBNAIL_QUALITY = 85


class Overloaded(Exception):
    """Too many requests are in flight or waiting; the client should retry later."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class AdmissionLimiter:
    """Runs blocking work in threads: at most `max_concurrency` at once and `max_queue` more
    waiting (each for at most `queue_timeout_s`); anything beyond is refused at once with
    Overloaded, so a burst gets fast 429s instead of an ever-growing queue."""

    def __init__(
        self,
        max_concurrency: int,
        max_queue: int,
        queue_timeout_s: float,
        retry_after_s: int = 1,
    ) -> None:
        if max_concurrency < 1 or max_queue < 0:
            raise ValueError("max_concurrency must be >= 1 and max_queue >= 0")
        self.max_concurrency = max_concurrency
        self.max_queue = max_queue
        self.queue_timeout_s = queue_timeout_s
        self.retry_after_s = retry_after_s
        self._slots = anyio.CapacityLimiter(max_concurrency)
        # run_sync's own limiter; never waited on, since _slots already admits this many.
        self._threads = anyio.CapacityLimiter(max_concurrency)
        # Only touched from the event loop thread, so a plain int is safe.
        self.in_flight = 0

    async def run(self, work: Callable[[], T]) -> T:
        """`work()` in a worker thread once a slot is free; raises Overloaded when full."""
        if self.in_flight >= self.max_concurrency + self.max_queue:
            raise Overloaded(
                f"the server is busy ({self.in_flight} requests in flight); retry shortly",
                self.retry_after_s,
            )
        self.in_flight += 1
        try:
            acquired = False
            with anyio.move_on_after(self.queue_timeout_s):
                await self._slots.acquire()
                acquired = True
            if not acquired:
                raise Overloaded(
                    f"no worker became free within {self.queue_timeout_s:g} s; retry shortly",
                    self.retry_after_s,
                )
            try:
                return await anyio.to_thread.run_sync(work, limiter=self._threads)
            finally:
                self._slots.release()
        finally:
            self.in_flight -= 1


# Module-level, so the string annotations below (PEP 563) resolve when FastAPI reads them.
API_KEY_HEADER = APIKeyHeader(name="X-API-Key", auto_error=False)
BEARER = HTTPBearer(auto_error=False)
ApiKey = Annotated[str | None, Security(API_KEY_HEADER)]
BearerToken = Annotated[HTTPAuthorizationCredentials | None, Security(BEARER)]


def api_key_dependency(api_key: str) -> Callable[[str | None, Any], None]:
    """A dependency accepting `X-API-Key: KEY` or `Authorization: Bearer KEY`, else 401."""
    expected = api_key.encode()

    def require_key(key: ApiKey, token: BearerToken) -> None:
        given = key if key is not None else (token.credentials if token else None)
        if given is None:
            raise HTTPException(
                401,
                "this server needs an API key: send `X-API-Key: KEY` or "
                "`Authorization: Bearer KEY`",
                headers={"WWW-Authenticate": "Bearer"},
            )
        # Constant-time, so response timing does not reveal how much of a guess was right.
        if not hmac.compare_digest(given.encode(), expected):
            raise HTTPException(
                401, "the API key is not valid", headers={"WWW-Authenticate": "Bearer"}
            )

    return require_key


def body_too_large(limit: int) -> HTTPException:
    """The 413 for a request body over `limit` bytes."""
    return HTTPException(
        413,
        f"the request body is over this server's limit of {limit:,} bytes; send a smaller "
        "image (or raise --max-upload-mb)",
    )


class BodyLimitMiddleware:
    """Refuses request bodies over `limit` bytes: by Content-Length before reading, and by
    counting while reading (chunked uploads), so no body over the cap is ever buffered."""

    def __init__(
        self, app: ASGIApp, limit: int, reject: Callable[[HTTPException], ASGIApp]
    ) -> None:
        self.app = app
        self.limit = limit
        self.reject = reject

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            await self.reject(body_too_large(self.limit))(scope, receive, send)
            return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    # FastAPI re-raises HTTPExceptions from body reading, so this becomes a
                    # 413 through the app's own error handler.
                    raise body_too_large(self.limit)
            return message

        await self.app(scope, counting_receive, send)


class Metrics:
    """Prometheus metrics of one app, in a registry of its own (two apps never share counts)."""

    def __init__(
        self,
        service: SearchService,
        admission: AdmissionLimiter,
        text_encoder: BatchingTextEncoder | None = None,
    ) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "mmsearch_http_requests",
            "HTTP requests by route template, method and status",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "mmsearch_http_request_duration_seconds",
            "HTTP request latency by route template and method",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        in_flight = Gauge(
            "mmsearch_requests_in_flight",
            "Requests running or queued for a worker thread",
            registry=self.registry,
        )
        in_flight.set_function(lambda: admission.in_flight)
        self.registry.register(_IndexCollector(service, text_encoder))

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count one finished request."""
        self.requests.labels(route, method, str(status)).inc()
        self.latency.labels(route, method).observe(seconds)


class _IndexCollector(Collector):
    """Index sizes and query-cache counters, read at scrape time."""

    def __init__(self, service: SearchService, text_encoder: BatchingTextEncoder | None) -> None:
        self.service = service
        self.text_encoder = text_encoder

    def collect(self) -> Iterator[GaugeMetricFamily]:
        catalog = self.service.store.catalog
        items = GaugeMetricFamily(
            "mmsearch_index_items", "Items in the index by collection", labels=["collection"]
        )
        for collection in COLLECTIONS:
            items.add_metric([collection], catalog.count(collection))
        yield items
        yield GaugeMetricFamily(
            "mmsearch_index_products", "Products in the catalog", value=catalog.product_count()
        )
        if self.text_encoder is not None:
            stats = self.text_encoder.stats()
            # Gauges, not counters: prometheus_client's CounterMetricFamily would need _total
            # names, and these restart from zero with the process anyway.
            for name, value, doc in (
                ("text_batches", stats.batches, "Text forward passes run by the batcher"),
                ("texts_embedded", stats.texts_embedded, "Query texts embedded"),
                ("text_cache_hits", stats.cache_hits, "Query texts answered from the cache"),
                ("text_cache_misses", stats.cache_misses, "Query texts not in the cache"),
            ):
                yield GaugeMetricFamily(f"mmsearch_{name}", doc, value=value)


class ObserveMiddleware:
    """Outermost layer: counts and times every request, and turns any exception that escaped
    the app's error handlers into a logged traceback and a JSON 500."""

    def __init__(
        self,
        app: ASGIApp,
        metrics: Metrics,
        internal_error: Callable[[], ASGIApp],
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.internal_error = internal_error

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        response_started = False

        async def watching_send(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status, response_started = message["status"], True
            await send(message)

        try:
            await self.app(scope, receive, watching_send)
        except Exception:
            logger.exception("unhandled error on %s %s", scope["method"], scope["path"])
            if not response_started:
                await self.internal_error()(scope, receive, watching_send)
        finally:
            route = scope.get("route")
            label = getattr(route, "path", None) or "<unmatched>"
            self.metrics.observe(label, scope["method"], status, time.perf_counter() - started)


def make_thumbnail(path: str, size: int) -> bytes:
    """A JPEG of the image at `path`, scaled to fit in size x size (aspect kept)."""
    image = load_image(path)
    image.thumbnail((size, size))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=THUMBNAIL_QUALITY, optimize=True)
    return buffer.getvalue()


def item_out(service: SearchService, item_id: int) -> ItemOut:
    """An item by id, or 404."""
    item = service.get_item(item_id)
    if item is None:
        raise HTTPException(404, f"no item with id {item_id} in this index")
    is_image = item.collection == IMAGES
    return ItemOut(
        id=item.id,
        collection=item.collection,  # type: ignore[arg-type]
        path=item.path,
        text=item.text,
        product_id=item.product_id,
        metadata=item.metadata,
        image_url=f"/items/{item.id}/image" if is_image else None,
    )


def indexed_file(service: SearchService, item_id: int) -> tuple[str, tuple[int, int, int]]:
    """The path of an indexed image and a key that changes with the file, or 404. Only paths
    read from the catalog are ever served, and only while the file is the one indexed."""
    item = service.get_item(item_id)
    if item is None or item.collection != IMAGES or not item.path:
        raise HTTPException(404, f"no indexed image with id {item_id}")
    try:
        stat = os.stat(item.path)
    except OSError:
        raise HTTPException(404, f"image {item_id} is no longer on disk; re-index") from None
    # A file replaced since indexing (or a link pointed elsewhere) is not what was indexed.
    if item.size is not None and (stat.st_size, stat.st_mtime_ns) != (item.size, item.mtime_ns):
        raise HTTPException(404, f"image {item_id} changed on disk since indexing; re-index")
    return item.path, (item.id, stat.st_size, stat.st_mtime_ns)
