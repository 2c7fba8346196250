"""SQLite catalog of one index directory: items (id <-> path or text), their content keys,
the float16 embedding cache, and products. Numbered migrations keep old indexes readable.

Why SQLite: one file with real transactions gives the crash safety we need (an index run's
changes become visible in one COMMIT) and lets the HTTP server read while an index run writes
(WAL mode), without a server process."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..types import Ids
from . import folding, keywords

SQL_CHUNK = 500

MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE vectors (key TEXT PRIMARY KEY, vector BLOB NOT NULL);
    CREATE TABLE items (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        collection TEXT NOT NULL,
        path TEXT,
        text TEXT,
        size INTEGER,
        mtime_ns INTEGER,
        key TEXT NOT NULL,
        product_id TEXT,
        metadata TEXT
    );
    CREATE INDEX items_path ON items(collection, path);
    CREATE INDEX items_product ON items(product_id);
    CREATE TABLE products (
        id TEXT PRIMARY KEY,
        title TEXT NOT NULL,
        row_hash TEXT NOT NULL,
        metadata TEXT NOT NULL
    );
    """,
    keywords.MIGRATION,
    # One identity, one item (files.py): earlier versions could store the same file twice (a
    # root spelled with `..` or through a symlink). Duplicates merge into the oldest row, so
    # ids already handed out stay valid; the merged rows' ids wait in `orphans` until the next
    # commit takes their vectors out of the faiss files (readers skip them meanwhile).
    """
    CREATE TABLE orphans (id INTEGER PRIMARY KEY, collection TEXT NOT NULL);
    INSERT INTO orphans(id, collection)
        SELECT dup.id, dup.collection FROM items AS dup
        WHERE EXISTS (
            SELECT 1 FROM items AS keep
            WHERE keep.id < dup.id AND keep.collection = dup.collection
            AND keep.product_id IS dup.product_id
            AND CASE WHEN dup.collection = 'images' THEN keep.path IS dup.path
                     WHEN dup.product_id IS NULL THEN keep.key = dup.key
                     ELSE 1 END
        );
    DELETE FROM items WHERE id IN (SELECT id FROM orphans);
    CREATE UNIQUE INDEX items_file ON items(path)
        WHERE collection = 'images' AND product_id IS NULL;
    CREATE UNIQUE INDEX items_product_image ON items(product_id, path)
        WHERE collection = 'images' AND product_id IS NOT NULL;
    CREATE UNIQUE INDEX items_text ON items(key)
        WHERE collection = 'texts' AND product_id IS NULL;
    CREATE UNIQUE INDEX items_title ON items(product_id)
        WHERE collection = 'texts' AND product_id IS NOT NULL;
    """,
    # Products keep the image sources their row names and each one's state (embedded, or why
    # it was skipped, with the size/mtime seen), so an unchanged row with an unreadable image
    # is recognised as unchanged instead of being re-added (with new ids) on every run.
    # items_key: a small write drops only the vectors it released, each checked by key.
    """
    ALTER TABLE products ADD COLUMN images TEXT NOT NULL DEFAULT '[]';
    CREATE INDEX items_key ON items(key);
    """,
    # Scoped API keys (only a hash of each key is kept) and the audit log of product changes
    # (keys.py, audit.py).
    """
    CREATE TABLE api_keys (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL UNIQUE,
        scope TEXT NOT NULL,
        hash TEXT NOT NULL UNIQUE,
        created REAL NOT NULL,
        revoked REAL
    );
    CREATE TABLE audit (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        time REAL NOT NULL,
        key_name TEXT NOT NULL,
        action TEXT NOT NULL,
        sku TEXT,
        outcome TEXT NOT NULL,
        request_id TEXT,
        detail TEXT
    );
    CREATE INDEX audit_time ON audit(time);
    """,
    # Files a sync found but could not decode (empty, corrupt, truncated, not an image), by
    # identity (files.py) with the content key and stat they had: a re-run reports an unchanged
    # broken file as skipped again without reading it or loading the model, and retries it once
    # its bytes change (ingest/sync.py).
    """
    CREATE TABLE skipped_files (
        path TEXT PRIMARY KEY,
        key TEXT NOT NULL,
        size INTEGER NOT NULL,
        mtime_ns INTEGER NOT NULL,
        reason TEXT NOT NULL,
        detail TEXT NOT NULL
    );
    """,
    # The change log of the current generation's faiss files (storage/delta.py): a small write
    # appends the ids it removed (op 0) and added (op 1) instead of rewriting a whole faiss file;
    # readers apply the log on their next query; compaction folds it into the next generation
    # and empties it. AUTOINCREMENT: a sequence number is never reused, so `max(seq)` tells a
    # reader whether anything changed since it last looked.
    """
    CREATE TABLE delta_log (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        collection TEXT NOT NULL,
        item_id INTEGER NOT NULL,
        op INTEGER NOT NULL
    );
    INSERT OR REPLACE INTO meta(key, value) SELECT 'base_max_id',
        COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'items'), 0);
    """,
)


