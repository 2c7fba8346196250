"""Readers while `mmsearch index` writes the same store: CLI queries and a long-lived HTTP app
answer without errors from the old or the new generation, never a mix; a second writer is
refused with exit code 75; the app serves the new generation without a restart."""

from __future__ import annotations

import fcntl
import json
import subprocess
import sys
import time
from pathlib import Path

from clirun import invoke
from fastapi.testclient import TestClient
from httpkit import open_app
from testdata import make_images


def _wait_for_writer_lock(lock: Path, writer: subprocess.Popen[str]) -> None:
    """Return once `writer` holds the index's writer lock (it imports torch first)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and writer.poll() is None:
        with open(lock, "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return
            fcntl.flock(handle, fcntl.LOCK_UN)
        time.sleep(0.05)
    raise AssertionError("the writer never took the lock")


def _result_paths(stdout: str) -> list[str]:
    return [r["path"] for r in json.loads(stdout)["results"]]


def test_queries_answer_from_one_generation_while_index_updates(
    tiny_model: str, tmp_path: Path
) -> None:
    folder = tmp_path / "photos"
    old = {str(p) for p in make_images(folder, 12)}
    directory = tmp_path / "indexes" / "default"
    assert invoke("index", folder, "--model", tiny_model, "-q").exit_code == 0
    new = old | {str(p) for p in make_images(folder / "more", 60, seed=5, size=(64, 64))}
    probe = folder / "img_005.png"

    with open_app(directory) as (app, _), TestClient(app) as client:
        before = client.get("/search", params={"q": "a photo", "k": 200}).json()["results"]
        assert {r["path"] for r in before} == old
        writer = subprocess.Popen(
            [sys.executable, "-m", "retrieval", "index", str(folder), "-q", "--batch-size", "1",
             "--workers", "0"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        _wait_for_writer_lock(directory / ".lock", writer)
        second = invoke("index", folder, "-q")
        assert writer.poll() is None, "the writer ended before the second one started"
        assert second.exit_code == 75, second.output
        assert "another writer" in second.stderr
        answered, generations = 0, set()
        deadline = time.monotonic() + 300
        while writer.poll() is None and time.monotonic() < deadline:
            result = invoke("query", "--image", probe, "-k", "200", "--json")
            assert result.exit_code == 0, result.output
            paths = _result_paths(result.stdout)
            assert paths[0] == str(probe)
            # All of one generation: exactly the old 12 or the new 72 items.
            assert set(paths) in (old, new)
            generations.add(len(paths))
            served = client.get("/search", params={"q": "a photo", "k": 200})
            assert served.status_code == 200
            assert {r["path"] for r in served.json()["results"]} in (old, new)
            answered += 1
        assert writer.wait(timeout=60) == 0, writer.stderr.read() if writer.stderr else ""
        assert answered >= 2
        # The same app, never restarted, now answers from the new generation.
        after = client.get("/search", params={"q": "a photo", "k": 200}).json()["results"]
        assert {r["path"] for r in after} == new
    final = invoke("query", "--image", probe, "-k", "200", "--json")
    assert set(_result_paths(final.stdout)) == new
    assert generations <= {12, 72}
