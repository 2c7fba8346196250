"""One identity per file (retrieval/files.py): every spelling of a root is one root, a file is
indexed once, and each writer goes through the one write path. Regression tests for the
defects of issue 19, each reproduced through the real CLI and the tiny model."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from clirun import invoke, json_lines, run_ok
from testdata import make_images

from retrieval.files import file_sha256
from retrieval.index import FaissIndex
from retrieval.ingest.indexer import Indexer
from retrieval.storage import keywords
from retrieval.storage.catalog import MIGRATIONS, Catalog
from retrieval.storage.integrity import check_index
from retrieval.storage.store import IndexStore
from retrieval.types import IMAGES, TEXTS


def index_ok(*args: object) -> dict:
    return json_lines("index", *args, "--quiet", "--json")[-1]


def paths_in(directory: Path, collection: str = IMAGES) -> list[str]:
    with IndexStore.open(directory, readonly=True) as store:
        return [item.path or item.text or "" for item in store.catalog.iter_items(collection)]


def check_ok(directory: Path) -> None:
    report = check_index(directory)
    assert report.ok, report.problems


@pytest.fixture
def index_dir(tmp_path: Path) -> Path:
    return tmp_path / "indexes" / "default"


def test_a_root_spelled_with_dotdot_from_another_directory_is_one_root(
    tiny_model: str, tmp_path: Path, index_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Defect 1: `cd a && mmsearch index ../photos` twice stored every image twice, and a
    deleted file was never removed."""
    photos = make_images(tmp_path / "photos", 3)
    (tmp_path / "a").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    spellings = ["../photos", "../photos/", "./../photos", str(tmp_path / "photos" / ".")]
    first = index_ok(spellings[0], "--model", tiny_model)
    assert first["embedded"] == 3
    for spelling in spellings[1:]:
        again = index_ok(spelling)
        assert again["indexed"] == 0 and again["unchanged"] == 3, again
    assert sorted(paths_in(index_dir)) == [str(p) for p in photos]
    photos[0].unlink()
    assert index_ok("../photos")["removed"] == 1
    assert sorted(paths_in(index_dir)) == [str(p) for p in photos[1:]]
    check_ok(index_dir)


def test_a_folder_and_a_symlink_to_it_are_one_root(
    tiny_model: str, tmp_path: Path, index_dir: Path
) -> None:
    """Defect 2: indexed by its real path and through a link, a folder was stored twice and a
    file deleted later stayed under the other spelling."""
    real = tmp_path / "real"
    photos = make_images(real, 2)
    (tmp_path / "alias").symlink_to(real)
    index_ok(real, "--model", tiny_model)
    assert index_ok(tmp_path / "alias")["indexed"] == 0
    assert sorted(paths_in(index_dir)) == [str(p) for p in photos]
    photos[1].unlink()
    assert index_ok(tmp_path / "alias")["removed"] == 1
    assert paths_in(index_dir) == [str(photos[0])]
    hits = json.loads(run_ok("query", "noise", "--json", "-k", "10"))["results"]
    assert [hit["path"] for hit in hits] == [str(photos[0])]  # defect 5: no duplicate paths


def test_a_parent_with_a_link_to_its_child_does_not_flap(
    tiny_model: str, tmp_path: Path, index_dir: Path
) -> None:
    """Defect 3: syncing a parent walked its child through a link (named earlier in sort
    order) and removed the items indexed from the child; syncs of each then flapped."""
    parent = tmp_path / "parent"
    photos = make_images(parent / "zchild", 2)
    (parent / "alink").symlink_to(parent / "zchild")
    index_ok(parent / "zchild", "--model", tiny_model)
    for root in (parent, parent / "zchild", parent, parent / "alink"):
        report = index_ok(root)
        assert (report["indexed"], report["removed"]) == (0, 0), (root, report)
    assert sorted(paths_in(index_dir)) == [str(p) for p in photos]


