"""Keyword search inside text written without spaces (Chinese, Japanese, Korean): file and
folder names, texts, captions and product titles found by any word inside them, through the
library, the CLI and HTTP; Latin-script word splitting unchanged; old catalogs rebuilt on open."""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from clirun import run_ok
from fastapi.testclient import TestClient
from httpkit import cli_query, open_app
from PIL import Image
from testdata import cpu_config

from retrieval.compose import open_for_search
from retrieval.search.service import SearchRequest, SearchService
from retrieval.storage import keywords
from retrieval.storage.catalog import Catalog

NAMES = [
    "猫在沙发上/IMG_0001.png",
    "红色连衣裙.png",
    "東京タワーの夜景.png",
    "서울에서_찍은_사진.png",
    "beach/sunset_red.png",
]
TEXTS = ["一只猫在沙发上睡觉", "蓝色牛仔裤", "京都の紅葉", "a red dress on a chair"]
PRODUCTS = [
    ("P1", "红色真丝连衣裙"),
    ("P2", "白色纯棉衬衫"),
    ("P3", "黑色皮鞋 男士"),
    ("P4", "Red silk dress"),
]


def old_split_words(text: str) -> list[str]:
    """split_words before CJK support (mmsearch 0.1.0), the reference for Latin text."""
    camel = re.compile(
        r"(?<=[a-z])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])|(?<=[^\W\d_])(?=\d)|(?<=\d)(?=[^\W\d_])"
    )
    return [w for part in re.split(r"[\W_]+", text) for w in camel.sub(" ", part).split()]


def test_cjk_runs_are_stored_as_character_pairs_and_queried_by_them() -> None:
    assert keywords.split_words("iPhone手机壳2024新款.jpg") == ["i", "Phone", "手机壳", "2024",
                                                              "新款", "jpg"]  # fmt: skip
    assert keywords.keyword_text("/x/猫在沙发上/IMG_1.png", "红色连衣裙", None) == (
        "x 猫在 在沙 沙发 发上 上 IMG 1 红色 色连 连衣 衣裙 裙"
    )
    assert keywords.match_expression("连衣裙") == '"连衣" OR "衣裙"'
    assert keywords.match_expression("猫 dress") == '"猫" * OR "dress"'
    assert keywords.match_expression("東京タワー") == '"東京" OR "京タ" OR "タワ" OR "ワー"'
    assert keywords.match_expression("。、「」") is None


def test_vowel_signs_stay_inside_their_words() -> None:
    # Hindi and Thai vowel signs are combining marks: they used to split words in pieces.
    assert keywords.split_words("हिन्दी फ़िल्म") == ["हिन्दी", "फ़िल्म"]
    assert keywords.split_words("café_noir") == ["café", "noir"]  # decomposed é
    assert keywords.keyword_text(None, "สวัสดี", None) == "สว วั ัส สด ดี ี"


def test_latin_word_splitting_is_unchanged() -> None:
    rng = random.Random(7)
    alphabet = "aZbYé9_0-. /\\'\"xHTMLParser2019ñß²½Ⅻ①\t→©™" + "\u00a0\u2019"
    for _ in range(3000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 24)))
        assert keywords.split_words(text) == old_split_words(text), text
        expression = keywords.match_expression(text)
        words = list(dict.fromkeys(old_split_words(text)))
        want = " OR ".join('"' + w.replace('"', '""') + '"' for w in words) if words else None
        assert expression == want


def substring_oracle(items: dict[int, str], query: str) -> set[int]:
    return {item_id for item_id, words in items.items() if query in words}


