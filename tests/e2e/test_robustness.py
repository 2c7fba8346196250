"""Broken inputs, killed runs and the real console script."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from clirun import invoke, run_subprocess
from imagezoo import IGNORED, make_image_zoo
from testdata import make_images, shared_images_or_skip

from retrieval.storage.store import IndexStore

REPO = Path(__file__).resolve().parents[2]


def test_broken_and_unusual_files_are_skipped_or_indexed(tiny_model: str, tmp_path: Path) -> None:
    zoo = tmp_path / "zoo"
    expected = make_image_zoo(zoo)
    result = invoke("index", zoo, "--model", tiny_model, "-q", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    skipped = {Path(s["path"]).name: s["reason"] for s in report["skipped"]}
    want_skipped = {
        name: reason for name, reason in expected.items() if reason not in (None, IGNORED)
    }
    assert skipped == want_skipped
    store = IndexStore.open(tmp_path / "indexes" / "default", readonly=True)
    indexed = {Path(item.path).name for item in store.catalog.iter_items("images")}
    assert indexed == {name for name, reason in expected.items() if reason is None}
    for name, reason in want_skipped.items():
        assert f"{name}: {reason}" in result.stderr  # each skip is reported on stderr
    summary = invoke("index", zoo, "-q").stdout
    assert f"skipped {len(want_skipped)} (" in summary and "unchanged" in summary


def test_killed_run_leaves_old_index_usable_and_next_run_resumes(
    tiny_model: str, tmp_path: Path
) -> None:
    folder = tmp_path / "photos"
    make_images(folder, 12)
    directory = tmp_path / "indexes" / "default"
    first = run_subprocess("index", str(folder), "--model", tiny_model, "-q", "--json")
    assert first.returncode == 0, first.stderr
    make_images(folder / "more", 400, seed=1, size=(160, 160))

    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "retrieval",
            "index",
            str(folder),
            "-q",
            "--batch-size",
            "1",
            "--workers",
            "0",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    db = sqlite3.connect(directory / "catalog.sqlite")
    while time.monotonic() < deadline:
        if db.execute("SELECT COUNT(*) FROM vectors").fetchone()[0] >= 12 + 20:
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the run finished before it could be killed; make it longer"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    db.close()

    # The old index is intact: same 12 items, and queries work.
    store = IndexStore.open(directory, readonly=True)
    assert store.catalog.count("images") == 12
    store.close()
    hit = run_subprocess("query", "--image", str(folder / "img_005.png"), "-k", "1", "--json")
    assert hit.returncode == 0, hit.stderr
    assert Path(json.loads(hit.stdout)["results"][0]["path"]).name == "img_005.png"

    # The next run finishes the job without redoing the batches the killed run committed.
    second = run_subprocess("index", str(folder), "-q", "--json")
    assert second.returncode == 0, second.stderr
    report = json.loads(second.stdout)
    assert report["indexed"] == 400
    assert report["reused"] >= 20 and report["embedded"] == 400 - report["reused"]
    assert not list(directory.glob(".*.tmp"))
    assert sorted(p.name for p in directory.glob("*.faiss")) == ["images.2.faiss"]


def test_console_script_indexes_and_queries_real_images(tiny_model: str, tmp_path: Path) -> None:
    paths = shared_images_or_skip(20)
    folder = tmp_path / "real"
    folder.mkdir()
    for path in paths:
        (folder / path.name).symlink_to(path)
    script = Path(sys.executable).with_name("mmsearch")
    if not script.exists():
        pytest.skip("the mmsearch console script is not installed (pip install -e .)")
    index = subprocess.run(
        [str(script), "index", str(folder), "--model", tiny_model],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert index.returncode == 0, index.stderr
    assert index.stdout.startswith("indexed 20 (embedded 20, reused 0)")
    query = subprocess.run(
        [str(script), "query", "a photo of a goldfish", "--json", "-k", "5"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert query.returncode == 0, query.stderr
    body = json.loads(query.stdout)  # stdout holds the JSON and nothing else
    assert len(body["results"]) == 5
    assert all(Path(r["path"]).parent == folder for r in body["results"])


def test_second_writer_is_refused_while_one_runs(
    tiny_model: str, image_folder: Path, tmp_path: Path
) -> None:
    result = invoke("index", image_folder, "--model", tiny_model, "-q")
    assert result.exit_code == 0
    store = IndexStore.open(tmp_path / "indexes" / "default")
    with store.writer_lock():
        busy = invoke("index", image_folder, "-q")
    assert busy.exit_code == 75 and "another writer" in busy.stderr
