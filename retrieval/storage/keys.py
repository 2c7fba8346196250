"""Scoped API keys kept in the index's catalog: `read` searches and reads, `write` also changes
products, `admin` also reads the audit log. A key is shown once, when created; only its sha256
is stored (keys are 256 random bits, so a fast hash is as strong as a slow one and lookups stay
one indexed SELECT)."""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
import time
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidQueryError

SCOPES = ("read", "write", "admin")
PREFIX = "mms_"


@dataclass(frozen=True)
class ApiKey:
    """One stored key (never the key itself)."""

    id: int
    name: str
    scope: str
    created: float
    revoked: float | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "scope": self.scope,
            "created": self.created,
            "revoked": self.revoked,
        }


def allows(scope: str, needed: str) -> bool:
    """True when a key of `scope` may do what needs `needed`."""
    return SCOPES.index(scope) >= SCOPES.index(needed)


def key_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).hexdigest()


def create_key(db: sqlite3.Connection, scope: str, name: str | None = None) -> tuple[ApiKey, str]:
    """A new key of `scope`; (its record, the key, to be shown once).

    Raises:
        InvalidQueryError: an unknown scope, or a name already taken.
    """
    if scope not in SCOPES:
        raise InvalidQueryError(f"scope {scope!r} is not one of {', '.join(SCOPES)}")
    secret = PREFIX + secrets.token_urlsafe(32)
    now = time.time()
    name = name or f"{scope}-{secrets.token_hex(3)}"
    try:
        with db:
            cursor = db.execute(
                "INSERT INTO api_keys(name, scope, hash, created) VALUES (?, ?, ?, ?)",
                (name, scope, key_hash(secret), now),
            )
    except sqlite3.IntegrityError as err:
        raise InvalidQueryError(
            f"a key named {name!r} exists; pick another --name or revoke it first"
        ) from err
    return ApiKey(int(cursor.lastrowid or 0), name, scope, now, None), secret


def list_keys(db: sqlite3.Connection) -> list[ApiKey]:
    rows = db.execute("SELECT id, name, scope, created, revoked FROM api_keys ORDER BY id")
    return [ApiKey(*row) for row in rows]


def revoke_key(db: sqlite3.Connection, name: str) -> ApiKey:
    """Revoke the key named `name` (effective on the server's next request).

    Raises:
        InvalidQueryError: no active key has that name.
    """
    with db:
        cursor = db.execute(
            "UPDATE api_keys SET revoked=? WHERE name=? AND revoked IS NULL", (time.time(), name)
        )
    if cursor.rowcount == 0:
        raise InvalidQueryError(f"no active key named {name!r} (see `mmsearch keys list`)")
    return next(key for key in list_keys(db) if key.name == name)


def has_keys(db: sqlite3.Connection) -> bool:
    """True once the index has any key (then every route but /health needs one)."""
    try:
        row = db.execute("SELECT EXISTS(SELECT 1 FROM api_keys WHERE revoked IS NULL)")
    except sqlite3.OperationalError:  # an index from before keys existed, opened read-only
        return False
    return bool(row.fetchone()[0])


def find_key(db: sqlite3.Connection, secret: str) -> ApiKey | None:
    """The active key `secret` is, or None."""
    row = db.execute(
        "SELECT id, name, scope, created, revoked FROM api_keys WHERE hash=? AND revoked IS NULL",
        (key_hash(secret),),
    ).fetchone()
    return ApiKey(*row) if row else None


__all__ = ["SCOPES", "ApiKey", "allows", "create_key", "find_key", "has_keys", "list_keys"]
