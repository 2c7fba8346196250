"""Forgiving keyword search: prefix and typo matches ranked below exact ones, the typo budget
against an independent edit-distance oracle, synonyms from the index directory (CLI, service,
HTTP), and the keyword table rebuilt with its prefix index for catalogs of an older version."""

from __future__ import annotations

import csv
import time
from pathlib import Path

import pytest
from clirun import invoke, run_ok
from fastapi.testclient import TestClient
from httpkit import cli_query, open_app
from hypothesis import example, given, settings
from hypothesis import strategies as st
from testdata import make_images

from retrieval.search.service import SearchRequest
from retrieval.storage import keywords, vocabulary
from retrieval.storage.catalog import Catalog
from retrieval.storage.synonyms import FILE_NAME, parse_synonyms
from retrieval.storage.vocabulary import typo_budget

TEXTS = [
    "red goldfish bowl",  # 1
    "gold ring",  # 2
    "golden retriever",  # 3
    "red car",  # 4
    "velvet sofa",  # 5
    "leather couch",  # 6
    "goldfish",  # 7
    "marmalade",  # 8
    "photograph album",  # 9
]


@pytest.fixture
def catalog(tmp_path: Path) -> Catalog:
    catalog = Catalog(tmp_path / "catalog.sqlite")
    with catalog.transaction():
        for number, text in enumerate(TEXTS):
            catalog.add_item("texts", f"k{number}", text=text)
    return catalog


def found(catalog: Catalog, query: str, **options: object) -> list[tuple[int, str]]:
    matches = keywords.search(catalog.db, query, "texts", limit=50, **options)  # type: ignore[arg-type]
    scores = [m.score for m in matches]
    assert scores == sorted(scores, reverse=True), "scores fall with the rank"
    return [(m.id, m.match) for m in matches]


def test_a_prefix_finds_longer_words_below_the_exact_word(catalog: Catalog) -> None:
    assert found(catalog, "gold") == [(2, "exact"), (7, "prefix"), (3, "prefix"), (1, "prefix")]
    assert found(catalog, "gold", forgiving=False) == [(2, "exact")]
    assert found(catalog, "photo") == [(9, "prefix")]


def test_a_typo_finds_the_word_below_exact_and_prefix_matches(catalog: Catalog) -> None:
    assert found(catalog, "goldfsh") == [(7, "typo"), (1, "typo")]  # deletion
    assert found(catalog, "goldfihs") == [(7, "typo"), (1, "typo")]  # swap of neighbours
    assert found(catalog, "marmelade") == [(8, "typo")]  # substitution, 9 letters
    assert found(catalog, "mermelade") == [(8, "typo")]  # two edits from 9 letters
    assert found(catalog, "goldfsh", forgiving=False) == []
    # Exact before prefix before typo in one answer: `golden` exactly, `gold*`, `goldfish`~.
    tiers = [tier for _, tier in found(catalog, "golden goldfsh")]
    assert tiers == sorted(tiers, key=keywords.TIERS.index) and set(tiers) == {"exact", "typo"}


def test_a_corrected_word_adds_to_the_exact_matches_of_the_others(catalog: Catalog) -> None:
    # `red goldfish bowl` holds red and (one typo away) goldfish; `red car`, shorter, only red.
    assert found(catalog, "red goldfsh")[:2] == [(1, "exact"), (4, "exact")]
    assert found(catalog, "red goldfsh", forgiving=False) == [(4, "exact"), (1, "exact")]


def test_short_words_and_words_with_digits_get_no_typos(catalog: Catalog) -> None:
    assert found(catalog, "rung") == []  # 4 letters: `ring` is one edit away but not allowed
    assert typo_budget("gold") == 0 and typo_budget("goldf") == 1 and typo_budget("goldfishy") == 2
    assert typo_budget("model5") == 0


def osa_distance(a: str, b: str) -> int:
    """Optimal string alignment distance, by the textbook recurrence (the test's own oracle,
    independent of rapidfuzz)."""
    d = [[i + j if i * j == 0 else 0 for j in range(len(b) + 1)] for i in range(len(a) + 1)]
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            cost = a[i - 1] != b[j - 1]
            d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                d[i][j] = min(d[i][j], d[i - 2][j - 2] + 1)
    return d[len(a)][len(b)]


