"""API-key security: with a key set, every route but /health needs it, sent as `X-API-Key: KEY`,
`Authorization: Bearer KEY` or HTTP Basic auth (any user name, the key as password), compared
in constant time.

Basic auth is how a browser logs in: the page, its assets and the docs are protected too, so
the browser must hold the key before any script runs. A 401 to a browser (a route it navigates
to, or a request that accepts HTML) carries `WWW-Authenticate: Basic realm="mmsearch"`, the
browser prompts once, and then sends the credentials on every same-origin request, fetch() and
<img> included. API clients get a `Bearer` challenge, which no browser turns into a prompt.

http/keys.py's ScopedKeyMiddleware checks the key (the single --api-key or a scoped one) before
any request body is read or any parameter is validated, so a client without the key learns
nothing and costs nothing; the router dependency here only puts the security schemes into the
OpenAPI schema.

Without a key, HostCheckMiddleware answers only requests addressed to this machine by a name it
trusts, against DNS rebinding: a web page on attacker.example whose name is re-pointed at
127.0.0.1 is same-origin with itself, so its scripts could read every answer of a keyless server
on this machine; its requests carry `Host: attacker.example` and are refused."""

from __future__ import annotations

import base64
import binascii
import ipaddress
from collections.abc import Callable, Mapping
from typing import Annotated

from fastapi import Request, Security
from fastapi.security import (
    APIKeyHeader,
    HTTPAuthorizationCredentials,
    HTTPBasic,
    HTTPBasicCredentials,
    HTTPBearer,
)
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

REALM = "mmsearch"
BASIC_CHALLENGE = f'Basic realm="{REALM}", charset="UTF-8"'


class _DocumentedBasic(HTTPBasic):
    """HTTPBasic for the OpenAPI schema only: FastAPI's raises its own 401 on a malformed
    header even with auto_error=False, and the key check below must be the only judge."""

    async def __call__(self, request: Request) -> HTTPBasicCredentials | None:  # type: ignore[override]
        return None


# Module-level, so the string annotations below (PEP 563) resolve when FastAPI reads them.
# These only document the schemes in /docs; require_key reads the headers itself.
API_KEY_HEADER = APIKeyHeader(name="X-API-Key", auto_error=False)
BEARER = HTTPBearer(auto_error=False)
BASIC = _DocumentedBasic(
    realm=REALM, auto_error=False, description="any user name; the API key as password"
)
ApiKey = Annotated[str | None, Security(API_KEY_HEADER)]
BearerToken = Annotated[HTTPAuthorizationCredentials | None, Security(BEARER)]
BasicCredentials = Annotated[HTTPBasicCredentials | None, Security(BASIC)]

# Liveness only: a load balancer probes it without credentials and it tells nobody anything.
PUBLIC_PATHS = frozenset({"/health"})
# Routes a browser navigates to (or the docs page loads without scripts adding headers): their
# 401s ask for Basic auth, so the browser prompts instead of showing a JSON error.
BROWSER_PATHS = frozenset({"/", "/docs", "/redoc", "/openapi.json"})
BROWSER_PREFIXES = ("/static/", "/docs/")
HOW_TO_SEND = (
    "send `X-API-Key: KEY`, `Authorization: Bearer KEY`, or HTTP Basic auth with the key as "
    "password (a browser asks for it)"
)


def presented_key(headers: Mapping[bytes, bytes]) -> str | None:
    """The key a request sends: its X-API-Key header, else its Bearer token, else the password
    of its Basic credentials ("" for malformed Basic, which then fails the comparison)."""
    if b"x-api-key" in headers:
        return headers[b"x-api-key"].decode("latin-1")
    scheme, _, credentials = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
    credentials = credentials.strip()
    if scheme.lower() == "bearer" and credentials:
        return credentials
    if scheme.lower() == "basic" and credentials:
        try:
            decoded = base64.b64decode(credentials, validate=True)
        except (binascii.Error, ValueError):
            return ""
        # Browsers send UTF-8; surrogateescape keeps any other bytes comparable (and wrong).
        _, colon, password = decoded.decode("utf-8", "surrogateescape").partition(":")
        return password if colon else ""
    return None


def wants_browser_challenge(path: str, headers: Mapping[bytes, bytes]) -> bool:
    """True for requests a browser makes by navigating: the page, its assets, the docs, or
    anything asked for as HTML (a link to /search?q=... typed into the address bar)."""
    if path in BROWSER_PATHS or path.startswith(BROWSER_PREFIXES):
        return True
    return b"text/html" in headers.get(b"accept", b"")


def key_problem(given: str | None, *, browser: bool) -> HTTPException:
    """The 401 for a missing key (`given` None) or a wrong one. The message never repeats what
    was sent: a mistyped key in an answer would end up in someone's logs."""
    challenge = {"WWW-Authenticate": BASIC_CHALLENGE if browser else "Bearer"}
    if given is None:
        return HTTPException(401, f"this server needs an API key: {HOW_TO_SEND}", challenge)
    return HTTPException(401, "the API key is not valid", challenge)


def document_key_schemes(_key: ApiKey, _token: BearerToken, _basic: BasicCredentials) -> None:
    """A dependency that only declares the three schemes in the OpenAPI schema, for apps whose
    keys a middleware checks (http/keys.py: scoped keys)."""


# Names a keyless server answers to beyond --allowed-host: `localhost` and any IP address. A
# page reached by an IP address has that address as its origin, so it is this server's own page
# (or another server's, which the browser keeps apart); only a DNS name can be rebound.
LOCAL_NAMES = frozenset({"localhost"})
ANY_HOST = "*"


def host_name(header: str) -> str:
    """The name of a Host header value, without its port and IPv6 brackets, lower-cased."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:].partition("]")[0]
    name = header.rpartition(":")[0] if header.count(":") == 1 else header
    return name.removesuffix(".")  # `localhost.` is localhost, spelled as a full DNS name


def is_trusted_host(name: str, allowed: frozenset[str]) -> bool:
    """True for localhost, an IP address, or a name in `allowed` ("*" allows any name)."""
    if name in LOCAL_NAMES or name in allowed or ANY_HOST in allowed:
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def untrusted_host() -> HTTPException:
    return HTTPException(
        400,
        "without an API key this server answers only to localhost, IP addresses and the names "
        "given with --allowed-host (against DNS rebinding); add --allowed-host NAME for the "
        "name this request used, or serve with --api-key",
    )


class HostCheckMiddleware:
    """400 for requests whose Host header names a host not trusted by is_trusted_host; a
    request without a Host header (HTTP/1.0, never a browser) passes."""

    def __init__(
        self, app: ASGIApp, allowed: frozenset[str], reject: Callable[[HTTPException], ASGIApp]
    ) -> None:
        self.app = app
        self.allowed = frozenset(name.lower() for name in allowed)
        self.reject = reject

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            header = dict(scope["headers"]).get(b"host")
            name = host_name(header.decode("latin-1")) if header is not None else None
            if name is not None and not is_trusted_host(name, self.allowed):
                await self.reject(untrusted_host())(scope, receive, send)
                return
        await self.app(scope, receive, send)
