"""Writing products by SKU through the one write path (indexer.py): an upsert (the CLI import,
`PUT /products/{sku}`, `POST /products/bulk`), an optional sync (rows absent from the input are
deleted), a dry run, and deletes.

Ids are stable: the SKU is the product's identity and each of its images keeps its item id while
the image's source stays in the row. An edit that changes no image (a price) changes no item; an
image whose bytes changed keeps its id with a new vector (`ChangeSet.replace`); an image that
cannot be read is recorded with its state and not retried until its file changes, so an
unchanged row is always recognised as unchanged."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputFileError
from ..storage import audit
from ..storage.audit import Actor
from ..storage.catalog import Item, ProductRecord
from ..types import IMAGES, TEXTS, Skipped
from .indexer import ChangeSet, Indexer
from .products import Product, ProductRow, RowError, type_rows
from .sync import IndexReport, embed_missing_images, embed_texts, file_key, text_key

CREATED, REPLACED, UNCHANGED, DELETED, FAILED = (
    "created",
    "replaced",
    "unchanged",
    "deleted",
    "failed",
)
EMBEDDED = "embedded"
Stat = tuple[int | None, int | None]
NO_STAT: Stat = (None, None)


@dataclass(frozen=True)
class Outcome:
    """What happened to one input row (or one deleted product)."""

    line: int | None
    sku: str | None
    action: str
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"line": self.line, "sku": self.sku, "outcome": self.action}
        if self.reason:
            body["reason"] = self.reason
        return body


@dataclass
class CatalogReport(IndexReport):
    """An IndexReport (indexed = created + replaced, removed = deleted) with every row's
    outcome, the schema used and whether anything was written."""

    outcomes: list[Outcome] = field(default_factory=list)
    schema: dict[str, str] = field(default_factory=dict)
    dry_run: bool = False

    def count(self, action: str) -> int:
        return sum(outcome.action == action for outcome in self.outcomes)

    @property
    def errors(self) -> list[Outcome]:
        return [outcome for outcome in self.outcomes if outcome.action == FAILED]


@dataclass
class _Planned:
    """One changed product and, per image source, what to do with it."""

    product: Product
    action: str
    items: list[Item]
    keep: dict[str, Item] = field(default_factory=dict)  # source -> item kept as is
    states: dict[str, dict[str, Any]] = field(default_factory=dict)  # skipped sources
    read: dict[str, tuple[str, Stat]] = field(default_factory=dict)  # source -> key, stat


def write_products(
    indexer: Indexer,
    rows: list[ProductRow],
    *,
    errors: Iterable[RowError] = (),
    sync: bool = False,
    dry_run: bool = False,
    strict: bool = False,
    schema: dict[str, str] | None = None,
    actor: Actor | None = None,
    action: str = "upsert",
    origins: dict[str, str] | None = None,
    failures: dict[str, tuple[str, str]] | None = None,
) -> CatalogReport:
    """Upsert `rows` (and, with `sync`, delete every stored product whose SKU is not among
    them or `errors`); `errors` are rows already left out by the reader, reported as failed.
    `schema` overrides stored column types. With `dry_run` nothing is written. With an
    `actor`, every outcome but `unchanged` goes to the audit log (audit.py) in the commit.
    `origins` (stored file -> URL) and `failures` (URL -> reason, detail) come from
    remote.resolve_remote."""
    started = time.perf_counter()
    store = indexer.store
    catalog = store.catalog
    report = CatalogReport(dry_run=dry_run)
    report.outcomes += [Outcome(e.line, e.sku, FAILED, e.reason) for e in errors]
    products, type_errors, report.schema = type_rows(
        rows, {**catalog.get_schema(), **(schema or {})}
    )
    report.outcomes += [Outcome(e.line, e.sku, FAILED, e.reason) for e in type_errors]
    if strict and report.errors:
        raise InputFileError(
            "catalog has bad rows (nothing written; drop --strict to skip them): "
            + "; ".join(f"line {e.line}: {e.reason}" for e in report.errors[:5])
        )
    skus = [p.id for p in products]
    records = catalog.get_product_records(skus)
    items = catalog.get_product_items(skus)
    planned: list[_Planned] = []
    for product in products:
        record = records.get(product.id)
        mine = items.get(product.id, [])
        if record is not None and _unchanged(product, record, mine):
            report.outcomes.append(Outcome(product.line, product.id, UNCHANGED))
            continue
        kind = REPLACED if record is not None else CREATED
        planned.append(_Planned(product, kind, mine))
        report.outcomes.append(Outcome(product.line, product.id, kind))
    gone: list[str] = []
    if sync:
        named = set(skus) | {o.sku for o in report.outcomes if o.sku is not None}
        gone = [sku for sku in catalog.get_product_ids() if sku not in named]
        report.outcomes += [Outcome(None, sku, DELETED) for sku in gone]
    report.unchanged = report.count(UNCHANGED)
    report.indexed = len(planned)
    report.removed = len(gone)
    if dry_run:
        report.elapsed_s = time.perf_counter() - started
        return report

    keys_by_path: dict[str, str] = {}
    for plan in planned:
        _plan_images(plan, records.get(plan.product.id), report, failures or {})
        keys_by_path.update({source: key for source, (key, _) in plan.read.items()})
    report.embedded, skipped = embed_missing_images(
        store, keys_by_path, indexer.embedder, indexer.on_progress
    )
    report.skipped += skipped
    bad = {s.path: s for s in skipped}
    titles = [p.product.title for p in planned]
    if titles:
        embed_texts(store, titles, indexer.embedder, indexer.on_progress)
    with indexer.change() as changes:
        catalog.set_schema(report.schema)
        if gone:
            changes.remove(i for found in catalog.get_product_items(gone).values() for i in found)
            catalog.delete_products(gone)
        for plan in planned:
            _apply(plan, bad, changes, origins or {})
        if actor is not None:
            entries = [
                audit.Entry(action if o.action != DELETED else "delete", o.sku, o.action, o.reason)
                for o in report.outcomes
                if o.action != UNCHANGED
            ]
            audit.append(catalog.db, actor, entries)
    report.reused = max(0, len([p for p in keys_by_path if p not in bad]) - report.embedded)
    report.elapsed_s = time.perf_counter() - started
    return report


def delete_products(indexer: Indexer, skus: Iterable[str], actor: Actor | None = None) -> list[str]:
    """Delete these products (their items leave the faiss files in the same commit, with the
    audit entries when an `actor` is given); the SKUs that existed."""
    catalog = indexer.store.catalog
    found = list(catalog.get_product_records(skus))
    if found:
        with indexer.change() as changes:
            changes.remove(i for items in catalog.get_product_items(found).values() for i in items)
            catalog.delete_products(found)
            if actor is not None:
                audit.append(catalog.db, actor, [audit.Entry("delete", s, DELETED) for s in found])
    return found


def _stat(source: str) -> Stat:
    try:
        stat = Path(source).stat()
    except OSError:
        return NO_STAT
    return stat.st_size, stat.st_mtime_ns


def _states(record: ProductRecord | None, items: list[Item]) -> dict[str, dict[str, Any]]:
    """Recorded state per source (rows written before states were recorded: from the items)."""
    if record is not None and record.images:
        return {state["source"]: state for state in record.images}
    return {
        item.path: {"source": item.path, "status": EMBEDDED}
        for item in items
        if item.collection == IMAGES and item.path
    }


def _unchanged(product: Product, record: ProductRecord, items: list[Item]) -> bool:
    """Same row and every image file as last seen (embedded or skipped)."""
    if record.row_hash != product.row_hash:
        return False
    by_source = {item.path: item for item in items if item.collection == IMAGES}
    states = _states(record, items)
    if set(by_source) - set(product.images):
        return False
    for source in product.images:
        item, state = by_source.get(source), states.get(source)
        if item is not None:
            seen: Stat = (item.size, item.mtime_ns)
        elif state is not None and state["status"] != EMBEDDED:
            seen = (state.get("size"), state.get("mtime_ns"))
        else:
            return False
        if _stat(source) != seen:
            return False
    return True


def _plan_images(
    plan: _Planned,
    record: ProductRecord | None,
    report: CatalogReport,
    failures: dict[str, tuple[str, str]],
) -> None:
    """Per source: keep the item (file as seen), keep a skip (unreadable file unchanged, so
    not retried), or read the file's content key for embedding."""
    by_source = {item.path: item for item in plan.items if item.collection == IMAGES}
    states = _states(record, plan.items)
    sku = plan.product.id
    for source in plan.product.images:
        stat = _stat(source)
        item, state = by_source.get(source), states.get(source)
        if source in failures:
            plan.states[source] = _skip_state(source, *failures[source], stat)
        elif stat == NO_STAT:
            plan.states[source] = _skip_state(source, "missing", "no such file", stat)
        elif item is not None and stat == (item.size, item.mtime_ns):
            plan.keep[source] = item
            continue
        elif (
            item is None
            and state is not None
            and state["status"] != EMBEDDED
            and stat == (state.get("size"), state.get("mtime_ns"))
        ):
            plan.states[source] = state
        else:
            try:
                plan.read[source] = (file_key(Path(source)), stat)
            except OSError as err:
                plan.states[source] = _skip_state(source, "unreadable", str(err), stat)
            continue
        skipped = plan.states[source]
        report.skipped.append(Skipped(source, skipped["status"], f"product {sku}"))


