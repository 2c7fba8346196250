"""Cold text queries: a fresh process answers `mmsearch query TEXT` from the cached exported text
tower and the torch-free tokenizer, without importing torch or open_clip, with the same hits as
the full model; anything missing falls back to loading the model."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from clirun import run_ok, run_subprocess

pytestmark = pytest.mark.runtime


@pytest.fixture(autouse=True)
def default_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests are about `--backend auto`, the default users get."""
    monkeypatch.delenv("MMSEARCH_BACKEND")


# Runs the CLI in a fresh interpreter and reports, after the query, which heavy modules loaded.
PROBE = """
import json, sys
from retrieval.cli import app
try:
    app(sys.argv[1:], standalone_mode=False)
finally:
    heavy = sorted(m for m in ("torch", "open_clip", "torchvision") if m in sys.modules)
    print(json.dumps({"heavy": heavy}), file=sys.stderr)
"""


def probe(*args: str) -> tuple[dict, list[str]]:
    """(query JSON, heavy modules imported) of one fresh-process CLI run."""
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        timeout=300,
        check=True,
    )
    heavy = json.loads(done.stderr.strip().splitlines()[-1])["heavy"]
    return json.loads(done.stdout), heavy


def index_in_subprocess(folder: Path, model: str) -> None:
    """Index with the default backend in a child: OpenVINO stays out of the pytest process
    (see conftest.py)."""
    done = run_subprocess("index", folder, "--model", model, "-q", env=os.environ.copy())
    assert done.returncode == 0, done.stderr


def test_cold_text_query_skips_torch_and_matches_the_full_model(
    image_folder: Path, tiny_model: str
) -> None:
    index_in_subprocess(image_folder, tiny_model)
    cold, heavy = probe("query", "a red square", "--json", "-k", "5")
    assert heavy == []
    full = json.loads(run_ok("query", "a red square", "--json", "-k", "5", "--backend", "torch"))
    assert [hit["id"] for hit in cold["results"]] == [hit["id"] for hit in full["results"]]
    for ours, theirs in zip(cold["results"], full["results"], strict=True):
        assert abs(ours["score"] - theirs["score"]) < 1e-4


def test_cold_query_loads_the_model_when_the_export_cache_is_gone(
    image_folder: Path, tiny_model: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    index_in_subprocess(image_folder, tiny_model)
    monkeypatch.setenv("MMSEARCH_EXPORT_CACHE", str(tmp_path / "no-exports"))
    result, heavy = probe("query", "a red square", "--json", "-k", "3")
    assert "torch" in heavy
    assert len(result["results"]) == 3


def test_image_query_loads_the_model_when_the_image_graph_is_damaged(
    image_folder: Path, tiny_model: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    index_in_subprocess(image_folder, tiny_model)
    copy = tmp_path / "exports"  # the session's cache stays intact for the other tests
    shutil.copytree(os.environ["MMSEARCH_EXPORT_CACHE"], copy)
    monkeypatch.setenv("MMSEARCH_EXPORT_CACHE", str(copy))
    for weights in copy.glob("*/image.bin"):
        data = bytearray(weights.read_bytes())
        data[len(data) // 2] ^= 0xFF  # same size: only the checksum can tell
        weights.write_bytes(bytes(data))
    image = sorted(image_folder.iterdir())[0]
    result, heavy = probe("query", "--image", str(image), "--json", "-k", "1")
    assert "torch" in heavy
    assert Path(result["results"][0]["path"]).resolve() == image.resolve()


def test_rerun_with_model_again_does_not_import_torch(image_folder: Path, tiny_model: str) -> None:
    index_in_subprocess(image_folder, tiny_model)
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            PROBE,
            "index",
            str(image_folder),
            "--model",
            tiny_model,
            "-q",
        ],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        timeout=300,
        check=True,
    )
    assert json.loads(done.stderr.strip().splitlines()[-1])["heavy"] == []
    assert "unchanged 12" in done.stdout
