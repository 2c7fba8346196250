"""Recall tuning with probes that look like user queries: text spans, the recall reported per
probe kind (against a recall measured by hand), the claimed recall taken from the most
user-like kind, spans embedded by the index's own text tower on the write path, and the
reservoir of query vectors `serve --record-queries` keeps for the next re-tune."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from clirun import run_ok
from hypothesis import given
from hypothesis import strategies as st
from test_tuning import clustered
from testdata import cpu_config

from retrieval.compose import open_for_search
from retrieval.config import BatchConfig
from retrieval.index import FaissIndex
from retrieval.index.exact import exact_search
from retrieval.index.tuning import K, Tuning, recall_at_k, tune
from retrieval.search.service import SearchRequest
from retrieval.storage.catalog import Catalog
from retrieval.storage.probes import (
    MIN_RECORDED,
    RECORDED_FILE,
    QueryRecorder,
    read_recorded,
    sample_texts,
    span_probes,
    text_spans,
    tuning_probes,
)
from retrieval.types import IMAGES, TEXTS


@given(st.lists(st.text(alphabet="abc ", max_size=40), max_size=20), st.integers(0, 99))
def test_spans_are_two_to_four_consecutive_words_of_each_text(texts: list[str], seed: int) -> None:
    spans = text_spans(texts, seed=seed)
    assert len(spans) == len(texts)
    for text, span in zip(texts, spans, strict=True):
        words, got = text.split(), span.split()
        if len(words) <= 2:
            assert got == words
        else:
            assert 2 <= len(got) <= 4
            assert any(words[i : i + len(got)] == got for i in range(len(words)))


def test_recall_is_reported_per_probe_kind_and_claimed_for_the_most_user_like() -> None:
    xb, xq = clustered(4000, 400, seed=3)
    ids = np.arange(len(xb), dtype=np.int64) * 7
    index = FaissIndex.build(xb, ids, "IVF32,Flat")
    # Spans: queries off the data (harder); recorded: queries near stored vectors (easier).
    near = xb[:200] + np.random.default_rng(5).normal(0, 0.01, (200, xb.shape[1]))
    near = (near / np.linalg.norm(near, axis=1, keepdims=True)).astype(np.float32)
    probes = {"text_spans": xq[:200], "recorded": near}
    result = tune(index, xb, ids, target_recall=0.9, n_queries=500, probes=probes)
    assert set(result.recall) == {"stored", "text_spans", "recorded"}
    assert result.recall_at_10 == result.recall["recorded"]  # the most user-like kind
    assert min(result.recall.values()) >= 0.9  # every kind reaches the target
    for kind, queries in probes.items():  # each kind's recall, measured by hand
        _, truth = exact_search(xb, ids, queries, K)
        _, found = index.search(queries, K)
        assert result.recall[kind] == pytest.approx(recall_at_k(found, truth), abs=1e-4)
    without = tune(index, xb, ids, target_recall=0.9, n_queries=500)
    assert set(without.recall) == {"stored"} and without.recall_at_10 == without.recall["stored"]
    assert Tuning.from_dict(json.loads(json.dumps(result.to_dict()))) == result
    old = {k: v for k, v in result.to_dict().items() if k != "recall"}  # recorded before kinds
    assert Tuning.from_dict(old).recall == {}


def test_image_indexes_are_probed_with_captions_and_texts(tmp_path: Path) -> None:
    catalog = Catalog(tmp_path / "catalog.sqlite")
    with catalog.transaction():
        catalog.add_item(IMAGES, "i1", path="/p/1.png", text="a goldfish in a bowl")  # caption
        catalog.add_item(IMAGES, "i2", path="/p/2.png")  # no caption
        catalog.add_item(TEXTS, "t1", text="red leather armchair")  # a text or product title
    assert sorted(sample_texts(catalog, IMAGES, 10)) == ["a goldfish in a bowl",
                                                         "red leather armchair"]  # fmt: skip
    assert sample_texts(catalog, TEXTS, 10) == ["red leather armchair"]
    assert len(sample_texts(catalog, IMAGES, 1)) == 1
    spans = span_probes(catalog, IMAGES, lambda texts: np.ones((len(texts), 4), np.float32))
    assert spans is not None and spans.shape == (2, 4)
    assert span_probes(Catalog(tmp_path / "empty.sqlite"), IMAGES, lambda t: t) is None


def test_a_recorder_keeps_a_bounded_uniform_sample_saved_atomically(tmp_path: Path) -> None:
    offered = np.random.default_rng(0).normal(size=(3000, 8)).astype(np.float32)
    recorder = QueryRecorder(tmp_path, 8, size=100)
    for vector in offered[:50]:
        recorder.add(vector)
    recorder.flush()
    assert np.array_equal(read_recorded(tmp_path, 8), offered[:50])  # all kept while room
    for vector in offered[50:]:
        recorder.add(vector)
    recorder.flush()
    kept = read_recorded(tmp_path, 8)
    assert kept is not None and kept.shape == (100, 8)
    rows = {tuple(v) for v in offered}
    assert all(tuple(v) in rows for v in kept)
    # Uniform: later queries are not favoured (algorithm R keeps each with chance 100/3000).
    position = {tuple(v): n for n, v in enumerate(offered)}
    assert 800 < np.mean([position[tuple(v)] for v in kept]) < 2200
    assert [p.name for p in tmp_path.iterdir()] == [RECORDED_FILE]  # no temp file left
    again = QueryRecorder(tmp_path, 8, size=100)  # a restarted server continues from it
    assert again.count == 100
    assert read_recorded(tmp_path, 4) is None  # another model's dimension: not used


def test_recorded_queries_tune_from_min_recorded_on(tmp_path: Path) -> None:
    catalog = Catalog(tmp_path / "catalog.sqlite")
    recorder = QueryRecorder(tmp_path, 4)
    vectors = np.random.default_rng(2).normal(size=(MIN_RECORDED, 4)).astype(np.float32)
    for vector in vectors[:-1]:
        recorder.add(vector)
    recorder.flush()
    assert tuning_probes(catalog, tmp_path, TEXTS, 4, None) == {}  # too few to measure with
    recorder.add(vectors[-1])
    recorder.flush()
    probes = tuning_probes(catalog, tmp_path, TEXTS, 4, None)
    assert list(probes) == ["recorded"] and np.array_equal(probes["recorded"], vectors)


WORDS = ["red", "blue", "green", "small", "large", "wooden", "glass", "round", "striped", "old"]
THINGS = ["goldfish", "bowl", "chair", "lamp", "teapot", "bicycle", "kite", "clock", "vase"]


def write_texts(path: Path, count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    texts = [
        f"a {rng.choice(WORDS)} {rng.choice(THINGS)} next to a {rng.choice(WORDS)} "
        f"{rng.choice(THINGS)} number {n}"
        for n in range(count)
    ]
    path.write_text("\n".join(texts) + "\n")
    return texts


def test_the_write_path_tunes_with_spans_and_then_recorded_queries(
    tiny_model: str, tmp_path: Path
) -> None:
    directory = tmp_path / "index"
    write_texts(tmp_path / "texts.txt", 1000, seed=1)
    run_ok("index", "--texts", tmp_path / "texts.txt", "--index-type", "IVF16,Flat",
           "--model", tiny_model, "--index", directory, "--quiet")  # fmt: skip
    info = json.loads(run_ok("info", "--index", directory, "--json"))["collections"][TEXTS]
    assert set(info["recall"]) == {"stored", "text_spans"}
    assert info["recall_at_10"] == info["recall"]["text_spans"]
    assert min(info["recall"].values()) >= info["target_recall"] - 0.05

    queries = [f"{WORDS[n % 10]} {THINGS[n % 9]} {n}" for n in range(MIN_RECORDED)]
    with open_for_search(
        directory, cpu_config(), batching=BatchConfig(), record_queries=True
    ) as service:
        for query in queries:
            service.search(SearchRequest(text=query, target=TEXTS, k=3))
        service.search(SearchRequest(text="lamp", target=TEXTS, k=3, mode="keyword"))  # no vector
        wanted = service.embed_texts(queries)
    recorded = read_recorded(directory, wanted.shape[1])
    assert recorded is not None and np.allclose(recorded, wanted, atol=1e-5)
    report = json.loads(run_ok("check", "--index", directory, "--json"))
    assert not [p for p in report["problems"] if p["kind"] == "stray-file"]

    # The next re-tune (a change and another target) measures the recorded queries too.
    write_texts(tmp_path / "texts.txt", 1001, seed=1)
    run_ok("index", "--texts", tmp_path / "texts.txt", "--target-recall", "0.9",
           "--index", directory, "--quiet")  # fmt: skip
    info = json.loads(run_ok("info", "--index", directory, "--json"))["collections"][TEXTS]
    assert set(info["recall"]) == {"stored", "text_spans", "recorded"}
    assert info["recall_at_10"] == info["recall"]["recorded"] and info["target_recall"] == 0.9
    text = run_ok("info", "--index", directory)
    assert "recall@10 by probe kind: stored" in text