def test_an_undecodable_name_does_not_shadow_a_valid_one(
    tiny_model: str, tmp_path: Path, index_dir: Path
) -> None:
    """Defect 4: a valid `a?.jpg` was never indexed (and removed if it was) when `a\\xff.jpg`
    existed: the bad name's skip was keyed by its lossy `?` spelling."""
    folder = tmp_path / "names"
    make_images(folder, 2)
    os.rename(folder / "img_000.png", folder / "a?.png")
    os.rename(os.fsencode(folder / "img_001.png"), os.fsencode(folder) + b"/a\xff.png")
    result = invoke("index", folder, "--model", tiny_model, "--quiet", "--json")
    assert result.exit_code == 0, result.output
    assert paths_in(index_dir) == [str(folder / "a?.png")]
    assert f"skipped {folder}/a\\xff.png: bad-name" in result.stderr
    assert index_ok(folder)["removed"] == 0  # and a re-run keeps it
    assert paths_in(index_dir) == [str(folder / "a?.png")]


@pytest.mark.parametrize("collection", [IMAGES, TEXTS])
def test_emptying_a_collection_then_refilling_it_writes_each_vector_once(
    tiny_model: str, tmp_path: Path, index_dir: Path, collection: str
) -> None:
    """Defect 6: after a collection was emptied, the next additions were written twice into
    its faiss file (4 vectors for 2 items) and queries failed."""
    folder = tmp_path / "photos"
    texts = tmp_path / "texts.txt"
    photos = make_images(folder, 2)
    texts.write_text("a red car\na green tree\n")
    index_ok(folder, "--texts", texts, "--model", tiny_model)
    if collection == IMAGES:
        hidden = [p.rename(tmp_path / p.name) for p in photos]
        index_ok(folder)
        for moved, original in zip(hidden, photos, strict=True):
            moved.rename(original)
        index_ok(folder)
    else:
        texts.write_text("")
        index_ok("--texts", texts)
        texts.write_text("a blue sky\na yellow sun\n")
        index_ok("--texts", texts)
    check_ok(index_dir)
    with IndexStore.open(index_dir, readonly=True) as store:
        index = store.get_index(collection)
        assert index is not None and index.ntotal == store.catalog.count(collection) == 2
    run_ok("query", "sky", "--json")


