"""`mmsearch check [--repair]` and the readers' own checks: each kind of corruption is detected,
reported with the command that fixes it, and repaired from the stored vectors where it can be;
no query answers from a damaged index."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from clirun import invoke, run_ok
from testdata import make_images

from retrieval.index import FaissIndex, exact_search
from retrieval.storage.integrity import check_index
from retrieval.storage.store import IndexStore


@pytest.fixture
def built(tiny_model: str, tmp_path: Path) -> Path:
    """A sound index over 12 images and 3 texts; returns its directory."""
    folder = tmp_path / "photos"
    make_images(folder, 12)
    texts = tmp_path / "texts.txt"
    texts.write_text("a red car\na blue sky\na green tree\n")
    run_ok("index", folder, "--texts", texts, "--model", tiny_model, "-q")
    return tmp_path / "indexes" / "default"


def _check(*args: object) -> tuple[int, dict]:
    result = invoke("check", "--json", *args)
    return result.exit_code, json.loads(result.stdout)


def _kinds(report: dict) -> list[str]:
    return [problem["kind"] for problem in report["problems"]]


def _query_matches_exact(directory: Path, folder: Path) -> None:
    """An image query's top hit is the image itself, and the ranking matches brute force over
    the stored vectors."""
    body = json.loads(run_ok("query", "--image", folder / "img_004.png", "-k", "12", "--json"))
    assert Path(body["results"][0]["path"]).name == "img_004.png"
    with IndexStore.open(directory, readonly=True) as store:
        ids, vectors = store.catalog.get_vectors("images", store.identity.dim)
        paths = {item.id: item.path for item in store.catalog.iter_items("images")}
    query = vectors[[paths[i].endswith("img_004.png") for i in ids]]
    _, top = exact_search(vectors, ids, query, 12)
    assert [Path(r["path"]).name for r in body["results"]] == [
        Path(paths[int(item_id)]).name for item_id in top[0]
    ]


def test_sound_index_checks_ok(built: Path) -> None:
    code, report = _check()
    assert code == 0 and report["ok"] and report["problems"] == []
    assert report["counts"] == {"images": 12, "texts": 3}


def _flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x40
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["truncate", "bitflip", "delete"])
def test_damaged_faiss_file_is_detected_refused_and_rebuilt(
    built: Path, tmp_path: Path, damage: str
) -> None:
    path = built / "images.1.faiss"
    size = path.stat().st_size
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[: size // 2])
    elif damage == "bitflip":
        _flip_byte(path, size // 2)  # inside the stored vectors: would load and answer wrongly
    else:
        path.unlink()
    code, report = _check()
    if damage == "delete":
        # A reader rebuilds a missing file in memory (the answer stays right); check flags it.
        assert _kinds(report) == ["faiss-missing"]
    else:
        assert _kinds(report) == ["faiss-checksum"]
        query = invoke("query", "--image", tmp_path / "photos" / "img_004.png", "--json")
        assert query.exit_code == 1 and query.stdout == ""
        assert "mmsearch check --repair" in query.stderr
    assert code == 1 and report["problems"][0]["repairable"]
    assert "mmsearch check --repair" in report["problems"][0]["fix"]

    code, repaired = _check("--repair")
    assert code == 0 and repaired["ok"], repaired
    assert repaired["generation"] == 2 and repaired["counts"] == {"images": 12, "texts": 3}
    assert sorted(p.name for p in built.glob("*.faiss")) == ["images.2.faiss", "texts.2.faiss"]
    _query_matches_exact(built, tmp_path / "photos")


def test_faiss_file_with_other_ids_is_detected(built: Path, tmp_path: Path) -> None:
    # A well-formed file whose checksum was re-recorded but whose ids disagree with the items.
    with IndexStore.open(built) as store:
        with store.catalog.transaction():
            store.catalog.set_meta("sha256:images", "")
        victim = next(store.catalog.iter_items("images"))
        with store.catalog.transaction():
            store.catalog.delete_items([victim.id])
            store.catalog.add_item(
                "images", victim.key, path=victim.path, size=victim.size, mtime_ns=victim.mtime_ns
            )
    code, report = _check()
    assert code == 1 and _kinds(report) == ["faiss-mismatch"]
    assert "1 items missing, 1 ids not in the catalog" in report["problems"][0]["detail"]
    code, repaired = _check("--repair")
    assert code == 0 and repaired["ok"]
    _query_matches_exact(built, tmp_path / "photos")


def test_hand_edited_manifest_is_refused_and_restored(built: Path, tmp_path: Path) -> None:
    manifest_path = built / "manifest.json"
    original = json.loads(manifest_path.read_text())
    edited = json.loads(manifest_path.read_text())
    edited["model"]["dim"] = 64
    manifest_path.write_text(json.dumps(edited))
    info = invoke("info")
    assert info.exit_code == 1 and "edited by hand" in info.stderr
    assert f"mmsearch check --repair --index {built}" in info.stderr
    code, report = _check()
    assert code == 1 and _kinds(report) == ["manifest"]
    assert "model" in report["problems"][0]["detail"]

    code, repaired = _check("--repair")
    assert code == 0 and repaired["ok"]
    assert json.loads(manifest_path.read_text()) == original
    _query_matches_exact(built, tmp_path / "photos")


def test_unparseable_manifest_is_restored(built: Path) -> None:
    (built / "manifest.json").write_text('{"format_version": 1, "mod')
    assert invoke("info").exit_code == 1
    code, repaired = _check("--repair")
    assert code == 0 and repaired["ok"] and "restored" in repaired["repaired"][0]
    assert invoke("info").exit_code == 0


def test_missing_vector_row_is_reported_and_reembedded_by_index(
    built: Path, tmp_path: Path
) -> None:
    db = sqlite3.connect(built / "catalog.sqlite")
    key, path = db.execute(
        "SELECT key, path FROM items WHERE collection='images' LIMIT 1"
    ).fetchone()
    db.execute("DELETE FROM vectors WHERE key=?", (key,))
    db.commit()
    db.close()
    code, report = _check()
    assert code == 1 and _kinds(report) == ["vector-missing"]
    problem = report["problems"][0]
    assert not problem["repairable"] and problem["fix"].startswith("mmsearch index FOLDERS")
    assert path in problem["detail"]
    # --repair does not drop the item to make the report clean.
    code, after = _check("--repair")
    assert code == 1 and _kinds(after) == ["vector-missing"] and after["counts"]["images"] == 12
    # Re-running index re-embeds it although its file is unchanged.
    report = json.loads(run_ok("index", tmp_path / "photos", "-q", "--json"))
    assert report["embedded"] == 1
    code, fixed = _check()
    assert code == 0 and fixed["ok"] and fixed["counts"]["images"] == 12
    _query_matches_exact(built, tmp_path / "photos")


def test_damaged_sqlite_is_detected_and_reported_with_the_fix(built: Path) -> None:
    db_path = built / "catalog.sqlite"
    db = sqlite3.connect(db_path)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    data = bytearray(db_path.read_bytes())
    page = 4096
    for offset in range(page, len(data), page):  # garble the cells at the end of each page
        data[offset + page - 300 : offset + page] = b"\xa5" * 300
    db_path.write_bytes(bytes(data))
    code, report = _check()
    assert code == 1 and _kinds(report) == ["sqlite"]
    assert "mmsearch index FOLDERS --index" in report["problems"][0]["fix"]
    query = invoke("query", "a red car")
    assert query.exit_code == 1 and query.stderr.startswith("error:")
    assert "mmsearch check" in query.stderr


def test_stray_files_are_reported_and_removed(built: Path) -> None:
    (built / "images.7.faiss").write_bytes(b"leftover")
    (built / ".images.2.faiss.abc.tmp").write_bytes(b"half")
    code, report = _check()
    assert code == 1 and _kinds(report) == ["stray-file", "stray-file"]
    code, repaired = _check("--repair")
    assert code == 0 and repaired["ok"]
    assert sorted(p.name for p in built.iterdir() if p.name.endswith(("faiss", "tmp"))) == [
        "images.1.faiss",
        "texts.1.faiss",
    ]


def test_check_reads_the_index_without_writing(built: Path) -> None:
    def state() -> dict[str, int]:  # a reader of a WAL database may create its -wal/-shm
        return {p.name: p.stat().st_mtime_ns for p in built.iterdir() if "sqlite-" not in p.name}

    before = state()
    assert check_index(built).ok
    assert state() == before


@pytest.mark.parametrize("index_type", ["flat", "IVF4,Flat", "hnsw", "IVF4,PQ4x4,RFlat"])
def test_faiss_index_lists_its_ids_for_every_index_type(index_type: str) -> None:
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((300, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = rng.choice(10_000, size=300, replace=False).astype(np.int64)
    index = FaissIndex.build(vectors, ids, index_type)
    assert np.array_equal(index.ids(), np.sort(ids))
    if index.supports_remove:
        index.remove(ids[:10])
    expected = np.sort(ids[10:]) if index.supports_remove else np.sort(ids)
    assert np.array_equal(index.ids(), expected)
