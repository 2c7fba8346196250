"""The SQL of product merchandising: filter conditions as one WHERE clause, facet counts
(GROUP BY over the passing products), sorted and paged product ids. Values are read from the
products' JSON metadata; text is matched on the folded shadow (folding.py), so matching is
case- and accent-insensitive. search/merch.py turns requests into these calls."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from . import folding

NUMERIC = "json_type(metadata, ?) IN ('integer', 'real')"


@dataclass(frozen=True)
class Condition:
    """One filter on one column: any of `values` (typed: bools, numbers, folded text), none of
    them (`negate`), a value present or absent (`exists`), or a numeric range (inclusive)."""

    column: str
    kind: str  # the column's type (schema.py)
    values: tuple[Any, ...] = ()
    negate: bool = False
    exists: bool | None = None
    low: float | None = None
    high: float | None = None


@dataclass(frozen=True)
class SortKey:
    """Order by one column, ascending or descending; products without a value come last."""

    column: str
    kind: str
    descending: bool = False


def json_path(column: str) -> str:
    return '$."' + column.replace('"', '""') + '"'


def _source(db: sqlite3.Connection, kind: str) -> str:
    """Where a column's values are matched: the folded shadow for text, else the metadata."""
    if kind in ("number", "boolean") or not folding.has_column(db):
        return "metadata"
    return "folded"


def _condition_sql(db: sqlite3.Connection, cond: Condition) -> tuple[str, list[Any]]:
    path = json_path(cond.column)
    if cond.exists is not None:
        kind = "IFNULL(json_type(metadata, ?), 'null')"
        present = (
            f"({kind} NOT IN ('null', 'array') OR IFNULL(json_array_length(metadata, ?), 0) > 0)"
        )
        return (present if cond.exists else f"NOT {present}"), [path, path]
    if cond.low is not None or cond.high is not None:
        # SQLite orders any text after every number, so only numbers may meet a numeric bound.
        clauses, params = [NUMERIC], [path]
        if cond.low is not None:
            clauses.append("json_extract(metadata, ?) >= ?")
            params += [path, cond.low]
        if cond.high is not None:
            clauses.append("json_extract(metadata, ?) <= ?")
            params += [path, cond.high]
        return "(" + " AND ".join(clauses) + ")", params
    source = _source(db, cond.kind)
    marks = ",".join("?" * len(cond.values))
    values = list(cond.values)
    if cond.kind == "boolean":
        values = [1 if value else 0 for value in values]
    if cond.kind == "list":
        sql = f"EXISTS (SELECT 1 FROM json_each({source}, ?) WHERE value IN ({marks}))"
    elif cond.kind in ("number", "boolean") or source == "folded":
        sql = f"json_extract({source}, ?) IN ({marks})"
    else:  # an older catalog without the folded shadow: compare as text
        sql = f"CAST(json_extract({source}, ?) AS TEXT) IN ({marks})"
    if cond.negate:  # a product without a value is not equal to it: it passes
        sql = f"NOT IFNULL({sql}, 0)"
    return sql, [path, *values]


def where_sql(
    db: sqlite3.Connection,
    conditions: Sequence[Condition],
    *,
    skip: str | None = None,
    ids: Sequence[str] | None = None,
    rowids: Sequence[int] | None = None,
) -> tuple[str, list[Any]]:
    """The WHERE clause of `conditions` (those on column `skip` left out), restricted to the
    products `ids` (SKUs) and `rowids` when given."""
    clauses, params = [], []
    for cond in conditions:
        if cond.column == skip:
            continue
        sql, values = _condition_sql(db, cond)
        clauses.append(sql)
        params += values
    if ids is not None:
        # One JSON parameter however many ids: no chunking, and ORDER BY spans them all.
        clauses.append("id IN (SELECT value FROM json_each(?))")
        params.append(_json_list(ids))
    if rowids is not None:
        clauses.append("rowid IN (SELECT value FROM json_each(?))")
        params.append(_json_list(rowids))
    return " AND ".join(clauses) or "1", params


def _json_list(ids: Sequence[str] | Sequence[int]) -> str:
    return json.dumps(list(ids))


def _order_sql(db: sqlite3.Connection, keys: Sequence[SortKey]) -> tuple[str, list[Any]]:
    terms, params = [], []
    for key in keys:
        source = _source(db, key.kind)
        direction = "DESC" if key.descending else "ASC"
        terms.append(f"json_extract({source}, ?) {direction} NULLS LAST")
        params.append(json_path(key.column))
    terms.append("id ASC")  # the SKU breaks ties: pages never overlap or skip
    return ", ".join(terms), params


def select_ids(
    db: sqlite3.Connection,
    conditions: Sequence[Condition],
    *,
    order: Sequence[SortKey] = (),
    ids: Sequence[str] | None = None,
    rowids: Sequence[int] | None = None,
    limit: int | None = None,
    offset: int = 0,
) -> list[str]:
    """Ids of the products passing `conditions` (among `ids` when given), by `order` then
    SKU, from `offset`, at most `limit`; in no particular order without `order` and `limit`."""
    where, params = where_sql(db, conditions, ids=ids, rowids=rowids)
    sql = f"SELECT id FROM products WHERE {where}"
    if not order and limit is None:  # a set: the table's own order, no sort (or index walk)
        return [row[0] for row in db.execute(sql, params)]
    order_by, order_params = _order_sql(db, order)
    sql += f" ORDER BY {order_by}"
    if limit is not None:
        sql += " LIMIT ? OFFSET ?"
        order_params += [limit, offset]
    return [row[0] for row in db.execute(sql, [*params, *order_params])]


