"""What a commit records about each collection's faiss index, as one typed record. It is kept in
the catalog's meta table, one `FIELD:collection` key per field, so indexes written before the
record existed read the same and no migration is needed."""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from typing import Any

from ..index.tuning import Tuning
from .catalog import Catalog


@dataclass(frozen=True)
class CollectionState:
    """One collection's index, as its last commit left it."""

    index_type: str = "auto"  # what --index-type asked for (auto, flat, ..., a factory string)
    factory: str | None = None  # the faiss factory string of the index built for it
    built_for: str | None = None  # the index_type the index was last (re)built for
    built_n: int = 0  # vectors at that build: an IVF stays right for n/2..2n
    ondisk: bool = False  # built as a sharded IVF with its lists in an .ivfdata file
    ivfdata: str = ""  # that file's name, "" when the lists are in memory
    tuning: Tuning | None = None  # recall tuning of an approximate index, None when exact
    sha256: str = ""  # checksum of the faiss file, checked by readers and `mmsearch check`


def _encode(name: str, value: Any) -> str:
    if name == "tuning":
        return json.dumps(value.to_dict()) if value is not None else ""
    if name == "ondisk":
        return "1" if value else ""
    return "" if value is None else str(value)


def _decode(name: str, raw: str | None) -> Any:
    default = CollectionState.__dataclass_fields__[name].default
    if raw is None or (raw == "" and name not in ("ivfdata", "sha256")):
        return default
    if name == "tuning":
        return Tuning.from_dict(json.loads(raw))
    if name == "ondisk":
        return raw == "1"
    if name == "built_n":
        return int(raw)
    return raw


def read_state(catalog: Catalog, collection: str) -> CollectionState:
    """The record of `collection` (defaults for what no commit has written yet)."""
    names = {f"{field.name}:{collection}": field.name for field in fields(CollectionState)}
    query = f"SELECT key, value FROM meta WHERE key IN ({','.join('?' * len(names))})"
    raw = {names[key]: value for key, value in catalog.db.execute(query, list(names))}
    return CollectionState(**{name: _decode(name, raw.get(name)) for name in names.values()})


def write_state(catalog: Catalog, collection: str, **changes: Any) -> None:
    """Record the given fields of `collection` (inside the caller's transaction)."""
    known = {field.name for field in fields(CollectionState)}
    for name, value in changes.items():
        if name not in known:
            raise TypeError(f"CollectionState has no field {name!r}")
        catalog.set_meta(f"{name}:{collection}", _encode(name, value))


__all__ = ["CollectionState", "read_state", "write_state"]