@pytest.fixture(scope="module")
def cjk_index(tiny_model: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cjk")
    for number, name in enumerate(NAMES):
        path = root / "photos" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (40, 32), (50 * number, 90, 200 - 40 * number)).save(path)
    (root / "texts.txt").write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    shop = root / "shop"
    shop.mkdir()
    for number, (product_id, _) in enumerate(PRODUCTS):
        Image.new("RGB", (40, 32), (20, 40 * number, 60)).save(shop / f"{product_id}.png")
    rows = [{"id": p, "title": t, "image": f"{p}.png"} for p, t in PRODUCTS]
    (shop / "products.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    directory = root / "index"
    run_ok("index", root / "photos", "--texts", root / "texts.txt", "--model", tiny_model,
           "--index", directory, "--quiet")  # fmt: skip
    run_ok("index", "--catalog", shop / "products.jsonl", "--model", tiny_model,
           "--index", root / "shop_index", "--quiet")  # fmt: skip
    return directory


@pytest.fixture
def service(cjk_index: Path) -> Iterator[SearchService]:
    with open_for_search(cjk_index, cpu_config()) as opened:
        yield opened


def keyword_hits(service: SearchService, query: str, target: str) -> list[str]:
    request = SearchRequest(text=query, target=target, k=50, mode="keyword")
    return [hit.path or hit.text or "" for hit in service.search(request).hits]


@pytest.mark.parametrize(
    ("query", "target", "found"),
    [
        ("沙发", "images", ["猫在沙发上/IMG_0001.png"]),  # a folder name
        ("连衣裙", "images", ["红色连衣裙.png"]),
        ("裙", "images", ["红色连衣裙.png"]),  # one character, the last of its run
        ("タワー", "images", ["東京タワーの夜景.png"]),
        ("서울", "images", ["서울에서_찍은_사진.png"]),
        ("red", "images", ["beach/sunset_red.png"]),
        ("沙发", "texts", ["一只猫在沙发上睡觉"]),
        ("牛仔裤", "texts", ["蓝色牛仔裤"]),
        ("紅葉", "texts", ["京都の紅葉"]),
        ("猫", "texts", ["一只猫在沙发上睡觉"]),
    ],
)
def test_keyword_search_finds_words_inside_cjk_names_and_texts(
    service: SearchService, cjk_index: Path, query: str, target: str, found: list[str]
) -> None:
    root = cjk_index.parent / "photos"
    hits = keyword_hits(service, query, target)
    assert [str(Path(h).relative_to(root)) if target == "images" else h for h in hits] == found


def test_keyword_hits_are_exactly_the_items_holding_the_query(service: SearchService) -> None:
    """For words whose pairs occur nowhere else, the matches are the substring matches."""
    catalog = service.store.catalog
    sources = {}
    for collection in ("images", "texts"):
        for item in catalog.iter_items(collection):
            sources[item.id] = "".join(keywords.path_words(item.path or "")) + (item.text or "")
    for query in ["沙发", "猫", "上", "夜景", "の", "에서", "色"]:
        got = set()
        for target in ("images", "texts"):
            request = SearchRequest(text=query, target=target, k=50, mode="keyword")
            got |= {hit.id for hit in service.search(request).hits}
        assert got == substring_oracle(sources, query), query


def test_hybrid_ranks_the_cjk_keyword_match_and_http_and_cli_agree(cjk_index: Path) -> None:
    with open_app(cjk_index) as (app, service), TestClient(app) as client:
        hybrid = service.search(SearchRequest(text="连衣裙", target="images", k=5, mode="hybrid"))
        first = hybrid.hits[0]
        assert Path(first.path or "").name == "红色连衣裙.png"
        assert first.signals is not None and first.signals["keyword"] == 1
        got = client.get("/search", params={"q": "连衣裙", "mode": "keyword", "k": 5}).json()
        want = cli_query(cjk_index, "连衣裙", "--mode", "keyword", "-k", "5")
        assert got["results"] == want["results"]
        assert [Path(r["path"]).name for r in got["results"]] == ["红色连衣裙.png"]


def test_product_titles_are_found_by_words_inside_them(cjk_index: Path) -> None:
    with open_for_search(cjk_index.parent / "shop_index", cpu_config()) as service:

        def products(query: str, mode: str = "keyword") -> list[str]:
            hits = service.search(SearchRequest(text=query, k=4, mode=mode)).hits
            return [hit.metadata["product_id"] for hit in hits]

        assert products("连衣裙") == ["P1"]
        assert products("真丝") == ["P1"]
        assert products("纯棉衬衫") == ["P2"]
        assert products("皮鞋") == ["P3"]
        assert products("dress") == ["P4"]
        assert sorted(products("色")) == ["P1", "P2", "P3"]  # one character, in three titles
        assert products("连衣裙", "hybrid")[0] == "P1"


def test_a_caption_is_found_by_a_word_inside_it(tmp_path: Path) -> None:
    catalog = Catalog(tmp_path / "catalog.sqlite")
    with catalog.transaction():
        item = catalog.add_item("images", "img:1", path="/x/IMG_1.png")
    with catalog.transaction():
        catalog.set_text(item, "一只猫在沙发上睡觉")
    assert [m.id for m in keywords.search(catalog.db, "睡觉", "images", limit=5)] == [item]
    with catalog.transaction():
        catalog.set_text(item, None)
    assert keywords.search(catalog.db, "睡觉", "images", limit=5) == []


def test_an_index_with_keyword_rows_of_an_older_version_rebuilds_them_on_open(
    tmp_path: Path,
) -> None:
    path = tmp_path / "catalog.sqlite"
    catalog = Catalog(path)
    with catalog.transaction():
        catalog.add_item("images", "k1", path="/p/红色连衣裙.png")
        catalog.add_item("texts", "k2", text="一只猫在沙发上睡觉")
        catalog.add_item("images", "k3", path="/p/old_photo.png")
    # What mmsearch 0.1.0 wrote: unicode61 words, no version key.
    old = [(item_id, " ".join(old_split_words(text))) for item_id, text in
           [(1, "p 红色连衣裙"), (2, "一只猫在沙发上睡觉"), (3, "p old photo")]]  # fmt: skip
    with catalog.transaction() as db:
        db.executemany("UPDATE keywords SET body=? WHERE rowid=?", [(b, i) for i, b in old])
        db.execute("DELETE FROM meta WHERE key=?", (keywords.VERSION_KEY,))
    assert keywords.search(catalog.db, "连衣裙", "images", limit=5) == []
    catalog.close()

    reader = Catalog(path, readonly=True)  # a reader (query, serve) migrates it too
    assert [m.id for m in keywords.search(reader.db, "连衣裙", "images", limit=5)] == [1]
    assert [m.id for m in keywords.search(reader.db, "沙发", "texts", limit=5)] == [2]
    assert [m.id for m in keywords.search(reader.db, "photo", "images", limit=5)] == [3]
    assert reader.get_meta(keywords.VERSION_KEY) == str(keywords.VERSION)
    rows = dict(reader.db.execute("SELECT rowid, body FROM keywords").fetchall())
    assert rows[1] == keywords.keyword_text("/p/红色连衣裙.png", None, None)
    assert not keywords.upgrade(Catalog(path).db)  # once only