WORDS = ["lantern", "planter", "painter", "pointer", "printer", "splinter", "lanterns", "banter"]


@pytest.fixture(scope="module")
def word_catalog(tmp_path_factory: pytest.TempPathFactory) -> Catalog:
    catalog = Catalog(tmp_path_factory.mktemp("words") / "catalog.sqlite")
    with catalog.transaction():
        for number, word in enumerate(WORDS):
            catalog.add_item("texts", f"w{number}", text=word)
    return catalog


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet="aeilnoprst", min_size=3, max_size=10))
@example("lanter")  # prefix of two words, one edit from two others
@example("lantern")  # exact, a longer word, a word one edit away
@example("printre")  # a swap
@example("spliter")  # a deletion in a word of 8 letters
def test_matches_are_the_words_within_the_budget_by_tier(word_catalog: Catalog, query: str) -> None:
    """Each item's tier against a brute force over the stored words: exact when it is the
    word, prefix when it starts with it, typo when within the word's edit budget."""
    want = {}
    for item_id, word in enumerate(WORDS, start=1):
        if word == query:
            want[item_id] = "exact"
        elif word.startswith(query):
            want[item_id] = "prefix"
        elif osa_distance(query, word) <= typo_budget(query):
            want[item_id] = "typo"
    assert dict(found(word_catalog, query)) == want


@settings(max_examples=40, deadline=None)
@given(st.text(alphabet="aeilnoprst ", min_size=2, max_size=16), st.integers(1, 9))
def test_a_limited_search_is_the_head_of_the_unlimited_one(
    word_catalog: Catalog, query: str, limit: int
) -> None:
    """Tiers are searched lazily (a full page stops before the typo scan): the first `limit`
    matches are still exactly those of the whole ranking, with the same scores."""
    whole = keywords.search(word_catalog.db, query, "texts", limit=None)
    assert keywords.search(word_catalog.db, query, "texts", limit=limit) == whole[:limit]


def test_the_vocabulary_follows_writes(catalog: Catalog) -> None:
    assert found(catalog, "telescpe") == []
    with catalog.transaction():
        catalog.add_item("texts", "new", text="brass telescope")
    assert found(catalog, "telescpe") == [(10, "typo")]


