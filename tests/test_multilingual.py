"""Multilingual open_clip models end to end, offline: tiny XLM-R- and NLLB-style models (Hugging
Face text towers and tokenizers) and a tiny SigLIP-i18n-style model (sentencepiece vocabulary)
as `local-dir:` folders. The torch-free tokenizer equals open_clip's ids on thousands of strings in
many scripts; index, query (warm, and cold without torch), serve rank as open_clip does; a
missing extra is named."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from clirun import json_lines, run_ok, run_subprocess
from fastapi.testclient import TestClient
from httpkit import open_app
from multilingual import (
    random_texts,
    write_tiny_nllb_model,
    write_tiny_siglip_i18n_model,
    write_tiny_xlmr_model,
)
from testdata import make_images

from retrieval.embedders import hf_tokenizer
from retrieval.embedders.tokenizer import uses_hf_tokenizer

TEXTS = ["一只猫在沙发上睡觉", "a cat sleeping on a sofa", "红色真丝连衣裙", "a red silk dress",
         "東京タワーの夜景", "Кошка спит на диване", "소파에서 자는 고양이"]  # fmt: skip
QUERIES = ["猫在沙发上", "a red dress", "夜景", "кошка", "🐱 고양이"]
WRITERS = {
    "xlmr": write_tiny_xlmr_model,
    "nllb": write_tiny_nllb_model,
    "siglip": write_tiny_siglip_i18n_model,
}


@pytest.fixture(scope="session")
def multilingual_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("multilingual")
    return {kind: f"local-dir:{write(root / kind)}" for kind, write in WRITERS.items()}


def exported_tokenizer(model: str, folder: Path) -> hf_tokenizer.HfTokenizer:
    spec = hf_tokenizer.capture(open_clip.get_tokenizer(model))
    assert spec is not None
    hf_tokenizer.save(spec, folder)
    loaded = hf_tokenizer.load(folder)
    assert loaded is not None
    return loaded


@pytest.mark.parametrize("kind", list(WRITERS))
def test_exported_tokenizer_equals_open_clip_in_many_scripts(
    multilingual_models: dict[str, str], kind: str, tmp_path: Path
) -> None:
    model = multilingual_models[kind]
    theirs = open_clip.get_tokenizer(model)
    ours = exported_tokenizer(model, tmp_path)
    texts = random_texts(3000)
    assert ours.context_length == theirs.context_length
    got, want = ours(texts), theirs(texts).numpy()
    differing = [texts[row] for row in range(len(texts)) if not np.array_equal(got[row], want[row])]
    assert differing == []
    assert (want != want[:, -1:]).any()  # long texts filled the context, short ones were padded
    for length in (5, 100):
        np.testing.assert_array_equal(
            ours(texts[:300], context_length=length), theirs(texts[:300], length).numpy()
        )


def test_open_clips_ordinary_tokenizer_exports_nothing(tiny_model: str) -> None:
    assert hf_tokenizer.capture(open_clip.get_tokenizer(tiny_model)) is None


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


def open_clip_ranking(model: str, query: str, texts: list[str]) -> list[str]:
    """The texts by cosine with the query, as open_clip itself embeds them (the oracle)."""
    net = open_clip.create_model_and_transforms(model)[0].eval()
    tokenizer = open_clip.get_tokenizer(model)
    with torch.no_grad():
        vectors = torch.nn.functional.normalize(net.encode_text(tokenizer([query, *texts])), dim=-1)
    scores = (vectors[1:] @ vectors[0]).numpy()
    return [texts[i] for i in np.argsort(-scores, kind="stable")]


@pytest.fixture(scope="module")
def xlmr_index(
    multilingual_models: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    root = tmp_path_factory.mktemp("xlmr_index")
    make_images(root / "photos", 6)
    (root / "texts.txt").write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    run_ok("index", root / "photos", "--texts", root / "texts.txt", "--model",
           multilingual_models["xlmr"], "--index", root / "index", "-q")  # fmt: skip
    return root / "index"


def test_a_multilingual_model_indexes_and_ranks_queries_as_open_clip_does(
    multilingual_models: dict[str, str], xlmr_index: Path
) -> None:
    model = multilingual_models["xlmr"]
    for query in QUERIES:
        hits = json_lines("query", query, "--target", "texts", "-k", "7", "--json",
                          "--index", xlmr_index)[0]["results"]  # fmt: skip
        assert [hit["text"] for hit in hits] == open_clip_ranking(model, query, TEXTS)
    images = json_lines("query", "猫", "-k", "3", "--json", "--index", xlmr_index)[0]
    assert len(images["results"]) == 3


def test_serve_answers_chinese_queries_like_the_cli(xlmr_index: Path) -> None:
    with open_app(xlmr_index) as (app, _), TestClient(app) as client:
        for query in QUERIES[:3]:
            got = client.get("/search", params={"q": query, "target": "texts", "k": 4}).json()
            want = json_lines("query", query, "--target", "texts", "-k", "4", "--json",
                              "--index", xlmr_index)[0]  # fmt: skip
            assert got["results"] == want["results"]


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


def test_which_models_need_the_multilingual_extra(
    multilingual_models: dict[str, str], tiny_model: str
) -> None:
    for name in ["xlm-roberta-base-ViT-B-32", "nllb-clip-base", "ViT-B-16-SigLIP-i18n-256",
                 "ViT-B-16-SigLIP", *multilingual_models.values()]:  # fmt: skip
        assert uses_hf_tokenizer(name), name
    for name in ["ViT-B-32", tiny_model, "hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K"]:
        assert not uses_hf_tokenizer(name), name  # the hub one: not cached, so not known


# Runs the CLI in a fresh interpreter and reports which heavy modules loaded (test_cold_query).
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