@dataclass(frozen=True)
class SkippedFile:
    """One row of skipped_files: a file that did not decode, as it was when it failed."""

    path: str
    key: str
    size: int
    mtime_ns: int
    reason: str
    detail: str


@dataclass(frozen=True)
class Item:
    """One row of the items table."""

    id: int
    collection: str
    path: str | None
    text: str | None
    size: int | None
    mtime_ns: int | None
    key: str
    product_id: str | None
    metadata: dict[str, Any]


@dataclass(frozen=True)
class ProductRecord:
    """One row of the products table: metadata includes the title; images lists the row's
    image sources in order, each {"source", "status", "detail", "size", "mtime_ns"}."""

    id: str
    row_hash: str
    metadata: dict[str, Any]
    images: list[dict[str, Any]]


def _item(row: sqlite3.Row) -> Item:
    return Item(
        id=row["id"],
        collection=row["collection"],
        path=row["path"],
        text=row["text"],
        size=row["size"],
        mtime_ns=row["mtime_ns"],
        key=row["key"],
        product_id=row["product_id"],
        metadata=json.loads(row["metadata"]) if row["metadata"] else {},
    )


class Catalog:
    """Typed access to catalog.sqlite; callers group writes with `transaction()`."""

    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        self.path = path
        uri = f"file:{path}?mode=ro" if readonly else f"file:{path}"
        # isolation_level=None: we issue BEGIN/COMMIT ourselves so one index run is one commit.
        self.db = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
        self._delta_log = False
        self.db.row_factory = sqlite3.Row
        keywords.register(self.db)
        folding.register(self.db)
        if readonly:
            _migrate_if_writable(path)
        else:
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self._migrate()
            keywords.upgrade(self.db)
            folding.upgrade(self.db)

    def close(self) -> None:
        self.db.close()

    def _migrate(self) -> None:
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            self.db.executescript(f"BEGIN; {script}; PRAGMA user_version={number}; COMMIT;")

    def set_text(self, item_id: int, text: str | None) -> None:
        """Set an item's text (an image's caption; None clears it)."""
        self.db.execute("UPDATE items SET text=? WHERE id=?", (text, item_id))

    def transaction(self) -> _Transaction:
        return _Transaction(self.db)

    # -- meta ---------------------------------------------------------------------------------
    def get_meta(self, key: str, default: str | None = None) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else default

    def set_meta(self, key: str, value: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))

    @property
    def generation(self) -> int:
        return int(self.get_meta("generation", "0") or 0)

    # -- the change log of the current generation (storage/delta.py) ------------------------
    def position(self) -> tuple[int, int]:
        """(generation, last delta_log seq or 0) in one query: what a reader compares with
        what it has loaded, on every query."""
        if not self._has_delta_log():
            return self.generation, 0
        row = self.db.execute(
            "SELECT (SELECT value FROM meta WHERE key='generation'), "
            "(SELECT max(seq) FROM delta_log)"
        ).fetchone()
        return int(row[0] or 0), int(row[1] or 0)

    @property
    def base_max_id(self) -> int:
        """The largest item id ever issued when the current generation's faiss files were
        written: a logged id up to it is in those files (storage/delta.py)."""
        return int(self.get_meta("base_max_id", "0") or 0)

    def record_base_max_id(self) -> None:
        """At a full commit (with the generation flip): every item so far is in its files."""
        row = self.db.execute("SELECT seq FROM sqlite_sequence WHERE name='items'").fetchone()
        self.set_meta("base_max_id", str(int(row[0]) if row else 0))

    def append_delta(self, rows: Iterable[tuple[str, int, int]]) -> None:
        """Log (collection, item id, op) rows, op 0 = removed, 1 = added (committed by the
        caller, with the item changes they describe)."""
        self.db.executemany(
            "INSERT INTO delta_log(collection, item_id, op) VALUES (?, ?, ?)",
            ((c, int(i), int(op)) for c, i, op in rows),
        )

    def read_delta(self, after: int = 0) -> list[tuple[int, str, int, int]]:
        """Log rows (seq, collection, item id, op) after seq `after`, in order."""
        if not self._has_delta_log():
            return []
        rows = self.db.execute(
            "SELECT seq, collection, item_id, op FROM delta_log WHERE seq > ? ORDER BY seq",
            (after,),
        )
        return [(row[0], row[1], row[2], row[3]) for row in rows]

    def delta_size(self) -> int:
        if not self._has_delta_log():
            return 0
        return int(self.db.execute("SELECT COUNT(*) FROM delta_log").fetchone()[0])

    def clear_delta(self) -> None:
        """Empty the log (a compaction, in the transaction that flips the generation)."""
        if self._has_delta_log():
            self.db.execute("DELETE FROM delta_log")

    def _has_delta_log(self) -> bool:
        # A read-only catalog of an older version has no log (and so no delta) until a writer
        # migrates it: asked again until it has one, then remembered.
        if not self._delta_log:
            self._delta_log = self._has_table("delta_log")
        return self._delta_log

    def get_item_vectors(self, ids: Sequence[int], dim: int) -> tuple[Ids, np.ndarray]:
        """(ids, float32 vectors) of those of `ids` that are items with a stored vector, in
        ascending id order (items deleted meanwhile are left out, unlike get_vectors_by_id)."""
        query = (
            "SELECT items.id, vectors.vector FROM items JOIN vectors USING (key) "
            "WHERE items.id IN ({})"
        )
        rows = sorted(self._select_in(query, [int(i) for i in ids]), key=lambda row: row[0])
        found = np.asarray([row[0] for row in rows], dtype=np.int64)
        blob = b"".join(row[1] for row in rows)
        vectors = np.frombuffer(blob, dtype=np.float16).reshape(len(rows), dim)
        return found, vectors.astype(np.float32)

    # -- vectors ------------------------------------------------------------------------------
    def put_vectors(self, keys: Sequence[str], vectors: np.ndarray) -> None:
        """Store float16 copies of `vectors` under content keys (committed by the caller)."""
        half = np.asarray(vectors, dtype=np.float16)
        self.db.executemany(
            "INSERT OR REPLACE INTO vectors(key, vector) VALUES (?, ?)",
            ((key, half[row].tobytes()) for row, key in enumerate(keys)),
        )

    def has_vectors(self, keys: Iterable[str]) -> set[str]:
        """The subset of `keys` that already have a stored vector."""
        rows = self._select_in("SELECT key FROM vectors WHERE key IN ({})", list(keys))
        return {row[0] for row in rows}

    def _select_in(self, query: str, values: list[Any]) -> Iterator[sqlite3.Row]:
        """Run `query` (with one `IN ({})`) over `values` in chunks: SQLite caps the number of
        parameters per statement (999 in older builds)."""
        for start in range(0, len(values), SQL_CHUNK):
            chunk = values[start : start + SQL_CHUNK]
            yield from self.db.execute(query.format(",".join("?" * len(chunk))), chunk)

    def get_vectors(self, collection: str, dim: int) -> tuple[Ids, np.ndarray]:
        """All (ids, float32 vectors) of a collection, ordered by id."""
        rows = self.db.execute(
            "SELECT items.id, vectors.vector FROM items JOIN vectors USING (key) "
            "WHERE items.collection=? ORDER BY items.id",
            (collection,),
        ).fetchall()
        ids = np.fromiter((row[0] for row in rows), dtype=np.int64, count=len(rows))
        if not rows:
            return ids, np.zeros((0, dim), dtype=np.float32)
        blob = b"".join(row[1] for row in rows)
        return ids, np.frombuffer(blob, dtype=np.float16).reshape(len(rows), dim).astype(np.float32)

    def get_vectors_by_id(self, ids: Sequence[int], dim: int) -> np.ndarray:
        """float32 vectors for the given item ids, in that order."""
        out = np.zeros((len(ids), dim), dtype=np.float32)
        rows_of: dict[int, list[int]] = {}
        for row, item_id in enumerate(ids):
            rows_of.setdefault(int(item_id), []).append(row)
        query = (
            "SELECT items.id, vectors.vector FROM items JOIN vectors USING (key) "
            "WHERE items.id IN ({})"
        )
        for item_id, blob in self._select_in(query, list(rows_of)):
            out[rows_of[item_id]] = np.frombuffer(blob, dtype=np.float16)
        return out

    def get_vectors_by_key(self, keys: Sequence[str], dim: int) -> dict[str, np.ndarray]:
        """float32 vectors stored under these content keys (keys without one are left out)."""
        query = "SELECT key, vector FROM vectors WHERE key IN ({})"
        return {
            key: np.frombuffer(blob, dtype=np.float16).astype(np.float32).reshape(dim)
            for key, blob in self._select_in(query, list(dict.fromkeys(keys)))
        }

    def get_roots(self) -> list[str]:
        """The real paths of the folders (and files) that syncs have indexed (see add_roots)."""
        return list(json.loads(self.get_meta("roots", "[]") or "[]"))

    def add_roots(self, roots: Iterable[str]) -> None:
        """Remember synced roots, so `mmsearch check` can tell a file named through a link in
        a root (files.py rule 3: an item of its own) from a stale spelling of a root."""
        known = self.get_roots()
        merged = sorted(set(known) | set(roots))
        if merged != known:
            self.set_meta("roots", json.dumps(merged))

    def orphan_ids(self, collection: str) -> list[int]:
        """Ids still in the faiss file of `collection` whose items were merged away (see
        MIGRATIONS); the next commit removes them."""
        if not self._has_table("orphans"):  # a read-only catalog of an older version
            return []
        rows = self.db.execute(
            "SELECT id FROM orphans WHERE collection=? ORDER BY id", (collection,)
        )
        return [row[0] for row in rows]

    def clear_orphans(self, collection: str) -> None:
        if self._has_table("orphans"):
            self.db.execute("DELETE FROM orphans WHERE collection=?", (collection,))

    def _has_table(self, name: str) -> bool:
        query = "SELECT 1 FROM sqlite_master WHERE type='table' AND name=?"
        return self.db.execute(query, (name,)).fetchone() is not None

    # -- files that did not decode -------------------------------------------------------------
    def skipped_files(self) -> dict[str, SkippedFile]:
        """path -> the record of every file a sync could not decode (see MIGRATIONS)."""
        if not self._has_table("skipped_files"):  # a read-only catalog of an older version
            return {}
        rows = self.db.execute("SELECT * FROM skipped_files")
        return {row["path"]: SkippedFile(**dict(row)) for row in rows}

    def record_skipped_files(self, records: Iterable[SkippedFile]) -> None:
        """Remember files that did not decode (committed by the caller, with the run)."""
        self.db.executemany(
            "INSERT OR REPLACE INTO skipped_files(path, key, size, mtime_ns, reason, detail) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            ((r.path, r.key, r.size, r.mtime_ns, r.reason, r.detail) for r in records),
        )

    def forget_skipped_files(self, paths: Iterable[str]) -> None:
        """Drop the records of files that decoded, changed, or are gone."""
        self.db.executemany("DELETE FROM skipped_files WHERE path=?", ((p,) for p in paths))

    def drop_unused_vectors(self, keys: Iterable[str] | None = None) -> int:
        """Delete stored vectors no item uses: all of them, or only among `keys`."""
        if keys is None:
            query = "DELETE FROM vectors WHERE key NOT IN (SELECT key FROM items)"
            return self.db.execute(query).rowcount
        dropped = 0
        for key in keys:
            cursor = self.db.execute(
                "DELETE FROM vectors WHERE key=? AND NOT EXISTS "
                "(SELECT 1 FROM items WHERE items.key=?)",
                (key, key),
            )
            dropped += cursor.rowcount
        return dropped

    # -- items --------------------------------------------------------------------------------
    def iter_items(self, collection: str) -> Iterator[Item]:
        rows = self.db.execute("SELECT * FROM items WHERE collection=? ORDER BY id", (collection,))
        for row in rows:
            yield _item(row)

    def get_ids(self, collection: str) -> Ids:
        """The item ids of a collection, ascending (the sharded index build reads vectors by
        id range, never all at once)."""
        rows = self.db.execute("SELECT id FROM items WHERE collection=? ORDER BY id", (collection,))
        return np.fromiter((row[0] for row in rows), dtype=np.int64)

    def get_item(self, item_id: int) -> Item | None:
        row = self.db.execute("SELECT * FROM items WHERE id=?", (item_id,)).fetchone()
        return _item(row) if row else None

    def get_items(self, ids: Sequence[int]) -> dict[int, Item]:
        rows = self._select_in("SELECT * FROM items WHERE id IN ({})", [int(i) for i in ids])
        return {row["id"]: _item(row) for row in rows}

    def count(self, collection: str) -> int:
        query = "SELECT COUNT(*) FROM items WHERE collection=?"
        return int(self.db.execute(query, (collection,)).fetchone()[0])

    def add_item(
        self,
        collection: str,
        key: str,
        *,
        path: str | None = None,
        text: str | None = None,
        size: int | None = None,
        mtime_ns: int | None = None,
        product_id: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> int:
        cursor = self.db.execute(
            "INSERT INTO items(collection, path, text, size, mtime_ns, key, product_id, metadata)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                collection,
                path,
                text,
                size,
                mtime_ns,
                key,
                product_id,
                json.dumps(metadata) if metadata else None,
            ),
        )
        return int(cursor.lastrowid or 0)

    def update_item(
        self, item_id: int, *, key: str, size: int | None, mtime_ns: int | None
    ) -> None:
        self.db.execute(
            "UPDATE items SET key=?, size=?, mtime_ns=? WHERE id=?", (key, size, mtime_ns, item_id)
        )

    def delete_items(self, ids: Iterable[int]) -> None:
        self.db.executemany("DELETE FROM items WHERE id=?", ((int(i),) for i in ids))

    # -- products -----------------------------------------------------------------------------
    def get_products(self) -> dict[str, tuple[str, dict[str, Any]]]:
        """product id -> (row hash, metadata incl. title)."""
        rows = self.db.execute("SELECT id, row_hash, metadata FROM products")
        return {row[0]: (row[1], json.loads(row[2])) for row in rows}

    def get_product_records(self, product_ids: Iterable[str]) -> dict[str, ProductRecord]:
        """The stored rows of these products (unknown ids are left out)."""
        query = "SELECT id, row_hash, metadata, images FROM products WHERE id IN ({})"
        return {
            row[0]: ProductRecord(row[0], row[1], json.loads(row[2]), json.loads(row[3]))
            for row in self._select_in(query, list(product_ids))
        }

    def blob_names(self) -> set[str]:
        """File names of the stored images (blobs.py) that items and product rows refer to: a
        blob is named by its content hash, so its name alone identifies it, however the index
        directory was spelled when it was stored."""
        names = {
            Path(row[0]).name
            for row in self.db.execute("SELECT path FROM items WHERE path LIKE '%/blobs/%'")
        }
        columns = {row[1] for row in self.db.execute("PRAGMA table_info(products)")}
        if "images" in columns:  # a read-only catalog of an older version may lack it
            rows = self.db.execute(
                "SELECT json_extract(j.value, '$.source') FROM products, json_each(products.images)"
                " AS j"
            )
            names |= {Path(row[0]).name for row in rows if isinstance(row[0], str)}
        return names

    def get_product_ids(self) -> list[str]:
        return [row[0] for row in self.db.execute("SELECT id FROM products ORDER BY id")]

    def get_product_items(self, product_ids: Iterable[str]) -> dict[str, list[Item]]:
        """product id -> its items (images and title), by id."""
        found: dict[str, list[Item]] = {}
        query = "SELECT * FROM items WHERE product_id IN ({}) ORDER BY id"
        for row in self._select_in(query, list(product_ids)):
            item = _item(row)
            found.setdefault(item.product_id or "", []).append(item)
        return found

    def get_schema(self) -> dict[str, str]:
        """Column -> type of the product catalog (schema.py); {} before the first import."""
        return dict(json.loads(self.get_meta("schema", "{}") or "{}"))

    def set_schema(self, schema: dict[str, str]) -> None:
        if schema != self.get_schema():
            self.set_meta("schema", json.dumps(schema, sort_keys=True))

    def get_product(self, product_id: str) -> dict[str, Any] | None:
        row = self.db.execute("SELECT metadata FROM products WHERE id=?", (product_id,)).fetchone()
        return json.loads(row[0]) if row else None

    def put_product(
        self,
        product_id: str,
        title: str,
        row_hash: str,
        metadata: dict[str, Any],
        images: list[dict[str, Any]] | None = None,
    ) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO products(id, title, row_hash, metadata, images, folded) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (
                product_id,
                title,
                row_hash,
                json.dumps(metadata, allow_nan=False),
                json.dumps(images or []),
                folding.folded_json(metadata),
            ),
        )

    def delete_products(self, product_ids: Iterable[str]) -> None:
        self.db.executemany("DELETE FROM products WHERE id=?", ((p,) for p in product_ids))

    def has_products(self) -> bool:
        return bool(self.db.execute("SELECT EXISTS(SELECT 1 FROM products)").fetchone()[0])

    def product_count(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM products").fetchone()[0])

    def product_item_ids(self) -> Ids:
        """Ids of every item that belongs to a product."""
        rows = self.db.execute("SELECT id FROM items WHERE product_id IS NOT NULL ORDER BY id")
        return np.asarray([row[0] for row in rows], dtype=np.int64)

    def get_item_products(self, ids: Sequence[int]) -> dict[int, str | None]:
        """item id -> its product id (None for items of no product); unknown ids left out.
        Cheaper than get_items when only the product is wanted (no metadata is parsed)."""
        query = "SELECT id, product_id FROM items WHERE id IN ({})"
        return {row[0]: row[1] for row in self._select_in(query, [int(i) for i in ids])}

    def item_ids_for_products(self, product_ids: Iterable[str]) -> Ids:
        rows = self._select_in("SELECT id FROM items WHERE product_id IN ({})", list(product_ids))
        return np.asarray(sorted(row[0] for row in rows), dtype=np.int64)


def _migrate_if_writable(path: Path) -> None:
    """A reader of a catalog written by an older mmsearch migrates it first (e.g. builds the
    keyword index), when it may write there; otherwise it reads the old schema as is."""
    try:
        probe = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            version = probe.execute("PRAGMA user_version").fetchone()[0]
            current = (
                version >= len(MIGRATIONS)
                and keywords.is_current(probe)
                and folding.is_current(probe)
            )
        finally:
            probe.close()
        if not current:
            Catalog(path).close()
    except sqlite3.OperationalError:
        pass


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on any exception."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> sqlite3.Connection:
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, exc_type: object, *_: object) -> None:
        self.db.execute("ROLLBACK" if exc_type else "COMMIT")


def product_columns(db: sqlite3.Connection) -> dict[str, str]:
    """Metadata column -> type (schema.py); catalogs indexed before typed columns are read as
    'number' or 'text' from their values."""
    row = db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
    if row is not None:
        return {"title": "text", **json.loads(row[0])}
    rows = db.execute(
        "SELECT DISTINCT j.key, j.type FROM products, json_each(products.metadata) AS j"
    )
    columns: dict[str, str] = {}
    for key, kind in rows:
        kind = "number" if kind in ("integer", "real") else "text"
        if columns.get(key, kind) != kind:
            kind = "text"
        columns[key] = kind
    return columns
