"""Keyword (FTS5/BM25) and hybrid (reciprocal rank fusion) search: results against a hand
computation of BM25 and of RRF, the keyword index kept in step with the items, filters in every
mode, the CLI and HTTP surfaces."""

from __future__ import annotations

import base64
import math
import sqlite3
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from clirun import invoke, json_lines, run_ok
from fastapi.testclient import TestClient
from httpkit import cli_query, index_shop, open_app
from PIL import Image
from testdata import cpu_config

from retrieval.compose import open_for_search
from retrieval.search.hybrid import fuse
from retrieval.search.service import SearchRequest, SearchService
from retrieval.storage import keywords
from retrieval.storage.catalog import MIGRATIONS, Catalog

NAMES = [
    "red_dress.png",
    "blueDress.png",
    "red-shoe-2019.png",
    "beach/IMG_0042.png",
    "beach/sunset_red.png",
    "cat.png",
]
TEXTS = ["a red shoe", "a blue hat", "a dress on a chair", "mountain lake"]


def write_named_images(folder: Path, names: list[str]) -> None:
    for number, name in enumerate(names):
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (40, 32), (40 * number, 255 - 30 * number, 90)).save(path)


@pytest.fixture(scope="module")
def named_index(tiny_model: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("named")
    write_named_images(root / "photos", NAMES)
    (root / "texts.txt").write_text("\n".join(TEXTS) + "\n")
    directory = root / "index"
    run_ok("index", root / "photos", "--texts", root / "texts.txt", "--model", tiny_model,
           "--index", directory, "--quiet")  # fmt: skip
    return directory


@pytest.fixture
def service(named_index: Path) -> Iterator[SearchService]:
    with open_for_search(named_index, cpu_config()) as opened:
        yield opened


def bm25_by_hand(docs: dict[int, list[str]], query: list[str]) -> dict[int, float]:
    """Okapi BM25 as FTS5 documents it (k1=1.2, b=0.75, idf floored at 1e-6), for the
    documents that contain at least one query word."""
    n_docs = len(docs)
    avgdl = sum(len(words) for words in docs.values()) / n_docs
    scores = {}
    for doc_id, words in docs.items():
        score, found = 0.0, False
        for term in dict.fromkeys(query):
            tf = words.count(term)
            if not tf:
                continue
            found = True
            n_term = sum(1 for other in docs.values() if term in other)
            idf = math.log((n_docs - n_term + 0.5) / (n_term + 0.5))
            idf = idf if idf > 0 else 1e-6
            score += idf * tf * 2.2 / (tf + 1.2 * (0.25 + 0.75 * len(words) / avgdl))
        if found:
            scores[doc_id] = score
    return scores


def all_docs(catalog: Catalog) -> dict[int, list[str]]:
    """Every item's keyword words, lowercased as FTS5's unicode61 tokenizer folds them."""
    docs = {}
    for collection in ("images", "texts"):
        for item in catalog.iter_items(collection):
            body = keywords.keyword_text(item.path, item.text, None)
            docs[item.id] = body.lower().split()
    return docs


def test_names_split_on_separators_camel_case_and_digits() -> None:
    assert keywords.split_words("redDress_2019.jpg") == ["red", "Dress", "2019", "jpg"]
    assert keywords.split_words("HTMLParser-v2 n01440764") == ["HTML", "Parser", "v", "2", "n",
                                                               "01440764"]  # fmt: skip
    assert keywords.path_words("/home/u/Photos/beach-trip/2019/IMG_1234.JPG") == [
        "Photos", "beach", "trip", "2019", "IMG", "1234"]  # fmt: skip
    meta = '{"title": "Red shoes", "price": 3, "brand": "acme"}'
    assert keywords.keyword_text("/a/b/c/shoeBox.png", "Red shoes", meta) == (
        "a b c shoe Box Red shoes acme"
    )
    assert keywords.match_expression('say "hi" or-not') == '"say" OR "hi" OR "or" OR "not"'
    assert keywords.match_expression("  ..  ") is None


@pytest.mark.parametrize("query", ["red dress", "beach", "blue", "2019 shoe", "lake mountain"])
def test_keyword_results_equal_bm25_by_hand(service: SearchService, query: str) -> None:
    catalog = service.store.catalog
    docs = all_docs(catalog)
    scores = bm25_by_hand(docs, [w.lower() for w in keywords.split_words(query)])
    for target in ("images", "texts"):
        mine = {i: s for i, s in scores.items() if catalog.get_item(i).collection == target}
        want = sorted(mine.items(), key=lambda pair: (-pair[1], pair[0]))
        hits = service.search(SearchRequest(text=query, target=target, k=20, mode="keyword")).hits
        assert [h.id for h in hits] == [i for i, _ in want]
        assert [h.score for h in hits] == pytest.approx([s for _, s in want], rel=1e-6)
        assert [h.signals for h in hits] == [{"keyword": n} for n in range(1, len(hits) + 1)]
    red = service.search(SearchRequest(text="red", target="images", mode="keyword", k=20)).hits
    assert {Path(h.path).name for h in red} == {"red_dress.png", "red-shoe-2019.png",
                                               "sunset_red.png"}  # fmt: skip


def rrf_order(score: float, ranks: dict[str, int]) -> tuple[float, int, int]:
    """Equal scores: the better best rank first, then keyword before semantic."""
    best = min(ranks.values())
    return (-score, best, 0 if ranks.get("keyword") == best else 1)


def test_hybrid_equals_rrf_of_the_two_rankings_by_hand(service: SearchService) -> None:
    for target in ("images", "texts"):
        request = SearchRequest(text="red dress", target=target, k=100)
        semantic = service.search(replace(request, mode="semantic")).hits
        keyword = service.search(replace(request, mode="keyword")).hits
        assert keyword and semantic
        fused: dict[int, float] = {}
        ranks: dict[int, dict[str, int]] = {}
        for signal, hits in (("semantic", semantic), ("keyword", keyword)):
            for rank, hit in enumerate(hits, start=1):
                fused[hit.id] = fused.get(hit.id, 0.0) + 1 / (60 + rank)
                ranks.setdefault(hit.id, {})[signal] = rank
        hybrid = service.search(SearchRequest(text="red dress", target=target, k=6, mode="hybrid"))
        assert hybrid.query["mode"] == "hybrid"
        got = [(h.id, h.score, h.signals) for h in hybrid.hits]

        want = sorted(fused, key=lambda i: rrf_order(fused[i], ranks[i]))[:6]
        assert [h[0] for h in got] == want
        assert [h[1] for h in got] == pytest.approx([fused[i] for i in want], abs=1e-12)
        assert [h[2] for h in got] == [ranks[i] for i in want]
        page = service.search(
            SearchRequest(text="red dress", target=target, k=3, offset=3, mode="hybrid")
        ).hits
        assert [(h.id, h.rank) for h in page] == [(h.id, h.rank) for h in hybrid.hits[3:6]]


def test_rrf_ties_and_values_by_hand() -> None:
    fused = fuse({"semantic": ["a", "b", "c"], "keyword": ["c", "d"]})
    assert [f.key for f in fused] == ["c", "a", "b", "d"]  # b, d tie at 1/62: semantic first
    assert [f.score for f in fused] == pytest.approx([1 / 63 + 1 / 61, 1 / 61, 1 / 62, 1 / 62])
    assert fused[0].ranks == {"semantic": 3, "keyword": 1}


def assert_keywords_in_step(catalog: Catalog) -> None:
    """One keyword row per item, holding exactly that item's words."""
    rows = dict(catalog.db.execute("SELECT rowid, body FROM keywords").fetchall())
    items = {}
    for collection in ("images", "texts"):
        for item in catalog.iter_items(collection):
            meta = catalog.db.execute(
                "SELECT metadata FROM products WHERE id=?", (item.product_id,)
            ).fetchone()
            items[item.id] = keywords.keyword_text(item.path, item.text, meta[0] if meta else None)
    assert rows == items


def test_keywords_follow_deletes_renames_and_reindex(tiny_model: str, tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    write_named_images(photos, NAMES)
    index_dir = tmp_path / "index"
    args = ("--model", tiny_model, "--index", index_dir, "--quiet")
    run_ok("index", photos, *args)
    (photos / "red_dress.png").rename(photos / "green_hat.png")
    (photos / "cat.png").unlink()
    Image.new("RGB", (40, 32), "purple").save(photos / "blueDress.png")  # new bytes, same name
    run_ok("index", photos, *args)
    with open_for_search(index_dir, cpu_config()) as service:
        assert_keywords_in_step(service.store.catalog)

        def names(query: str) -> set[str]:
            hits = service.search(SearchRequest(text=query, mode="keyword", k=20)).hits
            return {Path(h.path or "").name for h in hits}

        assert names("green hat") == {"green_hat.png"}
        assert names("cat") == set()
        assert names("dress") == {"blueDress.png"}
    run_ok("index", photos, tmp_path / "photos", *args)  # unchanged re-run
    with open_for_search(index_dir, cpu_config()) as service:
        assert_keywords_in_step(service.store.catalog)


def test_a_rolled_back_write_leaves_no_keyword_row(tmp_path: Path) -> None:
    catalog = Catalog(tmp_path / "catalog.sqlite")
    with catalog.transaction():
        catalog.add_item("images", "img:1", path="/x/kept.png")
    with pytest.raises(RuntimeError), catalog.transaction():
        catalog.add_item("images", "img:2", path="/x/lost.png")
        raise RuntimeError("killed")
    assert keywords.search(catalog.db, "lost", "images", limit=5) == []
    assert [m.id for m in keywords.search(catalog.db, "kept", "images", limit=5)] == [1]
    assert_keywords_in_step(catalog)


def test_an_old_catalog_gets_its_keyword_index_on_open(tmp_path: Path) -> None:
    path = tmp_path / "catalog.sqlite"
    old = sqlite3.connect(path, isolation_level=None)
    old.executescript(f"BEGIN; {MIGRATIONS[0]}; PRAGMA user_version=1; COMMIT;")
    old.execute(
        "INSERT INTO items(collection, path, key) VALUES ('images', '/p/old_photo.png', 'k')"
    )
    old.close()
    catalog = Catalog(path, readonly=True)  # a reader (query, serve) migrates it too
    assert [m.id for m in keywords.search(catalog.db, "photo", "images", limit=5)] == [1]
    assert catalog.db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)


# -- products: default mode, filters in every mode -----------------------------------------------
@pytest.fixture(scope="module")
def shop_index(tiny_model: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return index_shop(tiny_model, tmp_path_factory.mktemp("shop"))


@pytest.mark.parametrize("mode", ["semantic", "keyword", "hybrid"])
def test_filters_apply_in_every_mode(shop_index: Path, mode: str) -> None:
    with open_for_search(shop_index, cpu_config()) as service:
        assert_keywords_in_step(service.store.catalog)
        request = SearchRequest(
            text="hats model 4", k=9, mode=mode, filters={"category": "shoes", "price_max": 40}
        )
        hits = service.search(request).hits
        # shoes are SKU-000, 003, 006 at 10.5, 25.5, 40.5; every shoe title has "model"
        assert {h.metadata["product_id"] for h in hits} == {"SKU-000", "SKU-003"}
        assert len(hits) == 2


def test_catalogs_default_to_hybrid_and_keyword_finds_the_title(shop_index: Path) -> None:
    with open_for_search(shop_index, cpu_config()) as service:
        result = service.search(SearchRequest(text="model 7", k=3))
        assert result.query["mode"] == "hybrid"
        assert result.hits[0].metadata["product_id"] == "SKU-007"
        assert result.hits[0].signals is not None and result.hits[0].signals["keyword"] == 1
        keyword = service.search(SearchRequest(text="model 7", k=9, mode="keyword")).hits
        assert keyword[0].metadata["product_id"] == "SKU-007"
        assert keyword[0].path is not None  # shown by one of its images
        assert len({h.metadata["product_id"] for h in keyword}) == 9
        image = shop_index.parent / "shop" / "img" / "img_009.png"
        assert service.search(SearchRequest(image=image, k=1)).query["mode"] == "semantic"


def test_folders_default_to_semantic(service: SearchService) -> None:
    result = service.search(SearchRequest(text="red dress", k=3))
    assert result.query["mode"] == "semantic"
    assert all(h.signals is None for h in result.hits)


# -- CLI and HTTP --------------------------------------------------------------------------------
def test_cli_and_http_agree_on_modes(named_index: Path) -> None:
    with open_app(named_index) as (app, _), TestClient(app) as client:
        for mode in ("keyword", "hybrid"):
            want = cli_query(named_index, "red dress", "--mode", mode, "-k", "4")
            got = client.get("/search", params={"q": "red dress", "mode": mode, "k": 4}).json()
            assert got["results"] == want["results"] and got["query"] == want["query"]
            posted = client.post("/search", json={"text": "red dress", "mode": mode, "k": 4})
            assert posted.json()["results"] == want["results"]
            assert all("signals" in hit for hit in got["results"])
        bad = client.get("/search", params={"q": "x", "mode": "fuzzy"})
        assert bad.status_code == 422
        image = next((named_index.parent / "photos").glob("*.png"))
        body = {"image_b64": base64.b64encode(image.read_bytes()).decode()}
        refused = client.post("/search", json={**body, "mode": "keyword"})
        assert refused.status_code == 422 and "needs a query text" in refused.json()["message"]
        schema = client.get("/openapi.json").json()["components"]["schemas"]
        assert schema["SearchBody"]["properties"]["mode"]
        assert {"caption", "signals"} <= set(schema["HitOut"]["properties"])
    table = run_ok("query", "red dress", "--mode", "keyword", "--index", named_index)
    assert "keyword #1" in table
    wrong = invoke("query", "red", "--mode", "fuzzy", "--index", named_index)
    assert wrong.exit_code == 2 and "error: --mode must be one of" in wrong.stderr
    assert (
        json_lines("query", "red", "--mode", "keyword", "--json", "--index", named_index)[0][
            "query"
        ]["mode"]
        == "keyword"
    )
