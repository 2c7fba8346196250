"""Typo tolerance for keyword search: the words of the keyword index (read through SQLite's
`fts5vocab` table) within a few edits of a query word, found with rapidfuzz.

Budget, close to Typesense's defaults (min_len_1typo, min_len_2typo): no typo in words under 5
letters (short words are too close to each other: `cat` is one edit from `car`, `bat`, `cut`),
one edit from 5 letters, two from 9.
An edit is an insertion, a deletion, a substitution or a swap of two neighbours
(`goldfihs` -> `goldfish`): rapidfuzz's optimal string alignment distance, so no hand-written
Levenshtein here.

Cost: the vocabulary is read once per connection and kept until the database changes (SQLite's
`data_version` and the connection's own `total_changes`; another process's commits are picked up
at most every VOCABULARY_MAX_AGE_S, as reading 100,000 titles' words takes ~0.2 s and a server
under steady writes must not pay that on every query), bucketed by word length, so a query
word is compared only with the words whose length is within its budget; rapidfuzz compares
those in C with `score_cutoff`, which stops each comparison as soon as it passes the budget
(benchmarks/keywords_typo.py measures it at 100,000 titles).
"""

from __future__ import annotations

import sqlite3
import threading
import time
import unicodedata
from collections import OrderedDict
from dataclasses import dataclass

from rapidfuzz import process
from rapidfuzz.distance import OSA

# Edits allowed: (minimum word length, edits), longest first. Below 5 letters most words are
# one edit from other real words, so a typo there would match noise rather than intent.
TYPO_BUDGET = ((9, 2), (5, 1))
# Words a query word may stand for: the closest first, then the most frequent. Ten keeps the
# MATCH expression short (each term is one more doclist to read) while covering the usual
# spread of one-edit neighbours of a real word.
MAX_TYPO_TERMS = 10
# Connections whose vocabulary is kept (a server holds one per worker thread at most).
CACHED_CONNECTIONS = 16
VOCAB_TABLE = "mm_keywords_vocab"
# How stale the typo candidates may be after another connection's commit: new words become
# typo-reachable within this time (exact and prefix matches are always current: FTS5 queries).
VOCABULARY_MAX_AGE_S = 5.0


def typo_budget(word: str) -> int:
    """Edits allowed in `word`: 0 under 5 letters, 1 from 5, 2 from 9; 0 for words with
    digits (a mistyped SKU or size names another product, not the one meant)."""
    if any(ch.isdigit() for ch in word):
        return 0
    return next((edits for length, edits in TYPO_BUDGET if len(word) >= length), 0)


def fold(word: str) -> str:
    """`word` as the keyword index stores it: lower case, accents removed (what unicode61 with
    remove_diacritics 2 does to Latin letters)."""
    decomposed = unicodedata.normalize("NFKD", word.casefold())
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))


@dataclass(frozen=True)
class Vocabulary:
    """The distinct words of a keyword index, by length, with how many items hold each."""

    by_length: dict[int, list[str]]
    documents: dict[str, int]

    def holds(self, word: str) -> bool:
        """Whether some item holds `word` (as the index folds it)."""
        return fold(word) in self.documents

    def typo_terms(self, word: str) -> list[str]:
        """Indexed words within `word`'s typo budget, other than the word itself, closest
        first, then the most frequent; at most MAX_TYPO_TERMS."""
        query = fold(word)
        budget = typo_budget(query)
        if not budget:
            return []
        near = []
        for length in range(len(query) - budget, len(query) + budget + 1):
            bucket = self.by_length.get(length, ())  # one call per bucket: no list to build
            found = process.extract(
                query, bucket, scorer=OSA.distance, score_cutoff=budget, limit=None
            )
            near.extend((distance, term) for term, distance, _ in found if distance > 0)
        near.sort(key=lambda pair: (pair[0], -self.documents[pair[1]], pair[1]))
        return [term for _, term in near[:MAX_TYPO_TERMS]]


def read_vocabulary(db: sqlite3.Connection, table: str) -> Vocabulary:
    """Every word of the FTS5 table `table`, through an fts5vocab table in the connection's
    temp schema (so read-only connections can make it too)."""
    db.execute(
        f"CREATE VIRTUAL TABLE IF NOT EXISTS temp.{VOCAB_TABLE} USING fts5vocab(main, {table}, row)"
    )
    by_length: dict[int, list[str]] = {}
    documents: dict[str, int] = {}
    for term, count in db.execute(f"SELECT term, doc FROM temp.{VOCAB_TABLE}"):
        documents[term] = int(count)
        by_length.setdefault(len(term), []).append(term)
    return Vocabulary(by_length, documents)


# id(connection) -> (the connection, the change stamp it was read at, its vocabulary). The
# connection is held so its id cannot be reused by another while cached (sqlite3 connections
# take no weak references).
_CACHE: OrderedDict[int, tuple[sqlite3.Connection, tuple[int, int], float, Vocabulary]] = (
    OrderedDict()
)
_CACHE_LOCK = threading.Lock()


def get_vocabulary(db: sqlite3.Connection, table: str) -> Vocabulary:
    """The vocabulary of `table`, read again when this connection wrote since the last read,
    or another connection committed and the last read is VOCABULARY_MAX_AGE_S old."""
    stamp = (int(db.execute("PRAGMA data_version").fetchone()[0]), db.total_changes)
    now = time.monotonic()
    with _CACHE_LOCK:
        cached = _CACHE.get(id(db))
        if cached is not None and cached[0] is db:
            (version, changes), read_at = cached[1], cached[2]
            fresh = version == stamp[0] or now - read_at < VOCABULARY_MAX_AGE_S
            if changes == stamp[1] and fresh:
                _CACHE.move_to_end(id(db))
                return cached[3]
    vocabulary = read_vocabulary(db, table)
    with _CACHE_LOCK:
        _CACHE[id(db)] = (db, stamp, now, vocabulary)
        _CACHE.move_to_end(id(db))
        while len(_CACHE) > CACHED_CONNECTIONS:
            _CACHE.popitem(last=False)
    return vocabulary


__all__ = ["MAX_TYPO_TERMS", "Vocabulary", "fold", "get_vocabulary", "typo_budget"]
