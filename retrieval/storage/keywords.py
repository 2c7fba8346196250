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

Forgiving matches (search): besides a query word itself (and its synonyms, synonyms.py), items
holding a word that starts with it (`gold` -> goldfish; FTS5 prefix queries, served by the
table's prefix index for 2- and 3-letter prefixes) or a word within its typo budget
(`goldfsh` -> goldfish; vocabulary.py) match too, in three tiers: every item that matches a
query word exactly ranks above every item that matches one only by a prefix, which ranks above
every item that matches only by a typo. Within a tier items rank by FTS5's BM25 of that tier's
terms (exact: the query words and synonyms, exactly today's ranking). Scores stay monotone in the
ranking: an exact match's score is its BM25; a lower tier's BM25 b is reported as
floor * b / (1 + b), floor being the lowest score of the tiers above in this answer, so it sits
below them and keeps its order (an answer with no better tier reports b as is). Runs of unspaced
scripts keep their character pairs, with no prefix or typo terms of their own.
"""

from __future__ import annotations

import itertools
import json
import re
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import PurePath
from typing import TYPE_CHECKING

import regex

from ..config import PREFIX_MIN_LENGTH
from .vocabulary import Vocabulary, get_vocabulary

if TYPE_CHECKING:
    from .synonyms import Synonyms

# Folder names closest to the file are words about it ("beach/2019/IMG_1.jpg"); the top of an
# absolute path (/home/user/...) names the machine, not the picture, so it is left out.
PATH_FOLDERS = 3
FUNCTION = "mm_keywords"
TABLE = "keywords"
# What keyword_text writes. A catalog whose rows were written by another version rebuilds them
# once on open (upgrade()); bump it whenever keyword_text's output changes.
# 1: words (unicode61); 2: runs of unspaced scripts as bigrams, combining marks kept in words;
# 3: the same words in a table with prefix indexes (upgrade() recreates the table).
VERSION = 3
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

# Prefix indexes for 2- and 3-letter prefixes: the short prefixes match the most words, so
# they are the ones worth precomputing; longer prefixes are answered by a scan of the (sorted)
# term range, which is cheap because few words share them (benchmarks/keywords_typo.py).
_CREATE = (
    f"CREATE VIRTUAL TABLE {TABLE} USING fts5(body, "
    "tokenize = 'unicode61 remove_diacritics 2', prefix = '2 3')"
)

MIGRATION = f"""
    {_CREATE};
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


EXACT, PREFIX, TYPO = "exact", "prefix", "typo"
TIERS = (EXACT, PREFIX, TYPO)


@dataclass(frozen=True)
class KeywordMatch:
    """One item that matches: its score (BM25, higher is better; see the module docstring for
    prefix and typo matches), what it belongs to, and how it matched (EXACT, PREFIX, TYPO)."""

    id: int
    score: float
    collection: str
    product_id: str | None
    match: str = EXACT


def _quote(words: Iterable[str]) -> str:
    """One FTS5 string (a word, or a phrase of several), quoted so no FTS syntax gets through."""
    return '"' + " ".join(words).replace('"', '""') + '"'


@dataclass(frozen=True)
class QueryTerms:
    """The FTS5 terms of a query, by tier: its words and their synonyms, the prefixes of its
    words, and the indexed words within their typo budgets."""

    exact: tuple[str, ...]
    prefix: tuple[str, ...] = ()
    typo: tuple[str, ...] = ()
    # The typo terms of the words no item holds: the best stand-ins for them, which add their
    # BM25 to exact matches of the other words (`red goldfsh`: `red goldfish` above `red car`).
    corrections: tuple[str, ...] = ()

    def expressions(self) -> list[tuple[str, str]]:
        """(tier, MATCH expression) per non-empty tier; a lower tier's expression leaves out
        the items a higher one matched (FTS5's NOT), so each item is found once."""
        if not self.exact:
            return []
        tiers = [(EXACT, self.exact), (PREFIX, self.prefix), (TYPO, self.typo)]
        above: list[str] = []
        out = []
        for tier, terms in tiers:
            if terms:
                expression = " OR ".join(terms)
                out.append(
                    (tier, f"({expression}) NOT ({' OR '.join(above)})" if above else expression)
                )
                above.extend(terms)
        return out


def query_terms(
    query: str,
    *,
    forgiving: bool = True,
    synonyms: Synonyms | None = None,
    vocabulary: Vocabulary | None = None,
    all_typos: bool = True,
) -> QueryTerms:
    """The query's terms: each word (unspaced runs as their character pairs) and, when
    `forgiving`, the prefix of each word of PREFIX_MIN_LENGTH+ letters and the `vocabulary`'s
    words within its typo budget (with `all_typos` False, only for the words no item holds,
    whose corrections the exact tier needs); `synonyms` add the other members of a word's
    groups."""
    words = split_words(query)
    exact = list(_query_terms(words))
    prefix: list[str] = []
    typo: list[str] = []
    corrections: list[str] = []
    for word in words:
        if is_unspaced(word):
            continue
        if synonyms is not None:
            exact.extend(_quote(member) for member in synonyms.of(word))
        if forgiving and len(word) >= PREFIX_MIN_LENGTH:
            prefix.append(_quote([word]) + " *")
        if forgiving and vocabulary is not None:
            known = vocabulary.holds(word)
            if known and not all_typos:
                continue
            near = [_quote([term]) for term in vocabulary.typo_terms(word)]
            typo.extend(near)
            if not known:
                corrections.extend(near)
    unique = dict.fromkeys
    return QueryTerms(
        tuple(unique(exact)), tuple(unique(prefix)), tuple(unique(typo)), tuple(unique(corrections))
    )


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
        # Dropped and created again: a table's options (the prefix index) are fixed at creation.
        # The triggers on items and products name the table and find the new one.
        db.execute(f"DROP TABLE {TABLE}")
        db.execute(_CREATE)
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
    forgiving: bool = True,
    synonyms: Synonyms | None = None,
) -> list[KeywordMatch]:
    """Items of `collection` (None: both) matching any word of `query`, best first: exact
    matches (the words and their `synonyms`) by BM25 (ties by id), then, when `forgiving`,
    prefix matches, then typo matches (see the module docstring). `products_only` keeps
    product items; `product_ids` keeps items of those products. BM25's document frequencies
    count every item of the index, whatever its collection."""
    vocabulary = get_vocabulary(db, TABLE) if forgiving else None

    def plan(all_typos: bool) -> QueryTerms:
        return query_terms(
            query, forgiving=forgiving, synonyms=synonyms, vocabulary=vocabulary,
            all_typos=all_typos,
        )  # fmt: skip

    # The vocabulary scan for typos of known words waits until the typo tier is reached: a
    # page that exact and prefix matches fill never pays for it.
    terms = plan(all_typos=False)
    expressions = dict(terms.expressions())
    allowed = None if product_ids is None else set(product_ids)
    matches: list[KeywordMatch] = []
    for tier in TIERS:
        if limit is not None and len(matches) >= limit:
            break
        if tier == TYPO and forgiving:
            expressions = dict(plan(all_typos=True).expressions())
        expression = expressions.get(tier)
        if expression is None:
            continue
        room = None if limit is None else limit - len(matches)
        if tier == EXACT and terms.corrections:
            found = _corrected(
                db, expression, terms.corrections, collection, room, products_only, allowed
            )
        else:
            found = _match(db, expression, collection, room, products_only, allowed)
        floor = matches[-1].score if matches else None
        matches.extend(
            KeywordMatch(m.id, _below(floor, m.score), m.collection, m.product_id, tier)
            for m in found
        )
    return matches


def _corrected(
    db: sqlite3.Connection,
    expression: str,
    corrections: tuple[str, ...],
    collection: str | None,
    limit: int | None,
    products_only: bool,
    allowed: set[str] | None,
) -> list[KeywordMatch]:
    """Exact matches ranked by the BM25 of their words plus that of the corrections of the
    query's unknown words, best first: one FTS5 query over both (BM25 is a sum over the
    expression's phrases), keeping the items that match `expression` itself."""
    sql = f"SELECT rowid FROM {TABLE} WHERE {TABLE} MATCH ?"
    members = {row[0] for row in db.execute(sql, (expression,))}
    if not members:  # e.g. a one-word query with a typo: nothing to add to
        return []
    both = f"{expression} OR {' OR '.join(corrections)}"
    kept = (
        m for m in _iter_matches(db, both, collection, products_only, allowed) if m.id in members
    )
    return list(itertools.islice(kept, limit))


def _below(floor: float | None, score: float) -> float:
    """`score` squeezed under `floor` (the lowest score of a better tier), order kept."""
    if floor is None:
        return score
    return floor * score / (1.0 + score) if score > 0 else 0.0


def _match(
    db: sqlite3.Connection,
    expression: str,
    collection: str | None,
    limit: int | None,
    products_only: bool,
    allowed: set[str] | None,
) -> list[KeywordMatch]:
    """One MATCH expression's items, best BM25 first (ties by id)."""
    sql_limit = limit if allowed is None else None  # product filters apply after SQL
    found = _iter_matches(db, expression, collection, products_only, allowed, sql_limit)
    return list(itertools.islice(found, limit))


def _iter_matches(
    db: sqlite3.Connection,
    expression: str,
    collection: str | None,
    products_only: bool,
    allowed: set[str] | None,
    limit: int | None = None,
) -> Iterator[KeywordMatch]:
    where = "1" if collection is None else "items.collection = ?"
    if products_only or allowed is not None:
        where += " AND items.product_id IS NOT NULL"
    # bm25() is negative, lower is better (SQLite's FTS5 convention); we report -bm25.
    sql = (
        f"SELECT items.id, -bm25({TABLE}) AS score, items.collection, items.product_id "
        f"FROM {TABLE} JOIN items ON items.id = {TABLE}.rowid "
        f"WHERE {TABLE} MATCH ? AND {where} ORDER BY bm25({TABLE}), items.id"
    )
    params: list[object] = [expression] + ([] if collection is None else [collection])
    if limit is not None:
        sql += " LIMIT ?"
        params.append(limit)
    for row in db.execute(sql, params):
        if allowed is None or row[3] in allowed:
            yield KeywordMatch(int(row[0]), float(row[1]), row[2], row[3])


__all__ = [
    "MIGRATION",
    "EXACT",
    "PREFIX",
    "TIERS",
    "TYPO",
    "KeywordMatch",
    "QueryTerms",
    "keyword_text",
    "query_terms",
    "register",
    "search",
    "split_words",
    "upgrade",
]
