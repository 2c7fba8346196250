"""API-key security: `X-API-Key: KEY` or `Authorization: Bearer KEY`, compared in constant time.

The key is checked twice over: by ApiKeyMiddleware, before any request body is read or any
parameter is validated (so a client without the key learns nothing and costs nothing), and by
the router dependency, which is what puts the security schemes into the OpenAPI schema."""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

# Module-level, so the string annotations below (PEP 563) resolve when FastAPI reads them.
API_KEY_HEADER = APIKeyHeader(name="X-API-Key", auto_error=False)
BEARER = HTTPBearer(auto_error=False)
ApiKey = Annotated[str | None, Security(API_KEY_HEADER)]
BearerToken = Annotated[HTTPAuthorizationCredentials | None, Security(BEARER)]


# Routes that hold no data: liveness, the search page and its assets (the page asks for the key
# and sends it on its API calls), and the API docs. Everything else needs the key.
PUBLIC_PATHS = frozenset(
    {"/health", "/", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"}
)
PUBLIC_PREFIXES = ("/static/",)


def key_problem(given: str | None, expected: bytes) -> HTTPException | None:
    """The 401 for a missing or wrong key, or None when `given` is the key."""
    if given is None:
        return HTTPException(
            401,
            "this server needs an API key: send `X-API-Key: KEY` or `Authorization: Bearer KEY`",
            headers={"WWW-Authenticate": "Bearer"},
        )
    # Constant-time, so response timing does not reveal how much of a guess was right. Bytes,
    # because compare_digest refuses non-ASCII str (a header may hold any latin-1 text).
    if not hmac.compare_digest(given.encode("utf-8", "surrogateescape"), expected):
        return HTTPException(
            401, "the API key is not valid", headers={"WWW-Authenticate": "Bearer"}
        )
    return None


def api_key_dependency(api_key: str) -> Callable[[str | None, Any], None]:
    """A dependency accepting `X-API-Key: KEY` or `Authorization: Bearer KEY`, else 401."""
    expected = api_key.encode()

    def require_key(key: ApiKey, token: BearerToken) -> None:
        given = key if key is not None else (token.credentials if token else None)
        problem = key_problem(given, expected)
        if problem is not None:
            raise problem

    return require_key


def _given_key(scope: Scope) -> str | None:
    """The key a request sends, read as APIKeyHeader and HTTPBearer read it."""
    headers = dict(scope["headers"])
    if b"x-api-key" in headers:
        return headers[b"x-api-key"].decode("latin-1")
    scheme, _, credentials = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
    if scheme.lower() == "bearer" and credentials:
        return credentials
    return None


class ApiKeyMiddleware:
    """401 for any request without the key to a route that is not public, before the app reads
    its body or validates its parameters."""

    def __init__(
        self, app: ASGIApp, api_key: str, reject: Callable[[HTTPException], ASGIApp]
    ) -> None:
        self.app = app
        self.expected = api_key.encode()
        self.reject = reject

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] == "http" and not (
            path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)
        ):
            problem = key_problem(_given_key(scope), self.expected)
            if problem is not None:
                await self.reject(problem)(scope, receive, send)
                return
        await self.app(scope, receive, send)
