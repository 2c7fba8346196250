"""Hostile image folders: the zoo plus deep, unicode, newline and non-UTF-8 names, links out of
the folder and at FIFOs and /dev/zero, a real PNG bomb, and files that vanish or change while
the run reads them. No crash, no hang, every bad file reported exactly once."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import pytest
from clirun import invoke, run_subprocess
from hostilefolder import make_hostile_folder
from imagezoo import IGNORED
from testdata import make_images

import retrieval.ingest.sync
from retrieval.storage.store import IndexStore


def test_hostile_folder_indexes_the_good_and_reports_each_bad_file_once(
    tiny_model: str, tmp_path: Path
) -> None:
    root = tmp_path / "hostile"
    expected = make_hostile_folder(root, tmp_path / "outside")
    # A subprocess with a timeout: a FIFO opened by mistake would block for ever.
    result = run_subprocess("index", root, "--model", tiny_model, "-q", "--json", timeout=240)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    skipped = Counter(os.path.relpath(s["path"], root) for s in report["skipped"])
    assert all(count == 1 for count in skipped.values()), skipped
    reasons = {os.path.relpath(s["path"], root): s["reason"] for s in report["skipped"]}
    want = {name: why for name, why in expected.items() if why not in (None, IGNORED)}
    bad_name = next(name for name, why in want.items() if why == "bad-name")
    # A name that is not UTF-8 is reported with its undecodable bytes escaped as \xNN, never
    # replaced by '?' (a lossy name could be another file's: issue 19, defect 4).
    reasons[bad_name] = reasons.pop(os.fsencode(bad_name).decode("utf-8", "backslashreplace"))
    assert reasons == want
    with IndexStore.open(tmp_path / "indexes" / "default", readonly=True) as store:
        indexed = sorted(os.path.relpath(i.path, root) for i in store.catalog.iter_items("images"))
    assert indexed == sorted(name for name, why in expected.items() if why is None)
    # Each skip is also one `skipped PATH: reason` line on stderr.
    assert sum(line.startswith("skipped ") for line in result.stderr.splitlines()) == len(want)


def test_files_that_vanish_or_change_while_read_are_skipped_once(
    tiny_model: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "photos"
    make_images(folder, 6)
    real_file_key = retrieval.ingest.sync.file_key

    def file_key_then_tamper(path: Path) -> str:
        key = real_file_key(path)
        # Between hashing and decoding: one file is deleted, one becomes a FIFO, one is cut.
        if path.name == "img_001.png":
            path.unlink()
        elif path.name == "img_002.png":
            path.unlink()
            os.mkfifo(path)
        elif path.name == "img_003.png":
            path.write_bytes(path.read_bytes()[:100])
        return key

    monkeypatch.setattr(retrieval.ingest.sync, "file_key", file_key_then_tamper)
    result = invoke("index", folder, "--model", tiny_model, "-q", "--json", "--workers", "0")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    reasons = {Path(s["path"]).name: s["reason"] for s in report["skipped"]}
    assert len(report["skipped"]) == 3
    assert reasons == {"img_001.png": "unreadable", "img_002.png": "unreadable",
                       "img_003.png": "truncated"}  # fmt: skip
    assert report["indexed"] == 3
    monkeypatch.setattr(retrieval.ingest.sync, "file_key", real_file_key)
    # The next run sees the FIFO for what it is and the cut file as a broken image.
    again = json.loads(invoke("index", folder, "-q", "--json").stdout)
    assert {Path(s["path"]).name: s["reason"] for s in again["skipped"]} == {
        "img_002.png": "not-a-file",
        "img_003.png": "truncated",
    }
