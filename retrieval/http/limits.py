"""Admission control (429 instead of a hang), the request head cap (431), the request body cap
(413) and the body-read timeout (408)."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import anyio
import anyio.to_thread
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

T = TypeVar("T")


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

    @property
    def full(self) -> bool:
        """Every worker busy and the queue full: the next request would be refused."""
        return self.in_flight >= self.max_concurrency + self.max_queue

    def refusal(self) -> Overloaded:
        return Overloaded(
            f"the server is busy ({self.in_flight} requests in flight); retry shortly",
            self.retry_after_s,
        )

    async def run(self, work: Callable[[], T]) -> T:
        """`work()` in a worker thread once a slot is free; raises Overloaded when full."""
        if self.full:
            raise self.refusal()
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


class PixelBudget:
    """Bounds the pixels being decoded at once, across requests and their parts: work that
    decodes images holds their megapixels (from the headers) while it runs, and waits, first
    come first served, while the sum would exceed `capacity` megapixels. Decoded pixels are what
    an upload costs in memory (a 142 KB PNG can hold 49 Mpx, ~200 MB decoded), so this caps
    the server's decode memory whatever the number of concurrent requests. A hold larger than
    the capacity is cut to it (it runs alone). Waiting is bounded by `timeout_s`, then
    Overloaded. Held from worker threads, hence a threading.Condition."""

    def __init__(self, capacity: float, timeout_s: float, retry_after_s: int = 1) -> None:
        if capacity <= 0:
            raise ValueError(f"the decode budget must be positive, got {capacity} megapixels")
        self.capacity = capacity
        self.timeout_s = timeout_s
        self.retry_after_s = retry_after_s
        self.in_use = 0.0
        self.peak = 0.0  # the most ever held at once, for /metrics
        self._changed = threading.Condition()
        self._waiting: deque[object] = deque()

    @contextmanager
    def hold(self, megapixels: float) -> Iterator[None]:
        """Hold `megapixels` of the budget for the duration of the block."""
        weight = min(megapixels, self.capacity)
        if weight <= 0:
            yield
            return
        ticket = object()
        with self._changed:
            self._waiting.append(ticket)
            admitted = self._changed.wait_for(
                lambda: self._waiting[0] is ticket and self.in_use + weight <= self.capacity,
                self.timeout_s,
            )
            self._waiting.remove(ticket)
            if admitted:
                self.in_use += weight
                self.peak = max(self.peak, self.in_use)
            self._changed.notify_all()  # the next in line may fit now
        if not admitted:
            raise Overloaded(
                f"images of {self.capacity:g} megapixels are being decoded and this one did not "
                f"fit within {self.timeout_s:g} s; retry shortly",
                self.retry_after_s,
            )
        try:
            yield
        finally:
            with self._changed:
                self.in_use -= weight
                self._changed.notify_all()


class EarlyRefusalMiddleware:
    """While the admission limiter is full, answers 429 before any routing, validation or
    body reading. Under overload most requests are refused, so what a refusal costs is what
    the server has left for real work: without this layer each refused request went through
    FastAPI's routing and validation first, and at 4x the sustainable rate on 2 cores a 429
    took up to 7 s (benchmarks/HISTORY.md, "Overload"). The limiter still checks too: requests
    that pass here while it is filling are refused there. Paths in `exempt` (health and status
    probes) always pass, so monitoring sees a busy server as busy, not down."""

    def __init__(
        self,
        app: ASGIApp,
        admission: AdmissionLimiter,
        reject: Callable[[Overloaded], ASGIApp],
        exempt: frozenset[str],
    ) -> None:
        self.app = app
        self.admission = admission
        self.reject = reject
        self.exempt = exempt

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.admission.full and scope["path"] not in self.exempt:
            scope["refused_as"] = "<overloaded>"  # the metrics label: no route was matched
            await self.reject(self.admission.refusal())(scope, receive, send)
            return
        await self.app(scope, receive, send)


# The request line plus headers: h11's default incomplete-event limit, said here so it is a
# choice. Browsers send 1-3 KB; 16 KiB leaves room for long query strings and cookies.
HEAD_LIMIT_BYTES = 16 * 1024


def head_size(scope: Scope) -> int:
    """Bytes of a request's head as sent: request line and headers, with their separators."""
    query = scope.get("query_string", b"")
    line = len(scope["method"]) + len(scope.get("raw_path") or scope["path"].encode()) + 12
    headers = sum(len(name) + len(value) + 4 for name, value in scope["headers"])
    return line + (len(query) + 1 if query else 0) + headers + 2


class HeadLimitMiddleware:
    """431 for a request whose head is over `limit` bytes. uvicorn's h11 limit only bounds a
    head still arriving: one that comes whole in a single read (120 KB, or 5,000 headers, sent
    in one write) was parsed and served. The connection is closed after the answer."""

    def __init__(self, app: ASGIApp, limit: int, reject: Callable[[HTTPException], ASGIApp]):
        self.app = app
        self.limit = limit
        self.reject = reject

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and head_size(scope) > self.limit:
            problem = HTTPException(
                431,
                f"the request line and headers are over this server's limit of {self.limit:,} "
                "bytes; send fewer or shorter headers, or search with POST /search",
                {"Connection": "close"},
            )
            await self.reject(problem)(scope, receive, send)
            return
        await self.app(scope, receive, send)


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


class BodyTimeoutMiddleware:
    """Bounds how long a request body may take: each chunk must arrive within `idle_s` of the
    previous one and the whole body within `total_s`, else 408 (raised from `receive`, which
    FastAPI's body reading turns into the app's JSON error). uvicorn has no body-read timeout
    of its own, so without this a client sending one byte a minute (slowloris) would hold a
    connection and a request slot forever."""

    def __init__(self, app: ASGIApp, idle_s: float, total_s: float) -> None:
        self.app = app
        self.idle_s = idle_s
        self.total_s = total_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        deadline = anyio.current_time() + self.total_s
        done = False

        async def timed_receive() -> Message:
            nonlocal done
            if done:  # after the body only http.disconnect comes: waiting for it is no cost
                return await receive()
            stalled = self.idle_s < deadline - anyio.current_time()
            with anyio.move_on_after(
                self.idle_s if stalled else deadline - anyio.current_time()
            ) as waited:
                message = await receive()
            if waited.cancelled_caught:
                why = (
                    f"stalled for {self.idle_s:g} s" if stalled else f"took over {self.total_s:g} s"
                )
                raise HTTPException(408, f"the request body {why}; send it faster or retry")
            done = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        await self.app(scope, timed_receive, send)
