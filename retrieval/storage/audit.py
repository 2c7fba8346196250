"""The audit log: every product change (HTTP or CLI) appended to the catalog's `audit` table in
the same transaction as the change, so an entry exists exactly when its change does. Entries
name the key (never the key itself), the action, the SKU, the outcome and the request id."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Actor:
    """Who writes: a key's name (`cli:USER` for the command line) and the request's id."""

    key_name: str
    request_id: str | None = None


@dataclass(frozen=True)
class Entry:
    action: str
    sku: str | None
    outcome: str
    detail: str = ""


def append(db: sqlite3.Connection, actor: Actor, entries: Iterable[Entry]) -> None:
    """Add entries (inside the caller's transaction)."""
    now = time.time()
    db.executemany(
        "INSERT INTO audit(time, key_name, action, sku, outcome, request_id, detail) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        (
            (now, actor.key_name, e.action, e.sku, e.outcome, actor.request_id, e.detail or None)
            for e in entries
        ),
    )


def read(
    db: sqlite3.Connection, since: float | None = None, limit: int = 1000
) -> list[dict[str, Any]]:
    """Entries at or after `since` (unix time), oldest first, at most `limit`."""
    rows = db.execute(
        "SELECT seq, time, key_name, action, sku, outcome, request_id, detail FROM audit "
        "WHERE time >= ? ORDER BY seq LIMIT ?",
        (since or 0.0, limit),
    )
    names = ("seq", "time", "key_name", "action", "sku", "outcome", "request_id", "detail")
    return [dict(zip(names, row, strict=True)) for row in rows]


__all__ = ["Actor", "Entry", "append", "read"]
