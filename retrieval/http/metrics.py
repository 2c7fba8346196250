"""Prometheus metrics of one app, and the outermost middleware that counts and times every
request (and turns an escaped exception into a logged traceback and a JSON 500)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..search.service import SearchService
from ..types import COLLECTIONS
from .limits import AdmissionLimiter, PixelBudget

logger = logging.getLogger(__name__)

# Latency buckets from a cached text query (~1 ms) to a slow image upload on a busy CPU.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Label values come from fixed sets, never from the request: a client inventing methods or paths
# (each answered 401 or 404) would otherwise add a time series per request, and /metrics grew
# to hundreds of MB until a restart. Anything else is counted as OTHER.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
OTHER = "other"


class Metrics:
    """Prometheus metrics of one app, in a registry of its own (two apps never share counts)."""

    def __init__(
        self,
        service: SearchService,
        admission: AdmissionLimiter,
        decoding: PixelBudget,
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
        for name, doc, read in (
            ("in_use", "Megapixels of images being decoded now", lambda: decoding.in_use),
            ("peak", "Most megapixels decoded at once since start", lambda: decoding.peak),
            ("budget", "Megapixels that may be decoded at once", lambda: decoding.capacity),
        ):
            gauge = Gauge(f"mmsearch_decode_megapixels_{name}", doc, registry=self.registry)
            gauge.set_function(read)
        self.registry.register(_IndexCollector(service))

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count one finished request."""
        self.requests.labels(route, method, str(status)).inc()
        self.latency.labels(route, method).observe(seconds)


class _IndexCollector(Collector):
    """Index sizes and query-cache counters, read at scrape time."""

    def __init__(self, service: SearchService) -> None:
        self.service = service

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
        if self.service.text_batcher is not None:
            stats = self.service.text_batcher.stats()
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
        method = scope["method"] if scope["method"] in METHODS else OTHER
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
            logger.exception("unhandled error on %s %s", method, scope["path"])
            if not response_started:
                await self.internal_error()(scope, receive, watching_send)
        finally:
            # A route's template (/items/{item_id}), never the path asked for.
            route = getattr(scope.get("route"), "path", None) or scope.get("refused_as", OTHER)
            self.metrics.observe(route, method, status, time.perf_counter() - started)
