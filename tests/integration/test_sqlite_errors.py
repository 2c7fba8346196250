"""SQLite's errors said as what they are (retrieval/sqlite_errors.py), each produced by a real
SQLite situation: a damaged file and a foreign one are damage (`mmsearch check`), a write lock
held by another connection is busy (exit 75, HTTP 503 with Retry-After), a full database is a
full disk, a folder that is not there cannot be opened. The full and failing disk on a real
tmpfs are in test_disk_full.py."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from clirun import invoke
from fastapi import FastAPI
from fastapi.testclient import TestClient
from testdata import make_images

from retrieval.errors import DiskFullError, IndexBusyError, IndexCorruptError, StorageIOError
from retrieval.http.errors import install_error_handlers
from retrieval.sqlite_errors import classify_sqlite_error


def _raised(action: Callable[[], object]) -> sqlite3.Error:
    with pytest.raises(sqlite3.Error) as caught:
        action()
    return caught.value


def _make_db(path: Path, rows: int = 0) -> None:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE t(x)")
    db.execute(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?) "
        "INSERT INTO t SELECT randomblob(3000) FROM n",
        (rows,),
    )
    db.close()  # the last connection checkpoints: every row is in the main file now


@pytest.fixture
def locked(tmp_path: Path) -> Iterator[Path]:
    """A database whose write lock another connection holds (as a `sqlite3` shell could)."""
    path = tmp_path / "locked.sqlite"
    _make_db(path)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    yield path
    holder.execute("ROLLBACK")
    holder.close()


def test_damaged_pages_are_damage_with_the_check_command(tmp_path: Path) -> None:
    path = tmp_path / "catalog.sqlite"
    _make_db(path, rows=20)
    data = bytearray(path.read_bytes())
    data[4096 : 4096 + 64] = b"\xff" * 64  # the header of the table's first page
    path.write_bytes(bytes(data))
    db = sqlite3.connect(path)
    err = _raised(lambda: db.execute("SELECT sum(length(x)) FROM t").fetchall())
    assert err.sqlite_errorname == "SQLITE_CORRUPT"
    described = classify_sqlite_error(err, tmp_path)
    assert type(described) is IndexCorruptError
    assert str(described).startswith(f"the index catalog in {tmp_path} is damaged")
    assert f"mmsearch check --index {tmp_path}" in str(described)


def test_a_file_that_is_not_a_database_is_damage(tmp_path: Path) -> None:
    path = tmp_path / "catalog.sqlite"
    path.write_bytes(b"this is not a database " * 200)
    db = sqlite3.connect(path)
    err = _raised(lambda: db.execute("SELECT * FROM sqlite_master").fetchall())
    assert err.sqlite_errorname == "SQLITE_NOTADB"
    assert type(classify_sqlite_error(err, tmp_path)) is IndexCorruptError


def test_a_write_lock_held_elsewhere_is_busy_not_damage(locked: Path) -> None:
    db = sqlite3.connect(locked, isolation_level=None, timeout=0)
    err = _raised(lambda: db.execute("BEGIN IMMEDIATE"))
    assert err.sqlite_errorname == "SQLITE_BUSY"
    described = classify_sqlite_error(err, locked.parent)
    assert type(described) is IndexBusyError
    assert f"the index catalog in {locked.parent} is locked by another process" in str(described)
    assert "damaged" not in str(described)


def test_a_full_database_is_a_full_disk(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "catalog.sqlite")
    db.execute("CREATE TABLE t(x)")
    db.execute("PRAGMA max_page_count = 2")  # SQLite's own way to run out of room
    err = _raised(lambda: db.execute("INSERT INTO t VALUES (randomblob(100000))"))
    assert err.sqlite_errorname == "SQLITE_FULL"
    described = classify_sqlite_error(err)
    assert type(described) is DiskFullError
    assert "is full" in str(described) and "free some space" in str(described)


def test_a_folder_that_is_not_there_cannot_be_opened(tmp_path: Path) -> None:
    missing = tmp_path / "gone"
    err = _raised(lambda: sqlite3.connect(missing / "catalog.sqlite"))
    assert err.sqlite_errorname == "SQLITE_CANTOPEN"
    described = classify_sqlite_error(err, missing)
    assert type(described) is StorageIOError
    assert f"cannot open or write the index catalog in {missing}" in str(described)


def test_index_run_meeting_a_locked_catalog_exits_75_naming_the_index(
    tiny_model: str, tmp_path: Path
) -> None:
    folder = tmp_path / "photos"
    make_images(folder, 4)
    directory = tmp_path / "index"
    assert invoke("index", folder, "--model", tiny_model, "--index", directory, "-q").exit_code == 0
    make_images(folder / "more", 2, seed=7)
    holder = sqlite3.connect(directory / "catalog.sqlite", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # e.g. a `sqlite3` shell in the middle of an edit
    try:
        result = invoke("index", folder, "--index", directory, "-q")  # waits SQLite's 5 s
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert result.exit_code == 75, result.output
    assert result.stderr.startswith(
        f"error: the index catalog in {directory} is locked by another process (database is "
        "locked, SQLITE_BUSY)"
    )
    rerun = invoke("index", folder, "--index", directory, "-q", "--json")
    assert rerun.exit_code == 0, rerun.output


def test_http_answers_a_locked_catalog_with_503_and_retry_after(locked: Path) -> None:
    app = FastAPI()
    install_error_handlers(app, locked.parent)

    @app.get("/write")
    def write() -> None:
        sqlite3.connect(locked, isolation_level=None, timeout=0).execute("BEGIN IMMEDIATE")

    with TestClient(app) as client:
        answer = client.get("/write")
    assert answer.status_code == 503 and answer.headers["Retry-After"] == "5"
    assert answer.json()["error"] == "index_busy"
    assert "locked by another process" in answer.json()["message"]
