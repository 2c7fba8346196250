"""Merchandising of product searches: filters (OR, not, exists, ranges; text matched case- and
accent-insensitively), facets with counts, sort keys and business boosts. Front ends parse
their syntax with the parse_* functions here; the service applies them (service.py).

Filters, as a mapping (the JSON body's `filters`, and what `filters_from_pairs` makes of a
query string or of repeated `--filter` options):

- `"category": "dogs"`: equal (text ignores case and accents; `true`/`false` for booleans);
- `"category": ["dogs", "cats"]`: any of them (OR);
- `"brand": {"not": "acme"}` (or `"brand!": ...`): none of them; products without a value pass;
- `"brand": {"exists": true}` (or `"brand_exists": true`): has a value (or, false: has none);
- `"price_min": 10`, `"price_max": 50` (or `"price": {"min": 10, "max": 50}`): inclusive range."""

from __future__ import annotations

import math
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..config import (
    DEFAULT_BOOST_LOG_SCALE,
    FACET_BANDS,
    FACET_CACHE_SIZE,
    FACET_VALUES,
    MAX_FACETS,
    MAX_FILTER_VALUES,
    MAX_SORT_KEYS,
)
from ..errors import InvalidQueryError
from ..storage import product_sql
from ..storage.folding import fold_value
from ..storage.product_sql import Condition, SortKey
from ..storage.schema import parse_boolean, parse_number

SORTABLE = ("number", "keyword", "text", "boolean")
FACETABLE = ("number", "keyword", "boolean", "list", "text")
SUFFIXES = ("_min", "_max", "_exists")
OPERATORS = frozenset({"not", "exists", "min", "max"})
_NUMBER = r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?"
_BAND = re.compile(rf"({_NUMBER})?-({_NUMBER})?")


@dataclass(frozen=True)
class Facet:
    """Counts for one column; `bands` ([from, to), None an open end) for a number column,
    None to choose them from the data's quantiles."""

    column: str
    bands: tuple[tuple[float | None, float | None], ...] | None = None

    def echo(self) -> str:
        if not self.bands:
            return self.column
        return self.column + ":" + ",".join(f"{_num(a)}-{_num(b)}" for a, b in self.bands)


@dataclass(frozen=True)
class Sort:
    """One sort key: a column, ascending unless `descending`."""

    column: str
    descending: bool = False

    def echo(self) -> str:
        return f"{self.column}:{'desc' if self.descending else 'asc'}"


@dataclass(frozen=True)
class Boost:
    """A business score modifier: multiply by `factor` when a boolean column is true, or add
    `log_scale * log1p(value)` of a number column (negative values count as 0)."""

    column: str
    factor: float | None = None
    log_scale: float | None = None

    def echo(self) -> str:
        if self.factor is not None:
            return f"{self.column}:{self.factor:g}"
        return f"{self.column}:log:{self.log_scale:g}"


def _num(value: float | None) -> str:
    return "" if value is None else f"{value:g}"


def _split(specs: str | Iterable[str]) -> list[str]:
    raw = [specs] if isinstance(specs, str) else list(specs)
    return [token.strip() for spec in raw for token in spec.split(",") if token.strip()]


def parse_sort(specs: str | Iterable[str]) -> tuple[Sort, ...]:
    """`price:desc,title:asc` (or a list of such) as sort keys; the direction defaults to asc."""
    keys = []
    for token in _split(specs):
        column, _, direction = token.partition(":")
        if direction.lower() not in ("", "asc", "desc"):
            raise InvalidQueryError(f"sort {token!r}: the direction is asc or desc")
        keys.append(Sort(column.strip(), direction.lower() == "desc"))
    if len(keys) > MAX_SORT_KEYS:
        raise InvalidQueryError(f"at most {MAX_SORT_KEYS} sort keys, got {len(keys)}")
    return tuple(keys)


def parse_facets(specs: str | Iterable[str]) -> tuple[Facet, ...]:
    """`category,brand,price:0-50,50-100,100-` (or a list of such) as facets: a token shaped
    like a band (`A-B`, either end may be left open) continues the previous facet's bands."""
    facets: list[Facet] = []
    for token in _split(specs):
        column, colon, first = token.partition(":")
        if not colon and _BAND.fullmatch(token) and facets and facets[-1].bands is not None:
            facets[-1] = Facet(facets[-1].column, (*facets[-1].bands, _band(token)))
            continue
        facets.append(Facet(column.strip(), (_band(first),) if colon else None))
    if len(facets) > MAX_FACETS:
        raise InvalidQueryError(f"at most {MAX_FACETS} facets, got {len(facets)}")
    return tuple(facets)


