"""`mmsearch keys create|list|revoke` (scoped API keys, keys.py) and `mmsearch audit` (the log
of product changes, audit.py)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Annotated

import typer

from ..config import DEFAULT_INDEX_DIR
from ..errors import InvalidQueryError
from .common import IndexOption, run_guarded

keys_app = typer.Typer(
    help="Scoped API keys for `mmsearch serve`: read, write (also changes products), admin "
    "(also reads the audit log). Once an index has a key, serve requires one.",
    no_args_is_help=True,
)


def _open(index_dir: Path | None):  # type: ignore[no-untyped-def]
    from ..storage.store import IndexStore

    return IndexStore.open(index_dir or DEFAULT_INDEX_DIR)


@keys_app.command("create")
def create(
    scope: Annotated[str, typer.Option(help="read, write or admin")] = "read",
    name: Annotated[
        str | None, typer.Option(help="A name for the audit log (default: SCOPE-xxxxxx)")
    ] = None,
    index_dir: IndexOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
) -> None:
    """Create a key and print it once: only its hash is stored."""

    def body() -> None:
        from ..storage.keys import create_key

        with _open(index_dir) as store:
            record, secret = create_key(store.catalog.db, scope, name)
        if as_json:
            typer.echo(json.dumps({**record.to_dict(), "key": secret}))
        else:
            typer.echo(secret)
            typer.echo(f"key {record.name!r} ({record.scope}): shown once, store it now", err=True)

    run_guarded(body)


@keys_app.command("list")
def list_command(
    index_dir: IndexOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
) -> None:
    """List keys (names, scopes, when created or revoked; never the keys)."""

    def body() -> None:
        from ..storage.keys import list_keys

        with _open(index_dir) as store:
            found = list_keys(store.catalog.db)
        if as_json:
            typer.echo(json.dumps([key.to_dict() for key in found]))
            return
        for key in found:
            state = f"revoked {_when(key.revoked)}" if key.revoked else "active"
            typer.echo(f"{key.name}\t{key.scope}\tcreated {_when(key.created)}\t{state}")

    run_guarded(body)


@keys_app.command("revoke")
def revoke(
    name: Annotated[str, typer.Argument(help="The key's name (see `mmsearch keys list`)")],
    index_dir: IndexOption = None,
) -> None:
    """Revoke a key; servers refuse it from their next request."""

    def body() -> None:
        from ..storage.keys import revoke_key

        with _open(index_dir) as store:
            key = revoke_key(store.catalog.db, name)
        typer.echo(f"revoked {key.name} ({key.scope})")

    run_guarded(body)


def audit(
    since: Annotated[
        str | None,
        typer.Option(help="Only entries at or after T: ISO 8601 (2026-12-06T08:00) or unix time"),
    ] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many entries")] = 1000,
    index_dir: IndexOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per entry")] = False,
) -> None:
    """Show the audit log: every product change (HTTP or CLI) with its key name and outcome."""

    def body() -> None:
        from ..storage import audit as audit_log

        start = _parse_time(since) if since else None
        with _open(index_dir) as store:
            entries = audit_log.read(store.catalog.db, start, limit)
        for entry in entries:
            if as_json:
                typer.echo(json.dumps(entry))
            else:
                detail = f" ({entry['detail']})" if entry["detail"] else ""
                typer.echo(
                    f"{_when(entry['time'])}\t{entry['key_name']}\t{entry['action']}\t"
                    f"{entry['sku'] or '-'}\t{entry['outcome']}{detail}"
                )

    run_guarded(body)


def _parse_time(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        pass
    try:
        stamp = dt.datetime.fromisoformat(text)
    except ValueError as err:
        raise InvalidQueryError(f"--since {text!r}: give ISO 8601 or unix time") from err
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=dt.timezone.utc)
    return stamp.timestamp()


def _when(stamp: float | None) -> str:
    if stamp is None:
        return "never"
    return dt.datetime.fromtimestamp(stamp, dt.timezone.utc).isoformat(timespec="seconds")