def test_a_reader_racing_a_commit_past_the_file_check_opens_the_new_generation(
    tiny_model: str, tmp_path: Path, index_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Defect 7: a reader that saw the old generation's file, then lost it to a commit before
    faiss opened it, failed with IndexNotFoundError ('no index file at ...') instead of
    opening the new generation."""
    folder = tmp_path / "photos"
    make_images(folder, 3)
    index_ok(folder, "--model", tiny_model)
    reader = IndexStore.open(index_dir, readonly=True)
    real_load = FaissIndex.load
    calls: list[int] = []

    def racing(*args: object, **kwargs: object) -> FaissIndex:
        if not calls:
            calls.append(1)
            make_images(folder, 4, seed=9)  # new bytes under the same names: a real commit
            index_ok(folder)
        return real_load(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(FaissIndex, "load", racing)
    index = reader.get_index(IMAGES)
    assert calls and reader.catalog.generation == 2
    assert index is not None and index.ntotal == 4
    reader.close()


# user_version before the identity migration (the one that creates `orphans`).
IDENTITY_MIGRATION = next(
    n for n, script in enumerate(MIGRATIONS) if "CREATE TABLE orphans" in script
)


def _old_catalog_with_duplicates(index_dir: Path) -> dict[str, int]:
    """Turn a fresh index back into the schema before the identity migration, then store one
    file twice, its vector in the faiss file too (as versions with defect 1 did); returns the
    ids involved."""
    db = sqlite3.connect(index_dir / "catalog.sqlite", isolation_level=None)
    keywords.register(db)
    db.executescript(
        "BEGIN; DROP INDEX items_file; DROP INDEX items_product_image; DROP INDEX items_text;"
        "DROP INDEX items_title; DROP TABLE orphans;"
        # the migrations after the identity one, undone too (products' image states)
        "DROP INDEX items_key; ALTER TABLE products DROP COLUMN images;"
        "DROP TABLE api_keys; DROP TABLE audit; DROP TABLE skipped_files; DROP TABLE delta_log;"
        f"PRAGMA user_version={IDENTITY_MIGRATION}; COMMIT;"
    )
    kept, path, key = db.execute("SELECT id, path, key FROM items ORDER BY id").fetchone()
    db.execute(
        "INSERT INTO items(collection, path, key, size, mtime_ns) "
        "SELECT collection, path, key, size, mtime_ns FROM items WHERE id=?",
        (kept,),
    )
    duplicate = db.execute("SELECT max(id) FROM items").fetchone()[0]
    generation = int(db.execute("SELECT value FROM meta WHERE key='generation'").fetchone()[0])
    blob = db.execute("SELECT vector FROM vectors WHERE key=?", (key,)).fetchone()[0]
    path = index_dir / f"images.{generation}.faiss"
    index = FaissIndex.load(path)
    vector = np.frombuffer(blob, dtype=np.float16).astype(np.float32)[None]
    index.add(vector, np.asarray([duplicate], dtype=np.int64))
    index.save(path)
    db.execute("UPDATE meta SET value=? WHERE key='sha256:images'", (file_sha256(path),))
    db.close()
    return {"kept": kept, "duplicate": duplicate}


def test_the_migration_merges_duplicates_and_the_next_commit_drops_their_vectors(
    tiny_model: str, tmp_path: Path, index_dir: Path
) -> None:
    folder = tmp_path / "photos"
    make_images(folder, 3)
    index_ok(folder, "--model", tiny_model)
    ids = _old_catalog_with_duplicates(index_dir)
    migrated = Catalog(index_dir / "catalog.sqlite")  # the migration runs on open
    assert migrated.count(IMAGES) == 3
    assert migrated.orphan_ids(IMAGES) == [ids["duplicate"]]
    assert migrated.get_item(ids["kept"]) is not None
    migrated.close()
    # Readers work meanwhile and never show the merged id.
    hits = json.loads(run_ok("query", "noise", "--json", "-k", "10"))["results"]
    assert len(hits) == 3 and ids["duplicate"] not in {hit["id"] for hit in hits}
    assert len({hit["path"] for hit in hits}) == 3
    # The next run commits (orphans wait) and leaves a clean index.
    index_ok(folder)
    with IndexStore.open(index_dir, readonly=True) as store:
        assert store.catalog.orphan_ids(IMAGES) == []
        assert store.get_index(IMAGES).ntotal == 3
    check_ok(index_dir)


def test_the_catalog_refuses_a_second_item_for_one_file(tmp_path: Path) -> None:
    catalog = Catalog(tmp_path / "catalog.sqlite")
    with catalog.transaction():
        catalog.add_item(IMAGES, "img:1", path="/photos/a.png")
        catalog.add_item(IMAGES, "img:1", path="/photos/a.png", product_id="SKU-1")  # products may
    with pytest.raises(sqlite3.IntegrityError), catalog.transaction():
        catalog.add_item(IMAGES, "img:2", path="/photos/a.png")
    catalog.close()


def test_check_finds_and_repair_merges_two_spellings_of_one_file(
    tiny_model: str, tmp_path: Path, index_dir: Path
) -> None:
    """Items stored under a spelling that is not the file's identity (a symlinked root, by
    versions before the rule) are problems for `check`, and `--repair` keeps one item per file."""
    real = make_images(tmp_path / "real", 2)
    (tmp_path / "alias").symlink_to(tmp_path / "real")
    index_ok(tmp_path / "real", "--model", tiny_model)
    store = IndexStore.open(index_dir)
    with store, Indexer(store) as indexer, indexer.change() as changes:
        # what the walk of versions before the rule stored for the alias spelling
        for item in list(store.catalog.iter_items(IMAGES)):
            alias = str(tmp_path / "alias" / Path(item.path or "").name)
            changes.add(IMAGES, item.key, path=alias, size=item.size, mtime_ns=item.mtime_ns)
    report = check_index(index_dir)
    kinds = [problem.kind for problem in report.problems]
    assert kinds == ["duplicate"], report.problems
    assert "2 files are indexed under more than one name" in report.problems[0].detail
    result = invoke("check", "--repair", "--index", index_dir, "--json")
    assert result.exit_code == 0, result.output
    check_ok(index_dir)
    assert sorted(paths_in(index_dir)) == [str(p) for p in real]
    with IndexStore.open(index_dir, readonly=True) as store:
        assert store.get_index(IMAGES).ntotal == 2
    vectors = IndexStore.open(index_dir, readonly=True).catalog.get_vectors(IMAGES, 32)[1]
    assert np.isfinite(vectors).all()