def _embedded(source: str, origins: dict[str, str]) -> dict[str, Any]:
    state = {"source": source, "status": EMBEDDED}
    if source in origins:
        state["url"] = origins[source]
    return state


def _skip_state(source: str, reason: str, detail: str, stat: Stat) -> dict[str, Any]:
    return {
        "source": source,
        "status": reason,
        "detail": detail,
        "size": stat[0],
        "mtime_ns": stat[1],
    }


def _apply(
    plan: _Planned, bad: dict[str, Skipped], changes: ChangeSet, origins: dict[str, str]
) -> None:
    """Inside the commit: make the product's items match the plan, ids kept where the source
    stays."""
    product = plan.product
    by_source = {item.path: item for item in plan.items if item.collection == IMAGES}
    changes.remove(item for source, item in by_source.items() if source not in product.images)
    states: list[dict[str, Any]] = []
    for source in product.images:
        item = by_source.get(source)
        if source in plan.keep:
            states.append(_embedded(source, origins))
            continue
        if source in plan.read and source not in bad:
            key, (size, mtime_ns) = plan.read[source]
            if item is None:
                changes.add(
                    IMAGES, key, path=source, size=size, mtime_ns=mtime_ns, product_id=product.id
                )
            elif item.key == key:
                changes.touch(item, size=size, mtime_ns=mtime_ns)
            else:
                changes.replace(item, key=key, size=size, mtime_ns=mtime_ns)
            states.append(_embedded(source, origins))
            continue
        if item is not None:  # no longer readable: never searchable under its old vector
            changes.remove([item])
        if source in bad:
            skip = bad[source]
            stat = plan.read[source][1]
            states.append(_skip_state(source, skip.reason, skip.detail, stat))
        else:
            states.append(plan.states[source])
    key = text_key(product.title)
    title = next((item for item in plan.items if item.collection == TEXTS), None)
    if title is None:
        changes.add(TEXTS, key, text=product.title, product_id=product.id)
    elif title.key != key:
        changes.replace_text(title, key=key, text=product.title)
    metadata = {"title": product.title, **product.metadata}
    changes.catalog.put_product(product.id, product.title, product.row_hash, metadata, states)


__all__ = [
    "CREATED",
    "DELETED",
    "FAILED",
    "REPLACED",
    "UNCHANGED",
    "CatalogReport",
    "Outcome",
    "delete_products",
    "write_products",
]
