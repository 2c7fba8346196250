"""The keyword index: a SQLite FTS5 table (BM25 ranking) in the catalog database, one row per
item, holding the words of its file and folder names, its text (an indexed text, a product
title, an image's caption) and its product's title and text columns.

Why triggers: the `keywords` rows are written by SQLite triggers on `items` and `products`,
so every insert, update or delete of an item changes its keyword row in the same statement and
therefore in the same transaction. A run killed at any point leaves the keywords exactly in
step with the items (and the vectors), and no write path can forget to update them. File names
need tokenising that FTS5's own tokenizers do not do (camelCase, digits); a Python SQL
function, `mm_keywords`, builds the row text, so every connection that writes items registers
it (Catalog does, on open).
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import PurePath

# Folder names closest to the file are words about it ("beach/2019/IMG_1.jpg"); the top of an
# absolute path (/home/user/...) names the machine, not the picture, so it is left out.
PATH_FOLDERS = 3
FUNCTION = "mm_keywords"
TABLE = "keywords"

# Word boundaries inside one token: lower->Upper (redDress), UPPER->Upper+lower (HTMLParser),
# letter<->digit (IMG1234, n01440764).
_CAMEL = re.compile(
    r"(?<=[a-z])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])|(?<=[^\W\d_])(?=\d)|(?<=\d)(?=[^\W\d_])"
)
# Separators of words in names: _ - . / \ and anything else that is not a letter or digit.
_SEPARATORS = re.compile(r"[\W_]+")

MIGRATION = f"""
    CREATE VIRTUAL TABLE {TABLE} USING fts5(body, tokenize = 'unicode61 remove_diacritics 2');
    CREATE TRIGGER keywords_item_insert AFTER INSERT ON items BEGIN
        INSERT INTO {TABLE}(rowid, body) VALUES (new.id, {FUNCTION}(new.path, new.text,
            (SELECT metadata FROM products WHERE id = new.product_id)));
    END;
    CREATE TRIGGER keywords_item_delete AFTER DELETE ON items BEGIN
        DELETE FROM {TABLE} WHERE rowid = old.id;
    END;
    CREATE TRIGGER keywords_item_update AFTER UPDATE OF path, text, product_id ON items BEGIN
        UPDATE {TABLE} SET body = {FUNCTION}(new.path, new.text,
            (SELECT metadata FROM products WHERE id = new.product_id)) WHERE rowid = new.id;
    END;
    CREATE TRIGGER keywords_product_insert AFTER INSERT ON products BEGIN
        UPDATE {TABLE} SET body = (SELECT {FUNCTION}(items.path, items.text, new.metadata)
            FROM items WHERE items.id = {TABLE}.rowid)
        WHERE rowid IN (SELECT id FROM items WHERE product_id = new.id);
    END;
    CREATE TRIGGER keywords_product_update AFTER UPDATE OF metadata ON products BEGIN
        UPDATE {TABLE} SET body = (SELECT {FUNCTION}(items.path, items.text, new.metadata)
            FROM items WHERE items.id = {TABLE}.rowid)
        WHERE rowid IN (SELECT id FROM items WHERE product_id = new.id);
    END;
    INSERT INTO {TABLE}(rowid, body)
        SELECT id, {FUNCTION}(path, text, (SELECT metadata FROM products WHERE id = product_id))
        FROM items;
"""


def split_words(text: str) -> list[str]:
    """Words of a name or text: split on _ - . / and other punctuation, camelCase and
    letter/digit boundaries (`redDress_2019.jpg` -> red, Dress, 2019, jpg)."""
    words = []
    for part in _SEPARATORS.split(text):
        words.extend(_CAMEL.sub(" ", part).split())
    return words


def path_words(path: str) -> list[str]:
    """Words of a file's name (without its extension) and of its nearest folders."""
    pure = PurePath(path)
    folders = [p for p in pure.parent.parts if p not in ("/", "\\", "")][-PATH_FOLDERS:]
    return [word for name in [*folders, pure.stem] for word in split_words(name)]


def keyword_text(path: str | None, text: str | None, product_metadata: str | None) -> str:
    """The FTS row of one item: path words, its text, its product's title and text columns."""
    words = path_words(path) if path else []
    texts: list[str] = []
    product: dict[str, object] = json.loads(product_metadata) if product_metadata else {}
    title = product.get("title")
    if text and text != title:  # a product's title item would otherwise count its title twice
        texts.append(text)
    texts.extend(str(v) for v in product.values() if isinstance(v, str))
    words.extend(word for value in texts for word in split_words(value))
    return " ".join(words)


def register(db: sqlite3.Connection) -> None:
    """Make `mm_keywords` callable on this connection (the triggers call it)."""
    db.create_function(FUNCTION, 3, keyword_text, deterministic=True)


def match_expression(query: str) -> str | None:
    """An FTS5 MATCH expression: any of the query's words (each quoted, so no FTS syntax
    reaches SQLite); None when the query has no words."""
    words = split_words(query)
    if not words:
        return None
    return " OR ".join('"' + word.replace('"', '""') + '"' for word in dict.fromkeys(words))


@dataclass(frozen=True)
class KeywordMatch:
    """One item that matches: BM25 score (higher is better) and what it belongs to."""

    id: int
    score: float
    collection: str
    product_id: str | None


def has_keywords(db: sqlite3.Connection) -> bool:
    query = "SELECT 1 FROM sqlite_master WHERE type='table' AND name=?"
    return db.execute(query, (TABLE,)).fetchone() is not None


def search(
    db: sqlite3.Connection,
    query: str,
    collection: str | None,
    *,
    limit: int | None,
    products_only: bool = False,
    product_ids: Iterable[str] | None = None,
) -> list[KeywordMatch]:
    """Items of `collection` (None: both) matching any word of `query`, best BM25 first (ties
    by id). `products_only` keeps product items; `product_ids` keeps items of those products.
    BM25's document frequencies count every item of the index, whatever its collection."""
    expression = match_expression(query)
    if expression is None:
        return []
    where = "1" if collection is None else "items.collection = ?"
    if products_only or product_ids is not None:
        where += " AND items.product_id IS NOT NULL"
    # bm25() is negative, lower is better (SQLite's FTS5 convention); we report -bm25.
    sql = (
        f"SELECT items.id, -bm25({TABLE}) AS score, items.collection, items.product_id "
        f"FROM {TABLE} JOIN items ON items.id = {TABLE}.rowid "
        f"WHERE {TABLE} MATCH ? AND {where} ORDER BY bm25({TABLE}), items.id"
    )
    params: list[object] = [expression] + ([] if collection is None else [collection])
    if limit is not None and product_ids is None:
        sql += " LIMIT ?"
        params.append(limit)
    matches = [KeywordMatch(int(r[0]), float(r[1]), r[2], r[3]) for r in db.execute(sql, params)]
    if product_ids is not None:
        allowed = set(product_ids)
        matches = [m for m in matches if m.product_id in allowed]
        if limit is not None:
            matches = matches[:limit]
    return matches


__all__ = ["MIGRATION", "KeywordMatch", "keyword_text", "register", "search", "split_words"]