def test_another_connections_words_become_typo_reachable_after_the_max_age(
    catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert found(catalog, "telescpe") == []
    writer = Catalog(catalog.path)
    with writer.transaction():
        writer.add_item("texts", "new", text="brass telescope")
    assert found(catalog, "telescope") == [(10, "exact")]  # FTS5 itself is always current
    assert found(catalog, "telescpe") == []  # the vocabulary read just now is kept a while
    monkeypatch.setattr(vocabulary, "VOCABULARY_MAX_AGE_S", 0.0)
    assert found(catalog, "telescpe") == [(10, "typo")]


def test_synonyms_match_as_exact_words(catalog: Catalog) -> None:
    synonyms = parse_synonyms("# furniture\nsofa, couch, settee\n\nfuton, velvet sofa\n")
    assert found(catalog, "couch", synonyms=synonyms) == [(5, "exact"), (6, "exact")]  # a tie
    assert found(catalog, "settee", synonyms=synonyms) == [(5, "exact"), (6, "exact")]
    assert found(catalog, "futon", synonyms=synonyms) == [(5, "exact")]  # a phrase member
    assert found(catalog, "settee") == []
    with pytest.raises(Exception, match="line 2 .* two or more"):
        parse_synonyms("sofa, couch\nlonely\n")


def test_an_older_keyword_table_is_rebuilt_with_a_prefix_index(tmp_path: Path) -> None:
    path = tmp_path / "catalog.sqlite"
    catalog = Catalog(path)
    with catalog.transaction() as db:
        catalog.add_item("texts", "k", text="goldfish bowl")
        # What version 2 made: the same rows in a table without prefix indexes.
        db.execute("DROP TABLE keywords")
        db.execute("CREATE VIRTUAL TABLE keywords USING fts5(body, tokenize='unicode61')")
        db.execute("INSERT INTO keywords(rowid, body) VALUES (1, 'goldfish bowl')")
        db.execute("UPDATE meta SET value='2' WHERE key=?", (keywords.VERSION_KEY,))
    catalog.close()
    reader = Catalog(path, readonly=True)
    sql = reader.db.execute("SELECT sql FROM sqlite_master WHERE name='keywords'").fetchone()[0]
    assert "prefix = '2 3'" in sql
    assert [(m.id, m.match) for m in keywords.search(reader.db, "go", None, limit=5)] == [
        (1, "prefix")
    ]


# -- synonyms stored by `index --synonyms`, used by query, serve and hybrid mode --------------
@pytest.fixture(scope="module")
def furniture_index(tiny_model: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("furniture")
    images = make_images(root / "img", 4, seed=5)
    titles = ["Velvet sofa", "Oak table", "Goldfish bowl", "Desk lamp"]
    with open(root / "products.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["id", "title", "image"])
        writer.writeheader()
        for number, (title, image) in enumerate(zip(titles, images, strict=True)):
            writer.writerow({"id": f"P{number}", "title": title, "image": f"img/{image.name}"})
    (root / "synonyms.txt").write_text("couch, sofa, settee\n")
    directory = root / "index"
    run_ok("index", "--catalog", root / "products.csv", "--synonyms", root / "synonyms.txt",
           "--model", tiny_model, "--index", directory, "--quiet")  # fmt: skip
    return directory


def titles(answer: dict) -> list[str]:
    return [hit["title"] for hit in answer["results"]]


def test_index_stores_the_synonyms_and_query_uses_them(furniture_index: Path) -> None:
    assert (furniture_index / FILE_NAME).read_text() == "couch, sofa, settee\n"
    answer = cli_query(furniture_index, "couch", "--mode", "keyword")
    assert titles(answer) == ["Velvet sofa"]
    assert titles(cli_query(furniture_index, "goldfsh", "--mode", "keyword")) == ["Goldfish bowl"]
    assert titles(cli_query(furniture_index, "lam", "--mode", "keyword")) == ["Desk lamp"]
    for query in ("couch", "goldfsh", "lam"):  # synonym, typo, prefix in hybrid mode too
        hybrid = cli_query(furniture_index, query, "--mode", "hybrid", "-k", "4")
        by_keyword = [h for h in hybrid["results"] if h["signals"].get("keyword") == 1]
        assert [h["title"] for h in by_keyword] == titles(
            cli_query(furniture_index, query, "--mode", "keyword", "-k", "1")
        )


def test_bad_synonyms_are_refused_before_indexing(furniture_index: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.txt"
    bad.write_text("sofa\n")
    result = invoke("index", "--synonyms", bad, "--index", furniture_index)
    assert result.exit_code != 0 and "line 1" in result.output and "Traceback" not in result.output
    assert (furniture_index / FILE_NAME).read_text() == "couch, sofa, settee\n"  # kept


def test_a_running_server_picks_up_new_synonyms(furniture_index: Path, tmp_path: Path) -> None:
    with open_app(furniture_index) as (app, service):
        client = TestClient(app)
        body = {"text": "settee", "mode": "keyword", "target": "products"}
        assert titles(client.post("/search", json=body).json()) == ["Velvet sofa"]
        replacement = tmp_path / "synonyms.txt"
        replacement.write_text("settee, table\n")
        time.sleep(0.01)  # a new modification time, on filesystems with coarse clocks
        run_ok("index", "--synonyms", replacement, "--index", furniture_index)
        assert titles(client.post("/search", json=body).json()) == ["Oak table"]
        request = SearchRequest(text="settee", mode="keyword", target="products")
        assert [h.metadata["title"] for h in service.search(request).hits] == ["Oak table"]
        (furniture_index / FILE_NAME).write_text("couch, sofa, settee\n")
