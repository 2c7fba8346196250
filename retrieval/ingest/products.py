"""Product catalogs: one row per product (`id` = the SKU, `title`, `image`/`images`, any other
columns kept as typed, filterable metadata; schema.py), indexed as product images in the images
collection and product titles in the texts collection, both tagged with the SKU.

Reading a catalog never stops at a bad row: each is reported with its line number (`RowError`)
and left out, so the caller can skip it or, with `--strict`, refuse the run. Writing is
product_writes.py."""

from __future__ import annotations

import csv
import hashlib
import json
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InputFileError
from ..files import canonical_root
from ..storage.schema import RESERVED, CellError, coerce, extend_schema

# In CSV one cell holds several image paths separated by this; JSONL may use an `images` list.
IMAGE_SEPARATOR = "|"
# SKUs are what shops already use as ids: any text up to this long, without control
# characters (they would break logs, CSV and URLs); one percent-encoded path segment over HTTP.
MAX_SKU_CHARS = 256
# Image sources kept as written (remote.py resolves them); anything else is a local path.
REMOTE_SCHEMES = ("http", "https", "data")


@dataclass(frozen=True)
class ProductRow:
    """One catalog row as read: its line (None over HTTP), SKU, title, image sources (local
    files as real paths, files.py) and the other columns' raw values."""

    line: int | None
    id: str
    title: str
    images: tuple[str, ...]
    fields: dict[str, Any]


@dataclass(frozen=True)
class RowError:
    """A row that was left out, and why."""

    line: int | None
    sku: str | None
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"line": self.line, "sku": self.sku, "reason": self.reason}


@dataclass(frozen=True)
class Product:
    """A row with its metadata typed by the index's schema."""

    id: str
    title: str
    images: tuple[str, ...]
    metadata: dict[str, Any]
    line: int | None = None

    @property
    def row_hash(self) -> str:
        payload = json.dumps([self.title, self.images, self.metadata], sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()


def check_sku(sku: Any) -> str:
    """A valid SKU, or ValueError saying why not."""
    if not isinstance(sku, str) or not sku:
        raise ValueError("missing id (every product needs an id, its SKU)")
    if len(sku) > MAX_SKU_CHARS:
        raise ValueError(f"id is {len(sku)} characters; SKUs are at most {MAX_SKU_CHARS}")
    if any(unicodedata.category(c) == "Cc" for c in sku):
        raise ValueError(f"id {sku!r} holds control characters")
    return sku


def product_row(row: Mapping[str, Any], base: Path | None, line: int | None) -> ProductRow:
    """A raw row (CSV dict or JSON object) as a ProductRow; relative image paths are taken
    relative to `base` (None: they must be absolute).

    Raises:
        ValueError: no id/title, a bad SKU, or images that are not a list of strings.
    """
    sku = row.get("id")
    if isinstance(sku, (int, float)) and not isinstance(sku, bool):
        sku = str(sku)
    sku = check_sku(sku.strip() if isinstance(sku, str) else sku)
    title = row.get("title")
    if not isinstance(title, str) or not title.strip():
        raise ValueError("missing title (every product needs id, title)")
    images = row.get("images")
    if images is None:
        images = str(row.get("image") or "").split(IMAGE_SEPARATOR)
    if isinstance(images, str):
        images = [images]
    if not isinstance(images, list) or not all(isinstance(i, str) for i in images):
        raise ValueError("images must be a list of paths or URLs")
    sources = tuple(
        dict.fromkeys(_source(image.strip(), base) for image in images if image.strip())
    )
    fields = {k: v for k, v in row.items() if k and k not in RESERVED}
    return ProductRow(line, sku, title.strip(), sources, fields)


def _source(image: str, base: Path | None) -> str:
    scheme = image.partition(":")[0].lower()
    if scheme in REMOTE_SCHEMES and ":" in image:
        return image  # fetched or decoded before the write (remote.py)
    path = Path(image)
    if base is not None:
        path = base / path
    return str(canonical_root(path))


def read_catalog(path: Path) -> tuple[list[ProductRow], list[RowError]]:
    """Rows of a .csv or .jsonl catalog (image paths relative to the file) and the rows left
    out: unparsable lines, rows without id/title, bad SKUs, and every repeat of a SKU (the
    first row of a SKU wins).

    Raises:
        InputFileError: the file is missing, unreadable, or neither .csv nor .jsonl.
    """
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"catalog {path} does not exist")
    suffix = path.suffix.lower()
    if suffix not in {".csv", ".jsonl", ".ndjson"}:
        raise InputFileError(f"catalog {path} must be .csv or .jsonl")
    try:
        raw = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise InputFileError(f"cannot read catalog {path}: {err}") from err
    base = path.absolute().parent
    lines = _csv_rows(raw) if suffix == ".csv" else _jsonl_rows(raw)
    return parse_rows(lines, base)


def parse_rows(
    lines: Iterable[tuple[int, Any]], base: Path | None
) -> tuple[list[ProductRow], list[RowError]]:
    """ProductRows of (line number, raw object or ValueError) pairs; repeats of a SKU fail."""
    rows: list[ProductRow] = []
    errors: list[RowError] = []
    first_line: dict[str, int | None] = {}
    for line, raw in lines:
        if isinstance(raw, Exception):
            errors.append(RowError(line, None, str(raw)))
            continue
        sku = raw.get("id") if isinstance(raw, Mapping) else None
        try:
            if not isinstance(raw, Mapping):
                raise ValueError("not a JSON object")
            row = product_row(raw, base, line)
        except ValueError as err:
            errors.append(RowError(line, sku if isinstance(sku, str) else None, str(err)))
            continue
        if row.id in first_line:
            reason = f"SKU {row.id!r} appears twice (first on line {first_line[row.id]})"
            errors.append(RowError(line, row.id, reason))
            continue
        first_line[row.id] = line
        rows.append(row)
    return rows, errors


def _csv_rows(raw: str) -> Iterable[tuple[int, Any]]:
    reader = csv.DictReader(raw.splitlines())
    line = 1
    for row in reader:
        start = line + 1
        line = reader.line_num
        if None in row:  # more cells than the header names
            yield start, ValueError(f"{len(row[None]) + len(row) - 1} cells; the header has fewer")
            continue
        yield start, {k: v for k, v in row.items() if v is not None}


def _jsonl_rows(raw: str) -> Iterable[tuple[int, Any]]:
    for number, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except ValueError as err:
            yield number, ValueError(f"not valid JSON: {err}")


def type_rows(
    rows: Iterable[ProductRow], schema: Mapping[str, str]
) -> tuple[list[Product], list[RowError], dict[str, str]]:
    """Typed products under `schema` extended with inferred types for new columns (schema.py);
    a row with a cell that does not fit its column is an error, the others go on."""
    rows = list(rows)
    extended = extend_schema(schema, (row.fields for row in rows))
    products: list[Product] = []
    errors: list[RowError] = []
    for row in rows:
        try:
            metadata = {}
            for column, value in row.fields.items():
                typed = coerce(column, extended[column], value)
                if typed is not None:
                    metadata[column] = typed
        except CellError as err:
            errors.append(RowError(row.line, row.id, str(err)))
            continue
        products.append(Product(row.id, row.title, row.images, metadata, row.line))
    return products, errors, extended


__all__ = [
    "IMAGE_SEPARATOR",
    "MAX_SKU_CHARS",
    "Product",
    "ProductRow",
    "RowError",
    "check_sku",
    "parse_rows",
    "product_row",
    "read_catalog",
    "type_rows",
]
