"""Response headers every answer carries (Content-Security-Policy, nosniff, no framing, a
Cache-Control), and HEAD on every GET route.

Three policies, by what an answer is: the search page and its assets load only this origin's
scripts and styles; the docs pages also allow inline styles and blob: workers (Swagger UI and
ReDoc set styles from script, ReDoc searches in a worker); everything else (JSON, metrics) may
load nothing. Served image files set their own, sandboxed policy (items.FILE_HEADERS): a file
that a browser would render as a document runs no script in this origin."""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .docs import DOCS_ASSETS_PATH

_NO_FRAMES = "frame-ancestors 'none'; base-uri 'none'; object-src 'none'"
PAGE_POLICY = f"default-src 'self'; img-src 'self' data:; form-action 'self'; {_NO_FRAMES}"
DOCS_POLICY = (
    "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
    f"worker-src 'self' blob:; form-action 'none'; {_NO_FRAMES}"
)
API_POLICY = "default-src 'none'; frame-ancestors 'none'"
PAGE_PATHS = frozenset({"/"})
DOCS_PATHS = frozenset({"/docs", "/redoc"})
# Unversioned files that change with the package: the browser may keep them but asks first.
ASSET_PREFIXES = ("/static/", DOCS_ASSETS_PATH + "/")
COMMON_HEADERS = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",  # frame-ancestors for browsers without CSP level 2
    "referrer-policy": "no-referrer",
}


def content_policy(path: str) -> str:
    """The Content-Security-Policy of an answer to `path` (unless the route sets its own)."""
    if path in DOCS_PATHS or path.startswith(DOCS_ASSETS_PATH + "/"):
        return DOCS_POLICY
    if path in PAGE_PATHS or path.startswith("/static/"):
        return PAGE_POLICY
    return API_POLICY


class SecurityHeadersMiddleware:
    """Adds COMMON_HEADERS, the path's Content-Security-Policy and a Cache-Control to every
    answer that does not set its own: `no-store` for answers (with a key they hold what only
    key holders may read; without one they go stale at the next index), and for the page's
    and the docs' static files `no-cache` (revalidated by ETag), `private` with a key."""

    def __init__(self, app: ASGIApp, *, keyed: bool) -> None:
        self.app = app
        self.asset_cache = "private, no-cache" if keyed else "no-cache"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        policy = content_policy(path)
        cache = self.asset_cache if path.startswith(ASSET_PREFIXES) else "no-store"

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in COMMON_HEADERS.items():
                    headers.setdefault(name, value)
                headers.setdefault("content-security-policy", policy)
                headers.setdefault("cache-control", cache)
            await send(message)

        await self.app(scope, receive, send_with_headers)


class HeadMiddleware:
    """HEAD on any GET route: the request is routed as a GET and answered with the GET's
    status and headers (Content-Length included) and no body. FastAPI registers GET routes
    without HEAD, and load balancers and uptime checks probe with HEAD."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def send_headers_only(message: Message) -> None:
            if message["type"] == "http.response.body":
                if message.get("more_body", False):
                    return  # one empty final body message stands for all of them
                message = {"type": "http.response.body", "body": b""}
            await send(message)

        # A copy: uvicorn reads the method from its own scope, and for HEAD sends no body.
        routed = {**scope, "method": "GET"}
        try:
            await self.app(routed, receive, send_headers_only)
        finally:
            for key in ("route", "refused_as"):  # what the metrics label is read from
                if key in routed:
                    scope[key] = routed[key]