def _band(text: str) -> tuple[float | None, float | None]:
    match = _BAND.fullmatch(text.strip())
    if match is None or text.strip() == "-":
        raise InvalidQueryError(
            f"facet band {text!r}: write FROM-TO, FROM- or -TO with numbers, e.g. price:0-50,50-"
        )
    low, high = (float(g) if g is not None else None for g in match.groups())
    if any(v is not None and not math.isfinite(v) for v in (low, high)):
        raise InvalidQueryError(f"facet band {text!r}: the ends must be finite numbers")
    if low is not None and high is not None and high <= low:
        raise InvalidQueryError(f"facet band {text!r}: TO must be above FROM")
    return low, high


def parse_boosts(specs: str | Iterable[str]) -> tuple[Boost, ...]:
    """`in_stock:1.2` (multiply when true) and `popularity:log` or `popularity:log:0.05` (add
    a scaled log1p); `none` alone means no boosts (not even the server's defaults)."""
    boosts = []
    for token in _split(specs):
        if token.lower() == "none":
            continue
        column, _, rest = token.partition(":")
        kind, _, scale = rest.partition(":")
        try:
            if kind.lower() == "log":
                log_scale = float(scale) if scale else DEFAULT_BOOST_LOG_SCALE
                boost = Boost(column.strip(), log_scale=log_scale)
            else:
                boost = Boost(column.strip(), factor=float(kind))
        except ValueError:
            raise InvalidQueryError(
                f"boost {token!r}: write COLUMN:FACTOR (e.g. in_stock:1.2) or COLUMN:log[:SCALE]"
            ) from None
        number = boost.factor if boost.factor is not None else boost.log_scale
        if not column.strip() or number is None or not math.isfinite(number) or number < 0:
            raise InvalidQueryError(f"boost {token!r}: the factor or scale must be 0 or more")
        boosts.append(boost)
    return tuple(boosts)


