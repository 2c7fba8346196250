"""Sharded IVF builds with on-disk inverted lists (retrieval/index/ondisk.py): the merged index
answers exactly as the in-memory build with the same parameters, a killed build resumes from
its finished shards, and the store, `query` and two `serve` replicas read it memory-mapped."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest
from clirun import run_ok
from faiss.contrib.datasets import SyntheticDataset
from httpkit import open_app, run_server
from testdata import make_images

from retrieval.errors import InvalidQueryError
from retrieval.index import FaissIndex
from retrieval.index.ondisk import build_ondisk_ivf, ondisk_factory, shard_files


def dataset(n: int = 6000, dim: int = 32) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    data = SyntheticDataset(dim, 0, n, 40, seed=7)
    xb, xq = data.get_database(), data.get_queries()
    xb /= np.linalg.norm(xb, axis=1, keepdims=True)
    xq /= np.linalg.norm(xq, axis=1, keepdims=True)
    ids = np.arange(n, dtype=np.int64) * 7 + 3  # sparse ids, as a catalog's are after deletes
    return xb, ids, xq


def reader(xb: np.ndarray, ids: np.ndarray, calls: list[int] | None = None):
    rows = {int(i): r for r, i in enumerate(ids)}

    def read(chunk: np.ndarray) -> np.ndarray:
        if calls is not None:
            calls.append(len(chunk))
        return xb[[rows[int(i)] for i in chunk]]

    return read


@pytest.mark.parametrize("factory", ["IVF32,Flat", "IVF32,PQ8x8", "IVF32,SQ8"])
def test_sharded_ondisk_build_matches_the_in_memory_build(tmp_path: Path, factory: str) -> None:
    xb, ids, xq = dataset()
    memory = FaissIndex.build(xb, ids, factory)
    ondisk = build_ondisk_ivf(
        ids, reader(xb, ids), 32, factory, tmp_path / "x.ivfdata", tmp_path / "work",
        shard_size=1000,
    )  # fmt: skip
    assert ondisk.on_disk and not memory.on_disk
    assert len(shard_files(tmp_path / "work")) == 6
    for index in (memory, ondisk):
        index.set_search_params(type(memory.search_params)(nprobe=8))
    expected_scores, expected_ids = memory.search(xq, 10)
    scores, got = ondisk.search(xq, 10)
    np.testing.assert_array_equal(got, expected_ids)
    np.testing.assert_allclose(scores, expected_scores, rtol=0, atol=1e-6)


def test_killed_build_resumes_from_its_finished_shards(tmp_path: Path) -> None:
    xb, ids, xq = dataset()
    work = tmp_path / "work"
    build_ondisk_ivf(ids, reader(xb, ids), 32, "IVF32,Flat", tmp_path / "a.ivfdata", work,
                     shard_size=1000)  # fmt: skip
    first = FaissIndex.build(xb, ids, "IVF32,Flat")
    shard_files(work)[2].unlink()  # as if the driver died while adding shard 2
    calls: list[int] = []
    again = build_ondisk_ivf(ids, reader(xb, ids, calls), 32, "IVF32,Flat",
                             tmp_path / "b.ivfdata", work, shard_size=1000)  # fmt: skip
    assert calls == [1000]  # no retraining, only the missing shard was read and added
    np.testing.assert_array_equal(again.search(xq, 5)[1], first.search(xq, 5)[1])
    # other input: the work directory is cleared, never mixed in
    calls.clear()
    build_ondisk_ivf(ids[:3000], reader(xb, ids, calls), 32, "IVF32,Flat",
                     tmp_path / "c.ivfdata", work, shard_size=1000)  # fmt: skip
    assert sum(calls) == 3000 + 3000  # the training sample (all 3000) plus three shards


def test_ondisk_needs_an_ivf_index_type() -> None:
    assert ondisk_factory("ivfpq", 100_000, 512).endswith(",PQ64x8")  # Refine would sit in RAM
    with pytest.raises(InvalidQueryError, match="--ondisk needs an IVF"):
        ondisk_factory("hnsw", 100_000, 512)


def query_json(index: Path, text: str) -> list[dict]:
    return json.loads(run_ok("query", text, "--index", index, "--json", "-k", "5"))["results"]


def test_store_builds_ondisk_and_queries_read_it_after_a_move(
    tiny_model: str, tmp_path: Path
) -> None:
    photos = tmp_path / "photos"
    make_images(photos, 40)
    common = ("--model", tiny_model, "--index-type", "IVF4,Flat", "--quiet")
    run_ok("index", photos, "--index", tmp_path / "ram", *common)
    run_ok("index", photos, "--index", tmp_path / "disk", "--ondisk", *common)
    assert [p.name for p in (tmp_path / "disk").glob("*.ivfdata")] == ["images.1.ivfdata"]
    for text in ("a red shoe", "noise"):
        assert query_json(tmp_path / "disk", text) == query_json(tmp_path / "ram", text)
    # A new file rebuilds the on-disk index (never modified in place); the old lists go.
    make_images(tmp_path / "more", 1, seed=9)
    shutil.copy(tmp_path / "more" / "img_000.png", photos / "extra.png")
    run_ok("index", photos, "--index", tmp_path / "disk", *common)  # keeps its --ondisk choice
    # ... so it equals a fresh in-memory build (the old one only added the new vector)
    run_ok("index", photos, "--index", tmp_path / "ram2", *common)
    assert [p.name for p in (tmp_path / "disk").glob("*.ivfdata")] == ["images.2.ivfdata"]
    moved = tmp_path / "elsewhere"
    shutil.move(tmp_path / "disk", moved)
    fresh = query_json(tmp_path / "ram2", "a red shoe")  # ids differ: extra.png walks first
    assert [(h["path"], h["score"]) for h in query_json(moved, "a red shoe")] == [
        (h["path"], h["score"]) for h in fresh
    ]
    info = json.loads(run_ok("info", "--index", moved, "--json"))
    assert info["collections"]["images"]["count"] == 41


def test_two_serve_replicas_over_one_mmapped_index_answer_identically(
    tiny_model: str, tmp_path: Path
) -> None:
    photos = tmp_path / "photos"
    make_images(photos, 40)
    index = tmp_path / "index"
    run_ok("index", photos, "--index", index, "--model", tiny_model, "--index-type",
           "IVF4,Flat", "--ondisk", "--quiet")  # fmt: skip
    # two replicas: separate services, stores and faiss readers over one directory
    with (
        open_app(index) as (app_a, _),
        open_app(index) as (app_b, _),
        run_server(app_a) as url_a,
        run_server(app_b) as url_b,
    ):
        for params in ({"q": "a red shoe", "k": 5}, {"q": "lake", "k": 8, "offset": 2}):
            a = httpx.get(f"{url_a}/search", params=params).json()
            b = httpx.get(f"{url_b}/search", params=params).json()
            a.pop("took_ms", None), b.pop("took_ms", None)
            assert a == b and len(a["results"]) == params["k"]
        upload = (tmp_path / "photos" / "img_003.png").read_bytes()
        hits = [
            httpx.post(f"{url}/search/image", params={"k": 3},
                       files={"file": ("q.png", upload)}).json()["results"]
            for url in (url_a, url_b)
        ]  # fmt: skip
        assert hits[0] == hits[1] and hits[0][0]["path"].endswith("img_003.png")


def test_streamed_tuning_chooses_the_in_memory_tunings_params():
    """tune_streamed (chunked reads, for sharded builds) picks what tune picks with all
    vectors in RAM: same query sample, same exact truth."""
    from retrieval.index import FaissIndex
    from retrieval.index.tuning import tune, tune_streamed

    rng = np.random.default_rng(3)
    xb = rng.normal(size=(6000, 32)).astype(np.float32)
    xb /= np.linalg.norm(xb, axis=1, keepdims=True)
    ids = np.arange(10, 6010, dtype=np.int64)
    index = FaissIndex.build(xb, ids, "IVF64,Flat")
    expected = tune(index, xb, ids, n_queries=300)
    streamed = tune_streamed(index, ids, lambda c: xb[c - 10], n_queries=300, chunk_size=1000)
    assert streamed.params == expected.params
    assert streamed.recall_at_10 == expected.recall_at_10
