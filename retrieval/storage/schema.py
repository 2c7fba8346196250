"""Typed product columns: each catalog column is a `number`, `boolean`, `keyword`, `text` or
`list`. Types are inferred once, when a column first arrives, and then belong to the index (only
`--schema FILE` or `PUT /schema` change them), so a later row can never flip a column: a cell
that does not fit is that row's error.

The inference rule, over a column's non-empty cells in one import (empty cells mean "no value"):

1. `boolean` when more than half of the cells are booleans (`true`/`false`, any case, or JSON
   true/false);
2. else `number` when more than half are finite numbers (`12`, `59.90`, `-1e3`; not `nan`/`inf`);
3. else `list` when more than half are JSON arrays (JSONL only);
4. else `text` when more than half contain whitespace (titles, descriptions), else `keyword`.

So one `N/A` in a column of prices leaves the column a number and fails that one row."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

COLUMN_TYPES = ("number", "boolean", "keyword", "text", "list")
# Columns every product has; never inferred, never typed by a schema file.
RESERVED = frozenset({"id", "title", "image", "images"})
TRUE, FALSE = "true", "false"


class CellError(ValueError):
    """A cell that does not fit its column's type; str() names the column and the value."""


def parse_boolean(value: Any) -> bool | None:
    """`true`/`false` (any case) or a JSON bool; None for anything else."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in (TRUE, FALSE):
        return value.strip().lower() == TRUE
    return None


def parse_number(value: Any) -> int | float | None:
    """A finite number (ints stay ints); None for anything else."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if not isinstance(value, str):
        return None
    text = value.strip()
    try:
        number = float(text)
    except ValueError:
        return None
    if not math.isfinite(number):
        return None
    is_integer = number.is_integer() and not any(c in text for c in ".eE")
    return int(number) if is_integer else number


def is_empty(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def infer_type(values: Iterable[Any]) -> str:
    """The type of a column from its cells (the rule in the module docstring)."""
    cells = [v for v in values if not is_empty(v)]
    half = len(cells) / 2
    if not cells:
        return "keyword"
    if sum(parse_boolean(v) is not None for v in cells) > half:
        return "boolean"
    if sum(parse_number(v) is not None for v in cells) > half:
        return "number"
    if sum(isinstance(v, list) for v in cells) > half:
        return "list"
    if sum(any(c.isspace() for c in str(v).strip()) for v in cells) > half:
        return "text"
    return "keyword"


def coerce(column: str, kind: str, value: Any) -> Any:
    """`value` as a cell of a `kind` column (None when empty).

    Raises:
        CellError: the value does not fit.
    """
    if is_empty(value):
        return None
    if kind == "boolean":
        parsed: Any = parse_boolean(value)
    elif kind == "number":
        parsed = parse_number(value)
    elif kind == "list":
        parsed = _as_list(value)
    elif isinstance(value, (list, dict)):
        parsed = None
    else:
        parsed = value if isinstance(value, str) else _scalar_text(value)
    if parsed is None:
        raise CellError(f"column {column!r} is a {kind} column; {value!r} is not a {kind}")
    return parsed


def _scalar_text(value: Any) -> str | None:
    if isinstance(value, bool):
        return TRUE if value else FALSE
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSONL may carry NaN literals; JSON proper has no such value
    return str(value)


def _as_list(value: Any) -> list[Any] | None:
    if isinstance(value, list):
        items = value
    elif isinstance(value, str):
        items = [part.strip() for part in value.split("|") if part.strip()]
    else:
        return None
    if any(isinstance(item, (list, dict)) for item in items):
        return None
    return [_scalar_text(item) if not isinstance(item, str) else item for item in items]


def check_schema(schema: Mapping[str, Any], where: str) -> dict[str, str]:
    """A {column: type} mapping validated (a schema file or `PUT /schema` body).

    Raises:
        CellError: a type that is not one of COLUMN_TYPES, or a reserved column.
    """
    checked: dict[str, str] = {}
    for column, kind in schema.items():
        if column in RESERVED:
            raise CellError(f"{where}: {column!r} is not a typed column (id, title, images are)")
        if kind not in COLUMN_TYPES:
            raise CellError(
                f"{where}: column {column!r} has type {kind!r}; use one of "
                + ", ".join(COLUMN_TYPES)
            )
        checked[str(column)] = str(kind)
    return checked


def extend_schema(schema: Mapping[str, str], rows: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """`schema` plus an inferred type for every column of `rows` it does not type yet."""
    rows = list(rows)
    extended = dict(schema)
    columns = dict.fromkeys(c for row in rows for c in row if c and c not in RESERVED)
    for column in columns:
        if column not in extended:
            extended[column] = infer_type(row.get(column) for row in rows)
    return extended


__all__ = [
    "COLUMN_TYPES",
    "RESERVED",
    "CellError",
    "check_schema",
    "coerce",
    "extend_schema",
    "infer_type",
    "parse_boolean",
    "parse_number",
]
