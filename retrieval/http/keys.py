"""Scoped keys on the HTTP app (keys.py): once the index has any key, or `--api-key` is set,
every route but /health needs one. `read` keys search and read, `write` keys also change
products and the schema, `admin` keys (and the single `--api-key`) also read /audit. No key or
a wrong one: 401 (with the challenges of security.py); too small a scope: 403.

The check runs before any body is read or any parameter validated, and leaves the key's name in
`request.state.key_name` for the audit log."""

from __future__ import annotations

import hmac
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from ..storage import keys
from .security import PUBLIC_PATHS, key_problem, presented_key, wants_browser_challenge

# Whether the index has keys is re-read at most this often: a key created or revoked with
# `mmsearch keys` takes effect within a second, without a query per request.
KEYS_TTL_S = 1.0
ADMIN_KEY_NAME = "api-key"  # the audit log's name for the single --api-key
WRITE_METHODS = frozenset({"PUT", "PATCH", "DELETE"})


def needed_scope(method: str, path: str) -> str:
    """The scope a request needs."""
    if path == "/audit":
        return "admin"
    if method in WRITE_METHODS or (method == "POST" and path == "/products/bulk"):
        return "write"
    return "read"


class KeyBook:
    """Read-only lookups of the index's keys, on a connection of its own."""

    def __init__(self, catalog_path: Path) -> None:
        self._db = sqlite3.connect(
            f"file:{catalog_path}?mode=ro", uri=True, check_same_thread=False
        )
        self._lock = threading.Lock()
        self._checked = 0.0
        self._has_keys = False

    def has_keys(self) -> bool:
        with self._lock:
            if time.monotonic() - self._checked > KEYS_TTL_S:
                self._has_keys = keys.has_keys(self._db)
                self._checked = time.monotonic()
            return self._has_keys

    def find(self, secret: str) -> keys.ApiKey | None:
        with self._lock:
            return keys.find_key(self._db, secret)


class ScopedKeyMiddleware:
    """401/403 before the app runs (see the module docstring)."""

    def __init__(
        self,
        app: ASGIApp,
        book: KeyBook,
        api_key: str | None,
        reject: Callable[[HTTPException], ASGIApp],
    ) -> None:
        self.app = app
        self.book = book
        self.admin_key = api_key.encode() if api_key else None
        self.reject = reject

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] == "http" and path not in PUBLIC_PATHS:
            problem, name = self._check(scope, path)
            if problem is not None:
                await self.reject(problem)(scope, receive, send)
                return
            scope.setdefault("state", {})["key_name"] = name
        await self.app(scope, receive, send)

    def _check(self, scope: Scope, path: str) -> tuple[HTTPException | None, str]:
        if self.admin_key is None and not self.book.has_keys():
            return None, "anonymous"
        headers = dict(scope["headers"])
        given = presented_key(headers)
        browser = wants_browser_challenge(path, headers)
        if given is not None and self.admin_key is not None:
            # Constant-time, so response timing does not reveal how much of a guess was right.
            # Bytes: compare_digest refuses non-ASCII str (a header may hold any latin-1 text).
            encoded = given.encode("utf-8", "surrogateescape")
            if hmac.compare_digest(encoded, self.admin_key):
                return None, ADMIN_KEY_NAME
        found = self.book.find(given) if given else None
        if found is None:  # the same 401s (and challenges) as a single key
            return key_problem(given, browser=browser), ""
        needed = needed_scope(scope.get("method", "GET"), path)
        if not keys.allows(found.scope, needed):
            message = f"this key ({found.name}) has scope {found.scope}; this needs {needed}"
            return HTTPException(403, message), found.name
        return None, found.name


__all__ = ["KeyBook", "ScopedKeyMiddleware", "needed_scope"]
