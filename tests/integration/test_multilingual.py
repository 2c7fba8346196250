"""Multilingual open_clip models in process, offline: tiny XLM-R- and NLLB-style models (Hugging
Face text towers and tokenizers) and a tiny SigLIP-i18n-style model (sentencepiece vocabulary)
as `local-dir:` folders (tests/multilingual.py). The exported tokenizer equals open_clip's ids on
thousands of strings in many scripts; index, query and serve rank as open_clip does. The
subprocess checks (no torch, a missing extra, cold queries) are in e2e/test_multilingual_cold.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from clirun import json_lines, run_ok
from fastapi.testclient import TestClient
from httpkit import open_app
from multilingual import (
    QUERIES,
    TEXTS,
    WRITERS,
    exported_tokenizer,
    random_texts,
)
from testdata import make_images

from retrieval.embedders import hf_tokenizer
from retrieval.embedders.tokenizer import uses_hf_tokenizer


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


def test_which_models_need_the_multilingual_extra(
    multilingual_models: dict[str, str], tiny_model: str
) -> None:
    for name in ["xlm-roberta-base-ViT-B-32", "nllb-clip-base", "ViT-B-16-SigLIP-i18n-256",
                 "ViT-B-16-SigLIP", *multilingual_models.values()]:  # fmt: skip
        assert uses_hf_tokenizer(name), name
    for name in ["ViT-B-32", tiny_model, "hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K"]:
        assert not uses_hf_tokenizer(name), name  # the hub one: not cached, so not known


# Runs the CLI in a fresh interpreter and reports which heavy modules loaded (test_cold_query).
