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

Why bigrams for CJK: Chinese and Japanese are written without spaces and Korean attaches
particles to words, so unicode61 would make `红色真丝连衣裙` one token that `连衣裙` never
matches. Each run of such a script is written as its overlapping character pairs plus its last
character (`连衣裙` -> `连衣 衣裙 裙`), the scheme of Lucene's CJK analyzer: any substring of
two or more characters is a run of whole tokens, a single character is a prefix of one.
FTS5's trigram tokenizer finds no query shorter than three characters (`沙发`, `猫`: most
Chinese words), and a dictionary segmenter (jieba) misses words it cuts differently in the
title and the query (benchmarks/keywords_cjk.py measures all three).
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import PurePath

import regex

# Folder names closest to the file are words about it ("beach/2019/IMG_1.jpg"); the top of an
# absolute path (/home/user/...) names the machine, not the picture, so it is left out.
PATH_FOLDERS = 3
FUNCTION = "mm_keywords"
TABLE = "keywords"
# What keyword_text writes. A catalog whose rows were written by another version rebuilds them
# once on open (upgrade()); bump it whenever keyword_text's output changes.
# 1: words (unicode61); 2: runs of unspaced scripts as bigrams, combining marks kept in words.
VERSION = 2
VERSION_KEY = "keywords_version"

# Word boundaries inside one token: lower->Upper (redDress), UPPER->Upper+lower (HTMLParser),
# letter<->digit (IMG1234, n01440764).
_CAMEL = re.compile(
    r"(?<=[a-z])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])|(?<=[^\W\d_])(?=\d)|(?<=\d)(?=[^\W\d_])"
)
# Separators of words in names: _ - . / \ and anything else that is not a letter or digit,
# except combining marks (Hindi and Thai vowel signs, decomposed accents), which belong to the
# letter before them. The extra categories make the class equal to `re`'s [\W_] elsewhere.
_SEPARATORS = regex.compile(r"(?V1)[[\W_\p{So}\p{Pc}\p{Cf}]--[\p{M}\p{No}]]+")
# Scripts written without spaces between words (or, Hangul, with particles joined to them).
_UNSPACED = (
    r"\p{scx=Han}\p{scx=Hiragana}\p{scx=Katakana}\p{scx=Hangul}\p{scx=Bopomofo}"
    r"\p{scx=Thai}\p{scx=Lao}\p{scx=Khmer}\p{scx=Myanmar}"
)
_UNSPACED_RUNS = regex.compile(rf"[{_UNSPACED}]+|[^{_UNSPACED}]+")
_UNSPACED_RUN = regex.compile(rf"[{_UNSPACED}]+")

# Every item's keyword row, from the items and products tables.
_FILL = f"""
    INSERT INTO {TABLE}(rowid, body)
        SELECT id, {FUNCTION}(path, text, (SELECT metadata FROM products WHERE id = product_id))
        FROM items
"""
_SET_VERSION = "INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)"

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
    {_FILL};
    INSERT OR REPLACE INTO meta(key, value) VALUES ('{VERSION_KEY}', '{VERSION}');
"""


def split_words(text: str) -> list[str]:
    """Words of a name or text: split on _ - . / and other punctuation, camelCase and
    letter/digit boundaries (`redDress_2019.jpg` -> red, Dress, 2019, jpg)."""
    words = []
    for part in _SEPARATORS.split(text):
        for run in _UNSPACED_RUNS.findall(part):
            words.extend(_CAMEL.sub(" ", run).split())
    return words


def is_unspaced(word: str) -> bool:
    """Whether `word` is a run of a script written without spaces (Chinese, Japanese, ...)."""
    return _UNSPACED_RUN.fullmatch(word) is not None


def bigrams(run: str) -> list[str]:
    """The tokens stored for a run of an unspaced script: its overlapping character pairs and
    its last character, so every character starts a token (`连衣裙` -> 连衣, 衣裙, 裙)."""
    return [run[i : i + 2] for i in range(len(run) - 1)] + [run[-1]]


def index_terms(words: Iterable[str]) -> Iterator[str]:
    """The tokens written for `words`: unspaced runs as bigrams, other words as they are."""
    for word in words:
        if is_unspaced(word):
            yield from bigrams(word)
        else:
            yield word


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
    return " ".join(index_terms(words))


def register(db: sqlite3.Connection) -> None:
    """Make `mm_keywords` callable on this connection (the triggers call it)."""
    db.create_function(FUNCTION, 3, keyword_text, deterministic=True)


def _query_terms(words: Iterable[str]) -> Iterator[str]:
    """Quoted FTS5 terms: a word as is, an unspaced run as its pairs (its last character is
    covered by the pair ending in it), one unspaced character as a prefix (the first
    character of some stored token wherever it occurs)."""
    for word in words:
        if not is_unspaced(word):
            yield '"' + word.replace('"', '""') + '"'
        elif len(word) == 1:
            yield f'"{word}" *'
        else:
            yield from (f'"{pair}"' for pair in bigrams(word)[:-1])


def match_expression(query: str) -> str | None:
    """An FTS5 MATCH expression: any of the query's words (each quoted, so no FTS syntax
    reaches SQLite; runs of Chinese, Japanese, ... as their character pairs); None when the
    query has no words."""
    terms = list(dict.fromkeys(_query_terms(split_words(query))))
    return " OR ".join(terms) if terms else None


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


def is_current(db: sqlite3.Connection) -> bool:
    """Whether the keyword rows were written by this VERSION of keyword_text (a catalog
    without a keyword table has nothing to rebuild)."""
    if not has_keywords(db):
        return True
    row = db.execute("SELECT value FROM meta WHERE key=?", (VERSION_KEY,)).fetchone()
    return row is not None and row[0] == str(VERSION)


def upgrade(db: sqlite3.Connection) -> bool:
    """Rewrite every keyword row with this version's keyword_text, in one transaction, when
    they were written by another; True when it did. `db` must have `register`ed mm_keywords."""
    if is_current(db):
        return False
    db.execute("BEGIN IMMEDIATE")
    try:
        if is_current(db):  # another process upgraded it while we waited for the lock
            db.execute("ROLLBACK")
            return False
        db.execute(f"DELETE FROM {TABLE}")
        db.execute(_FILL)
        db.execute(_SET_VERSION, (VERSION_KEY, str(VERSION)))
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return True


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


__all__ = [
    "MIGRATION",
    "KeywordMatch",
    "keyword_text",
    "register",
    "search",
    "split_words",
    "upgrade",
]
