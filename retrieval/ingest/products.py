"""Product catalogs: one row per product (`id`, `title`, `image`, any other columns kept as
metadata), indexed as product images in the images collection and product titles in the texts
collection, both tagged with the product id."""

from __future__ import annotations

import csv
import hashlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import InputFileError
from ..files import canonical_root
from ..storage.catalog import Item
from ..types import IMAGES, TEXTS, Skipped
from .indexer import ChangeSet, Indexer
from .sync import IndexReport, embed_missing_images, embed_texts, file_key, text_key
from .texts import iter_jsonl

if TYPE_CHECKING:
    from ..storage.store import IndexStore

# In CSV one cell holds several image paths separated by this; JSONL may use an `images` list.
IMAGE_SEPARATOR = "|"
REQUIRED = ("id", "title")


@dataclass(frozen=True)
class Product:
    """One catalog row: images are real paths (files.py: `..` and symlinks folded, each once);
    metadata holds every other column."""

    id: str
    title: str
    images: tuple[str, ...]
    metadata: dict[str, Any]

    @property
    def row_hash(self) -> str:
        payload = json.dumps([self.title, self.images, self.metadata], sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()


def _number_or_text(value: Any) -> Any:
    """CSV cells are strings; numeric ones become numbers so range filters work."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSONL may carry NaN/Infinity literals; JSON proper has no such value
    if not isinstance(value, str):
        return value
    try:
        number = float(value)
    except ValueError:
        return value
    if not math.isfinite(number):
        return value  # "nan"/"inf" stay text: JSON (and SQLite's json functions) have no NaN
    return int(number) if number.is_integer() and "." not in value else number


def _product(row: dict[str, Any], base: Path, where: str) -> Product:
    missing = [name for name in REQUIRED if not str(row.get(name) or "").strip()]
    if missing:
        raise InputFileError(
            f"{where}: missing {', '.join(missing)} (every product needs id, title)"
        )
    images = row.get("images")
    if images is None:
        images = str(row.get("image") or "").split(IMAGE_SEPARATOR)
    if isinstance(images, str):
        images = [images]
    paths = tuple(
        dict.fromkeys(
            str(canonical_root(base / str(image).strip())) for image in images if str(image).strip()
        )
    )
    reserved = {"id", "title", "image", "images"}
    metadata = {k: _number_or_text(v) for k, v in row.items() if k not in reserved and k}
    return Product(str(row["id"]).strip(), str(row["title"]).strip(), paths, metadata)


def load_catalog(path: Path) -> list[Product]:
    """Products from a .csv or .jsonl file; image paths are relative to the file.

    Raises:
        InputFileError: missing file, bad JSON, a row without id/title, or a duplicate id.
    """
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"catalog {path} does not exist")
    base = path.absolute().parent
    try:
        raw = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise InputFileError(f"cannot read catalog {path}: {err}") from err
    products: list[Product] = []
    if path.suffix.lower() in {".jsonl", ".ndjson"}:
        for where, row in iter_jsonl(path, raw):
            products.append(_product(row, base, where))
    elif path.suffix.lower() == ".csv":
        reader = csv.DictReader(raw.splitlines())
        for number, row in enumerate(reader, start=2):
            products.append(_product(dict(row), base, f"{path}:{number}"))
    else:
        raise InputFileError(f"catalog {path} must be .csv or .jsonl")
    seen: set[str] = set()
    for product in products:
        if product.id in seen:
            raise InputFileError(f"{path}: product id {product.id!r} appears twice")
        seen.add(product.id)
    return products


def index_catalog(indexer: Indexer, products: list[Product]) -> IndexReport:
    """Make the index's products equal `products` (from load_catalog): new and edited rows are
    (re)indexed, deleted rows removed, unchanged rows left alone."""
    started = time.perf_counter()
    store = indexer.store
    embedder_factory, on_progress = indexer.embedder, indexer.on_progress
    report = IndexReport()
    stored = store.catalog.get_products()
    by_product: dict[str, list[Item]] = {}
    for collection in (IMAGES, TEXTS):
        for item in store.catalog.iter_items(collection):
            if item.product_id is not None:
                by_product.setdefault(item.product_id, []).append(item)

    changed = [p for p in products if not _unchanged(p, stored, by_product.get(p.id, []))]
    report.unchanged = len(products) - len(changed)
    keys_by_path: dict[str, str] = {}
    stats: dict[str, tuple[int, int]] = {}
    for product in changed:
        for image in product.images:
            try:
                stat = Path(image).stat()
                keys_by_path[image] = file_key(Path(image))
                stats[image] = (stat.st_size, stat.st_mtime_ns)
            except OSError as err:
                report.skipped.append(Skipped(image, "missing", f"product {product.id}: {err}"))
    report.embedded, skipped = embed_missing_images(
        store, keys_by_path, embedder_factory, on_progress
    )
    report.skipped += skipped
    bad = {s.path for s in report.skipped}
    titles = embed_texts(store, [p.title for p in changed], embedder_factory, on_progress)

    wanted = {p.id for p in products}
    with indexer.change() as changes:
        gone = [pid for pid in stored if pid not in wanted]
        for product_id in gone + [p.id for p in changed]:
            changes.remove(by_product.get(product_id, []))
        store.catalog.delete_products(gone)
        report.removed = len(gone)
        for product in changed:
            _add_product(store, product, keys_by_path, stats, bad, titles, changes)
            report.indexed += 1
    report.reused = max(0, len([p for p in keys_by_path if p not in bad]) - report.embedded)
    report.elapsed_s = time.perf_counter() - started
    return report


def _unchanged(
    product: Product, stored: dict[str, tuple[str, dict[str, Any]]], items: list[Item]
) -> bool:
    if product.id not in stored or stored[product.id][0] != product.row_hash:
        return False
    for item in items:
        if item.collection != IMAGES:
            continue
        try:
            stat = Path(item.path or "").stat()
        except OSError:
            return False
        if (stat.st_size, stat.st_mtime_ns) != (item.size, item.mtime_ns):
            return False
    indexed = {item.path for item in items if item.collection == IMAGES}
    return indexed == set(product.images)


def _add_product(
    store: IndexStore,
    product: Product,
    keys_by_path: dict[str, str],
    stats: dict[str, tuple[int, int]],
    bad: set[str],
    titles: dict[str, str],
    changes: ChangeSet,
) -> None:
    metadata = {"title": product.title, **product.metadata}
    store.catalog.put_product(product.id, product.title, product.row_hash, metadata)
    for image in product.images:
        if image in bad or image not in keys_by_path:
            continue
        size, mtime_ns = stats[image]
        changes.add(
            IMAGES,
            keys_by_path[image],
            path=image,
            size=size,
            mtime_ns=mtime_ns,
            product_id=product.id,
        )
    key = text_key(product.title)
    if key in titles:
        changes.add(TEXTS, key, text=product.title, product_id=product.id)
