"""Captions through the real CoCa generation code, with a tiny random-weight CoCa model: its
captions are gibberish token strings, so these tests check the plumbing: one stored per image,
shared by identical bytes, skipped on re-runs, deterministic, searchable by keyword, shown in
hits, refreshed when a file changes."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from clirun import invoke, json_lines, run_ok
from fastapi.testclient import TestClient
from httpkit import open_app
from PIL import Image
from testdata import cpu_config, make_images, write_tiny_coca

from retrieval.compose import open_for_search
from retrieval.search.service import SearchRequest
from retrieval.storage import keywords
from retrieval.storage.catalog import Catalog


@pytest.fixture(scope="module")
def coca(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"local-dir:{write_tiny_coca(tmp_path_factory.mktemp('models') / 'coca')}"


@pytest.fixture(scope="module")
def captioned(tiny_model: str, coca: str, tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("captioned")
    photos = make_images(root / "photos", 3, size=(40, 40))
    shutil.copy(photos[0], root / "photos" / "copy_of_first.png")  # same bytes, one caption
    directory = root / "index"
    lines = json_lines("index", root / "photos", "--model", tiny_model, "--index", directory,
                       "--captions", "--caption-model", coca, "--quiet", "--json")  # fmt: skip
    return {"root": root, "index": directory, "photos": photos, "report": lines[-1]}


def stored_captions(directory: Path) -> dict[str, str | None]:
    with open_for_search(directory, cpu_config()) as service:
        return {
            Path(item.path or "").name: item.text
            for item in service.store.catalog.iter_items("images")
        }


def test_index_captions_every_image_once_and_identical_bytes_share_one(captioned: dict) -> None:
    report = captioned["report"]
    assert report["kind"] == "captions"
    assert (report["captioned"], report["generated"], report["already"]) == (4, 3, 0)
    captions = stored_captions(captioned["index"])
    assert all(captions.values()) and len(captions) == 4
    assert captions["copy_of_first.png"] == captions["img_000.png"]


def test_caption_command_prints_the_same_captions(captioned: dict, coca: str) -> None:
    photos = captioned["photos"]
    printed = json_lines("caption", *photos, "--model", coca, "--json", "--device", "cpu")
    captions = stored_captions(captioned["index"])
    assert [line["path"] for line in printed] == [str(p) for p in photos]
    # another run, another process state: the same captions (decoding is deterministic)
    assert [line["caption"] for line in printed] == [captions[p.name] for p in photos]


def test_rerun_skips_captioned_images_without_loading_the_model(
    captioned: dict, tiny_model: str
) -> None:
    # A caption model that cannot load: the run succeeds only because none is needed.
    lines = json_lines("index", captioned["root"] / "photos", "--index", captioned["index"],
                       "--captions", "--caption-model", "local-dir:/nowhere", "--quiet",
                       "--json")  # fmt: skip
    assert (lines[-1]["generated"], lines[-1]["already"]) == (0, 4)


def test_captions_are_searchable_by_keyword_and_shown_in_hits(captioned: dict) -> None:
    captions = stored_captions(captioned["index"])
    target = "img_002.png"
    others = " ".join(c or "" for name, c in captions.items() if name != target).lower().split()
    word = next(w for w in keywords.split_words(captions[target] or "") if w.lower() not in others)
    with open_for_search(captioned["index"], cpu_config()) as service:
        hits = service.search(SearchRequest(text=word, mode="keyword", k=5)).hits
        assert [Path(h.path or "").name for h in hits] == [target]
        assert hits[0].caption == captions[target] and hits[0].text is None
        semantic = service.search(SearchRequest(text="anything", k=4)).hits
        assert {h.caption for h in semantic} == set(captions.values())
    with open_app(captioned["index"]) as (app, _), TestClient(app) as client:
        body = client.get("/search", params={"q": word, "mode": "keyword"}).json()
        assert body["results"][0]["caption"] == captions[target]
        assert body["results"][0]["signals"] == {"keyword": 1}


def test_changed_file_gets_a_new_caption(tiny_model: str, coca: str, tmp_path: Path) -> None:
    photos = make_images(tmp_path / "photos", 2, size=(40, 40))
    index = ("index", tmp_path / "photos", "--model", tiny_model, "--index", tmp_path / "index")
    run_ok(*index, "--quiet")
    catalog = Catalog(tmp_path / "index" / "catalog.sqlite")
    with catalog.transaction():  # as if an earlier --captions run had written these
        for item in catalog.iter_items("images"):
            catalog.set_text(item.id, f"old caption {Path(item.path or '').stem}")
    catalog.close()
    Image.open(photos[0]).transpose(Image.Transpose.ROTATE_90).save(photos[0])
    run_ok(*index, "--quiet")
    captions = stored_captions(tmp_path / "index")
    assert captions == {"img_000.png": None, "img_001.png": "old caption img_001"}
    report = json_lines(*index, "--captions", "--caption-model", coca, "--quiet", "--json")[-1]
    assert (report["generated"], report["already"]) == (1, 1)
    after = stored_captions(tmp_path / "index")
    assert after["img_001.png"] == "old caption img_001" and after["img_000.png"]


def test_a_clip_model_is_refused_as_caption_model(tiny_model: str, tmp_path: Path) -> None:
    image = make_images(tmp_path / "photos", 1)[0]
    result = invoke("caption", image, "--model", tiny_model, "--device", "cpu")
    assert result.exit_code == 2 and "not a CoCa model" in result.stderr
    missing = invoke("caption", tmp_path / "nope.png", "--model", tiny_model)
    assert missing.exit_code == 2 and "does not exist" in missing.stderr
