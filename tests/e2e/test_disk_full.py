"""Indexing into a filesystem that is too small (a tmpfs mounted by the test): one clear error
naming the directory and the space needed, exit code 74, and the previous index intact."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from clirun import invoke, run_ok
from testdata import make_images

import retrieval.ingest.sync
from retrieval.errors import DiskFullError, StorageIOError
from retrieval.sqlite_errors import classify_sqlite_error
from retrieval.storage.integrity import check_index
from retrieval.storage.space import check_free_space

# Room for the first index of 12 images plus about 1.3 MB: less than a run adding 1,000 images
# is estimated to need (retrieval/storage/space.py), more than one adding 20.
TMPFS_SIZE = "1700k"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "small"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE}", "tmpfs", str(mount)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _assert_previous_index_intact(directory: Path, folder: Path) -> None:
    report = check_index(directory)
    assert report.ok and report.counts["images"] == 12, report.problems
    body = json.loads(
        run_ok("query", "--image", folder / "img_003.png", "--index", directory, "--json")
    )
    assert Path(body["results"][0]["path"]).name == "img_003.png"
    assert {Path(r["path"]).parent for r in body["results"]} == {folder}


def test_run_too_large_for_the_disk_is_refused_before_any_work(
    tiny_model: str, tmp_path: Path, small_disk: Path
) -> None:
    directory = small_disk / "index"
    folder = tmp_path / "photos"
    make_images(folder, 12)
    run_ok("index", folder, "--model", tiny_model, "--index", directory, "-q")
    before = sorted(p.name for p in directory.iterdir())
    make_images(tmp_path / "more", 1000, seed=3, size=(8, 8))
    result = invoke("index", folder, tmp_path / "more", "--index", directory, "-q")
    assert result.exit_code == 74
    line = result.stderr.strip()
    assert line.count("\n") == 0 and line.startswith(f"error: not enough disk space in {directory}")
    assert "this run needs about" in line and "MB are free" in line
    assert sorted(p.name for p in directory.iterdir()) == before
    _assert_previous_index_intact(directory, folder)


def test_disk_filling_up_during_the_run_fails_cleanly(
    tiny_model: str, tmp_path: Path, small_disk: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = small_disk / "index"
    folder = tmp_path / "photos"
    make_images(folder, 12)
    run_ok("index", folder, "--model", tiny_model, "--index", directory, "-q")
    make_images(folder / "new", 20, seed=4)
    filler = small_disk / "filler"

    def fill_after_check(where: Path, needed: int) -> None:
        # Another process takes all the space right after the run's own check passed.
        # Unbuffered: a buffered file would raise ENOSPC again from close() when a partial
        # write left bytes in its buffer.
        with open(filler, "wb", buffering=0) as handle:
            try:
                while True:
                    handle.write(b"\0" * 65536)
            except OSError:
                pass

    monkeypatch.setattr(retrieval.ingest.sync, "check_free_space", fill_after_check)
    result = invoke("index", folder, "--index", directory, "-q")
    assert result.exit_code == 74, result.output
    assert result.stderr.startswith(f"error: not enough disk space in {directory}")
    _assert_previous_index_intact(directory, folder)

    filler.unlink()
    monkeypatch.setattr(retrieval.ingest.sync, "check_free_space", check_free_space)
    report = json.loads(run_ok("index", folder, "--index", directory, "-q", "--json"))
    assert report["indexed"] == 20
    assert check_index(directory).ok


def _fill(disk: Path) -> Path:
    """Take every free byte of `disk` (unbuffered: see above); the filler's path."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as handle:
        try:
            while True:
                handle.write(b"\0" * 65536)
        except OSError:
            pass
    return filler


def test_sqlite_io_error_on_a_full_disk_is_a_full_disk(small_disk: Path) -> None:
    path = small_disk / "catalog.sqlite"
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE t(x)")
    db.close()  # the last connection removes the WAL index file, catalog.sqlite-shm
    filler = _fill(small_disk)
    db = sqlite3.connect(path, isolation_level=None)
    with pytest.raises(sqlite3.OperationalError) as caught:
        db.execute("SELECT * FROM t")  # a reader must recreate the WAL index: no room
    db.close()
    err = caught.value
    assert err.sqlite_errorname == "SQLITE_IOERR_SHMSIZE" and str(err) == "disk I/O error"
    described = classify_sqlite_error(err, small_disk)
    assert type(described) is DiskFullError
    assert str(described).startswith(f"not enough disk space in {small_disk}: SQLite could not")
    # The same error once the disk has room again (as when it is failing, not full).
    filler.unlink()
    described = classify_sqlite_error(err, small_disk)
    assert type(described) is StorageIOError
    assert str(described).startswith(f"I/O error on the index catalog in {small_disk}")
    assert "MB free" in str(described) and f"mmsearch check --index {small_disk}" in str(described)


def test_commands_on_a_full_disk_say_so_instead_of_damage(
    tiny_model: str, tmp_path: Path, small_disk: Path
) -> None:
    directory = small_disk / "index"
    folder = tmp_path / "photos"
    make_images(folder, 12)
    run_ok("index", folder, "--model", tiny_model, "--index", directory, "-q")
    make_images(folder / "new", 2, seed=4)
    filler = _fill(small_disk)
    for command in (("index", folder), ("check",), ("query", "a red car")):
        result = invoke(*command, "--index", directory)
        assert result.exit_code == 74, (command, result.output)
        assert "damaged" not in result.stderr and "disk" in result.stderr, command
    filler.unlink()
    _assert_previous_index_intact(directory, folder)
    report = json.loads(run_ok("index", folder, "--index", directory, "-q", "--json"))
    assert report["indexed"] == 2
