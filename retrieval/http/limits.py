"""Admission control (429 instead of a hang), the request body cap (413) and the body-read
timeout (408)."""

from __future__ import annotations

from collections.abc import Callable
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