def filters_from_pairs(pairs: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """Text filters (query-string parameters, `--filter` options) as a filters mapping:
    `COLUMN=V` repeated is any of them, `COLUMN!=V` (the name ends in `!`) none of them,
    `COLUMN_min`/`_max`/`_exists` once each."""
    grouped: dict[str, list[str]] = {}
    for name, value in pairs:
        grouped.setdefault(name.strip(), []).append(value.strip())
    filters: dict[str, Any] = {}
    for name, values in grouped.items():
        if name.endswith("!"):
            filters[name] = values
        elif name.endswith(SUFFIXES):
            if len(values) > 1:
                raise InvalidQueryError(f"filter {name!r} is given {len(values)} times; once")
            filters[name] = values[0]
        else:
            filters[name] = values[0] if len(values) == 1 else values
    return filters


def filter_column(name: str, columns: Mapping[str, str]) -> tuple[str, str | None]:
    """(column, suffix) a filter's name refers to: `price_min` -> (price, _min) when price is
    a column, `brand!` -> (brand, !)."""
    if name.endswith("!") and name[:-1] in columns:
        return name[:-1], "!"
    for suffix in SUFFIXES:
        if name.endswith(suffix) and name.removesuffix(suffix) in columns:
            return name.removesuffix(suffix), suffix
    return name, None


def parse_conditions(filters: Mapping[str, Any], columns: Mapping[str, str]) -> list[Condition]:
    """A filters mapping (module docstring) as typed conditions on known columns.

    Raises:
        InvalidQueryError: an unknown column, or a value that does not fit its column.
    """
    conditions = []
    for name, value in filters.items():
        column, suffix = filter_column(name, columns)
        if column not in columns:
            known = ", ".join(sorted(columns)) or "none"
            raise InvalidQueryError(f"unknown filter {name!r}; product columns: {known}")
        kind = columns[column]
        if suffix == "!":
            value = {"not": value}
        elif suffix is not None:
            value = {suffix[1:]: value}
        if isinstance(value, Mapping):
            conditions.append(_operator_condition(name, column, kind, value))
        else:
            conditions.append(Condition(column, kind, _values(name, kind, value)))
    return conditions


def _operator_condition(name: str, column: str, kind: str, ops: Mapping[str, Any]) -> Condition:
    unknown = set(ops) - OPERATORS
    if unknown or not ops or ("exists" in ops and len(ops) > 1):
        raise InvalidQueryError(
            f"filter {name!r}: use one of {{'not': V}}, {{'exists': true}} or "
            "{'min': N, 'max': N}"
        )
    if "exists" in ops:
        exists = parse_boolean(ops["exists"])
        if exists is None:
            raise InvalidQueryError(f"filter {name!r}: exists takes true or false")
        return Condition(column, kind, exists=exists)
    if "not" in ops:
        if set(ops) != {"not"}:
            raise InvalidQueryError(f"filter {name!r}: 'not' goes alone")
        return Condition(column, kind, _values(name, kind, ops["not"]), negate=True)
    low, high = (_bound(name, ops.get(key)) for key in ("min", "max"))
    return Condition(column, kind, low=low, high=high)


def _bound(name: str, value: Any) -> float | None:
    if value is None:
        return None
    number = parse_number(value)
    if number is None:
        raise InvalidQueryError(f"filter {name} needs a number, got {value!r}")
    return float(number)


def _values(name: str, kind: str, value: Any) -> tuple[Any, ...]:
    """A filter's value(s) as its column's type: booleans and numbers as such, text folded."""
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    if not values or len(values) > MAX_FILTER_VALUES:
        raise InvalidQueryError(
            f"filter {name} takes 1 to {MAX_FILTER_VALUES} values, got {len(values)}"
        )
    typed = []
    for one in values:
        if kind == "boolean":
            parsed = parse_boolean(one)
            if parsed is None:
                raise InvalidQueryError(f"filter {name} needs true or false, got {one!r}")
            typed.append(parsed)
        elif kind == "number":
            number = parse_number(one)
            if number is None:
                raise InvalidQueryError(f"filter {name} needs a number, got {one!r}")
            typed.append(number)
        elif isinstance(one, (dict, list)) or one is None:
            raise InvalidQueryError(f"filter {name}: {one!r} is not a value")
        else:
            typed.append(fold_value(one))
    return tuple(typed)


def sort_keys(sort: Sequence[Sort], columns: Mapping[str, str]) -> list[SortKey]:
    """Sort keys checked against the columns (number, keyword, text or boolean)."""
    keys = []
    for key in sort:
        kind = columns.get(key.column)
        if kind not in SORTABLE:
            raise InvalidQueryError(
                f"cannot sort by {key.column!r}; sortable columns: "
                + ", ".join(sorted(c for c, k in columns.items() if k in SORTABLE))
            )
        keys.append(SortKey(key.column, kind, key.descending))
    return keys


def check_boosts(boosts: Sequence[Boost], columns: Mapping[str, str]) -> None:
    """A factor needs a boolean column, a log boost a number column."""
    for boost in boosts:
        need = "boolean" if boost.factor is not None else "number"
        if columns.get(boost.column) != need:
            raise InvalidQueryError(
                f"boost {boost.echo()!r} needs a {need} column; {boost.column!r} is "
                f"{columns.get(boost.column, 'not a column')}"
            )


def boosted(score: float, metadata: Mapping[str, Any], boosts: Sequence[Boost]) -> float:
    """`score` times every factor whose boolean column is true, plus every scaled log1p."""
    for boost in boosts:
        value = metadata.get(boost.column)
        if boost.factor is not None and value is True:
            score *= boost.factor
        elif boost.log_scale is not None and parse_number(value) is not None:
            score += boost.log_scale * math.log1p(max(float(value), 0.0))
    return score


def facet_counts(
    db: Any,
    facets: Sequence[Facet],
    conditions: Sequence[Condition],
    columns: Mapping[str, str],
    ids: Sequence[str] | None,
    cache: CatalogCache,
    rowids: Sequence[int] | None = None,
    cache_key: Any = None,
) -> dict[str, list[dict[str, Any]]]:
    """Each facet's counts over the products passing every condition but its own column's
    (and among `ids`, the products matching a query, or `rowids`, when given). With a
    `cache_key` (what the counts depend on besides the catalog: browsing's filters), they are
    cached until the catalog changes."""
    out: dict[str, list[dict[str, Any]]] = {}
    for facet in facets:
        kind = columns.get(facet.column)
        if kind not in FACETABLE:
            raise InvalidQueryError(f"unknown facet {facet.column!r}; product columns: "
                                    + ", ".join(sorted(columns)))  # fmt: skip
        if facet.bands is not None and kind != "number":
            raise InvalidQueryError(f"facet {facet.column!r} is a {kind} column: no bands")
        where, params = product_sql.where_sql(
            db, conditions, skip=facet.column, ids=ids, rowids=rowids
        )

        def count(
            facet: Facet = facet, kind: str = kind, where: str = where, params: list[Any] = params
        ) -> Any:
            return _count(db, facet, kind, where, params, cache)

        if cache_key is None:
            out[facet.column] = count()
        else:
            out[facet.column] = cache.get(db, ("facet", facet, cache_key), count)
    return out


def _count(
    db: Any, facet: Facet, kind: str, where: str, params: list[Any], cache: CatalogCache
) -> list[dict[str, Any]]:
    """One facet's entries over the products passing `where`."""
    if kind == "number":
        bands = facet.bands or quantile_bands(db, facet.column, cache)
        counts = product_sql.count_bands(db, facet.column, bands, where, params)
        return [
            {"from": low, "to": high, "count": n}
            for (low, high), n in zip(bands, counts, strict=True)
        ]
    top, total = product_sql.count_values(db, facet.column, kind, where, params, FACET_VALUES)
    entries: list[dict[str, Any]] = [{"value": v, "count": n} for v, n in top]
    other = total - sum(n for _, n in top)
    if other > 0:
        entries.append({"other": True, "count": other})
    return entries


class CatalogCache:
    """Values computed from the catalog (facet counts of browsing, quantile bands), kept until
    the catalog changes: SQLite's `data_version` (commits of other connections) and this
    connection's own changes. Least recently used entries go past `size`."""

    def __init__(self, size: int = FACET_CACHE_SIZE) -> None:
        self._size = size
        self._data: OrderedDict[Any, Any] = OrderedDict()
        self._version: tuple[int, int] | None = None
        self._lock = threading.Lock()

    def get(self, db: Any, key: Any, compute: Callable[[], Any]) -> Any:
        """The cached value of `key`, or compute() stored under it."""
        version = (db.execute("PRAGMA data_version").fetchone()[0], db.total_changes)
        with self._lock:
            if version != self._version:
                self._data.clear()
                self._version = version
            if key in self._data:
                self._data.move_to_end(key)
                return self._data[key]
        value = compute()
        with self._lock:
            if self._version == version:
                self._data[key] = value
                while len(self._data) > self._size:
                    self._data.popitem(last=False)
        return value


def quantile_bands(
    db: Any, column: str, cache: CatalogCache
) -> tuple[tuple[float | None, float | None], ...]:
    """FACET_BANDS bands of a number column cut at the catalog's quantiles (edges rounded to
    two significant digits), cached until the catalog changes."""

    def compute() -> tuple[tuple[float | None, float | None], ...]:
        values = product_sql.number_values(db, column)
        edges: list[float] = []
        if values:
            levels = np.linspace(0, 1, FACET_BANDS + 1)[1:-1]
            cuts = np.quantile(np.asarray(values, dtype=np.float64), levels)
            for cut in cuts:
                edge = _round2(float(cut))
                if edge > values[0] and (not edges or edge > edges[-1]):
                    edges.append(edge)
        bounds: list[float | None] = [None, *edges, None]
        return tuple(zip(bounds[:-1], bounds[1:], strict=True))

    return cache.get(db, ("bands", column), compute)  # type: ignore[no-any-return]


def _round2(value: float) -> float:
    """Two significant digits: band edges a shopper reads (24.99 -> 25, 1234 -> 1200)."""
    if value == 0:
        return 0.0
    digits = 1 - int(math.floor(math.log10(abs(value))))
    rounded = round(value, digits)
    return float(int(rounded)) if rounded.is_integer() else rounded


__all__ = [
    "Boost",
    "CatalogCache",
    "Facet",
    "Sort",
    "boosted",
    "check_boosts",
    "facet_counts",
    "filter_column",
    "filters_from_pairs",
    "parse_boosts",
    "parse_conditions",
    "parse_facets",
    "parse_sort",
    "sort_keys",
]
