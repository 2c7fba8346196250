"""Multilingual models across processes: the exported tokenizer and a cold text query run
without torch or transformers and answer as torch does; without the multilingual extra the
error names it and CLIP models still load. Models: tests/multilingual.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import open_clip
import pytest
from clirun import run_ok, run_subprocess
from multilingual import (
    QUERIES,
    TEXTS,
    WRITERS,
    exported_tokenizer,
)
from testdata import make_images


def test_the_exported_tokenizer_runs_without_torch_or_transformers(
    multilingual_models: dict[str, str], tmp_path: Path
) -> None:
    model = multilingual_models["xlmr"]
    exported_tokenizer(model, tmp_path)
    script = (
        "import json, sys; from retrieval.embedders import hf_tokenizer; "
        f"ids = hf_tokenizer.load(__import__('pathlib').Path({str(tmp_path)!r}))(sys.argv[1:]); "
        "heavy = [m for m in ('torch', 'transformers', 'open_clip') if m in sys.modules]; "
        "print(json.dumps({'ids': ids.tolist(), 'heavy': heavy}))"
    )
    done = subprocess.run([sys.executable, "-c", script, *QUERIES], capture_output=True,
                          text=True, check=True, timeout=120)  # fmt: skip
    result = json.loads(done.stdout)
    assert result["heavy"] == []
    assert result["ids"] == open_clip.get_tokenizer(model)(QUERIES).tolist()


BLOCKED = """
import sys
sys.modules["transformers"] = None  # as if the multilingual extra were not installed
from retrieval.cli import app
app(sys.argv[1:])
"""


def index_without_transformers(folder: Path, model: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-c", BLOCKED, "index", str(folder), "--model", model, "-q"]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)


def test_without_the_extra_the_error_names_it_and_clip_models_still_work(
    multilingual_models: dict[str, str], tiny_model: str, tmp_path: Path
) -> None:
    make_images(tmp_path / "photos", 2)
    for model in multilingual_models.values():
        done = index_without_transformers(tmp_path / "photos", model)
        assert done.returncode != 0
        assert "pip install 'mmsearch[multilingual]'" in done.stderr
        assert "transformers" in done.stderr and "Traceback" not in done.stderr
    done = index_without_transformers(tmp_path / "photos", tiny_model)
    assert done.returncode == 0, done.stderr


PROBE = """
import json, sys
from retrieval.cli import app
try:
    app(sys.argv[1:], standalone_mode=False)
finally:
    heavy = sorted(m for m in ("torch", "open_clip", "transformers") if m in sys.modules)
    print(json.dumps({"heavy": heavy}), file=sys.stderr)
"""


@pytest.mark.runtime
@pytest.mark.parametrize("kind", list(WRITERS))
def test_multilingual_models_export_and_answer_cold_queries_without_torch(
    multilingual_models: dict[str, str], kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MMSEARCH_BACKEND")  # the default users get: the exported runtime
    make_images(tmp_path / "photos", 4)
    (tmp_path / "texts.txt").write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    texts = ("--texts", tmp_path / "texts.txt")
    model = ("--model", multilingual_models[kind])
    done = run_subprocess("index", tmp_path / "photos", *texts, *model, "-q", env=os.environ.copy())
    assert done.returncode == 0, done.stderr
    assert json.loads(run_ok("info", "--json"))["embedder"]["backend"] == "openvino"
    for query in QUERIES:
        args = ["query", query, "--target", "texts", "-k", "7", "--json"]
        command = [sys.executable, "-c", PROBE, *args]
        cold = subprocess.run(command, capture_output=True, text=True, timeout=300, check=True)
        assert json.loads(cold.stderr.strip().splitlines()[-1])["heavy"] == []
        full = json.loads(run_ok(*args, "--backend", "torch"))["results"]
        cold_hits = json.loads(cold.stdout)["results"]
        assert [h["id"] for h in cold_hits] == [h["id"] for h in full]
        for ours, theirs in zip(cold_hits, full, strict=True):
            assert abs(ours["score"] - theirs["score"]) < 1e-4