def select_rowids(
    db: sqlite3.Connection, conditions: Sequence[Condition], rowids: Sequence[int] | None = None
) -> list[int]:
    """Row ids of the products passing `conditions` (among `rowids` when given): a set that
    later queries narrow, sort and count without scanning the table again."""
    where, params = where_sql(db, conditions, rowids=rowids)
    return [row[0] for row in db.execute(f"SELECT rowid FROM products WHERE {where}", params)]


def select_item_ids(db: sqlite3.Connection, conditions: Sequence[Condition]) -> list[int]:
    """Ids of the items (titles, images) of the products passing `conditions`, ascending: one
    join, where SKUs then their items took two reads (a list of 66k SKUs, then 133 chunked
    IN queries)."""
    where, params = where_sql(db, conditions)
    sql = (
        "SELECT items.id FROM items WHERE items.product_id IN "
        f"(SELECT id FROM products WHERE {where}) ORDER BY items.id"
    )
    return [row[0] for row in db.execute(sql, params)]


def count(db: sqlite3.Connection, conditions: Sequence[Condition]) -> int:
    """How many products pass `conditions`."""
    where, params = where_sql(db, conditions)
    return int(db.execute(f"SELECT COUNT(*) FROM products WHERE {where}", params).fetchone()[0])


def count_values(
    db: sqlite3.Connection, column: str, kind: str, where: str, params: list[Any], limit: int
) -> tuple[list[tuple[Any, int]], int]:
    """The `limit` most frequent values of a keyword, text, list or boolean column among the
    products passing `where` (most frequent first, then by value), and how many values there
    are in all (each element of a list counts). Text groups by its folded form and shows one
    of its spellings (the greatest: lower case sorts after upper case)."""
    path = json_path(column)
    source = _source(db, kind)
    if kind == "list":
        # The passing rows first: json_each has an `id` column of its own.
        shown = "json_extract(p.metadata, ? || '[' || j.key || ']')"
        grouped = (
            f"SELECT j.value AS v, MAX({shown}) AS shown, COUNT(DISTINCT p.id) AS n "
            f"FROM (SELECT id, metadata, {source} AS src FROM products WHERE {where}) AS p, "
            "json_each(p.src, ?) AS j GROUP BY v"
        )
        args = [path, *params, path]
    else:
        grouped = (
            f"SELECT json_extract({source}, ?) AS v, MAX(json_extract(metadata, ?)) AS shown, "
            f"COUNT(*) AS n FROM products WHERE {where} AND json_extract({source}, ?) IS NOT NULL "
            "GROUP BY v"
        )
        args = [path, path, *params, path]
    # The window sums every group before LIMIT keeps the top ones.
    sql = f"SELECT shown, n, SUM(n) OVER () FROM ({grouped}) ORDER BY n DESC, v ASC LIMIT ?"
    rows = db.execute(sql, [*args, limit]).fetchall()
    total = int(rows[0][2]) if rows else 0
    if kind == "boolean":
        return [(bool(value), int(n)) for value, n, _ in rows], total
    return [(value, int(n)) for value, n, _ in rows], total


def count_bands(
    db: sqlite3.Connection,
    column: str,
    bands: Sequence[tuple[float | None, float | None]],
    where: str,
    params: list[Any],
) -> list[int]:
    """Products passing `where` per band [from, to) of a number column (None: an open end),
    counted in one pass; bands may overlap or leave gaps."""
    path = json_path(column)
    sums, args = [], []
    for low, high in bands:
        tests = ["1"]
        if low is not None:
            tests.append("v >= ?")
            args.append(low)
        if high is not None:
            tests.append("v < ?")
            args.append(high)
        sums.append(f"IFNULL(SUM(CASE WHEN {' AND '.join(tests)} THEN 1 ELSE 0 END), 0)")
    sql = (
        f"SELECT {', '.join(sums) or '0'} FROM (SELECT json_extract(metadata, ?) AS v "
        f"FROM products WHERE {where} AND {NUMERIC})"
    )
    row = db.execute(sql, [*args, path, *params, path]).fetchone()
    return [int(n) for n in row][: len(bands)]


def number_values(db: sqlite3.Connection, column: str) -> list[float]:
    """Every product's value of a number column, ascending (band edges come from these)."""
    path = json_path(column)
    sql = f"SELECT json_extract(metadata, ?) AS v FROM products WHERE {NUMERIC} ORDER BY v"
    return [row[0] for row in db.execute(sql, [path, path])]


__all__ = [
    "Condition",
    "SortKey",
    "count",
    "count_bands",
    "count_values",
    "json_path",
    "number_values",
    "select_ids",
    "select_item_ids",
    "select_rowids",
    "where_sql",
]
