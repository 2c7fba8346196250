"""Recall tuning, tuned parameters persisted in the store, memory-mapped opening and the
IVF training sample, against the exact numpy oracle on clustered synthetic vectors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from retrieval.index import FaissIndex, exact_search, faiss_index, policy
from retrieval.index.tuning import (
    TUNE_QUERIES,
    TUNE_TEXT_QUERIES,
    SearchParams,
    Tuning,
    recall_at_k,
    sample_rows,
    tune,
)
from retrieval.storage import reading as reading_module
from retrieval.types import IMAGES, TEXTS

DIM = 32
N = 10_000
K = 10
TARGET = 0.95


def clustered(n: int, nq: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """CLIP-like: Gaussian clusters in a low-rank subspace, a shared mean direction, noise;
    queries from a shifted version of the same mixture (like text against image vectors)."""
    rng = np.random.default_rng(seed)
    basis = rng.normal(size=(8, DIM))
    centres = rng.normal(size=(50, 8)) * 2
    mean = rng.normal(size=DIM) * 2

    def draw(m: int, shift: float) -> np.ndarray:
        z = centres[rng.integers(0, 50, m)] + rng.normal(size=(m, 8))
        x = z @ basis + mean + rng.normal(size=(m, DIM)) * (0.5 + shift)
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    return draw(n, 0.0), draw(nq, 0.3)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    xb, xq = clustered(N, 200)
    ids = np.random.default_rng(1).choice(2**40, N, replace=False).astype(np.int64)
    return xb, ids, xq


@pytest.mark.parametrize("index_type", ["ivf", "hnsw", "ivfpq"])
def test_tuned_params_reach_target_recall_vs_exact(data, index_type) -> None:
    xb, ids, xq = data
    index = FaissIndex.build(xb, ids, index_type)
    result = tune(index, xb, ids, target_recall=TARGET, text_queries=xq[:100])
    assert result.reached and result.recall_at_10 >= TARGET
    assert index.search_params == result.params
    # Held-out queries the tuner never saw still reach the target (with a little slack).
    _, truth = exact_search(xb, ids, xq[100:], K)
    _, found = index.search(xq[100:], K)
    assert recall_at_k(found, truth) >= TARGET - 0.03
    if index_type == "ivfpq":
        assert result.params.k_factor is not None and result.params.nprobe is not None


def test_tuning_picks_the_smallest_nprobe_reaching_the_target(data) -> None:
    xb, ids, _ = data
    index = FaissIndex.build(xb, ids, "ivf")
    result = tune(index, xb, ids, target_recall=0.9)
    smaller = tune(index, xb, ids, target_recall=0.5)
    assert smaller.params.nprobe < result.params.nprobe  # type: ignore[operator]
    assert Tuning.from_dict(json.loads(json.dumps(result.to_dict()))) == result


def test_the_chosen_nprobe_is_the_smallest_whose_lower_bound_reaches_the_target(data) -> None:
    """The margin: the chosen setting's recall clears the target by its own sampling error,
    and one probe less does not (so the margin costs no more search width than it must)."""
    xb, ids, _ = data
    index = FaissIndex.build(xb, ids, "ivf")
    result = tune(index, xb, ids, target_recall=TARGET)
    xq, self_ids = xb[sample_rows(len(xb), TUNE_QUERIES)], ids[sample_rows(len(xb), TUNE_QUERIES)]
    flat = FaissIndex.build(xb, ids, "flat")

    def hits(nprobe: int) -> np.ndarray:
        index.set_search_params(SearchParams(nprobe=nprobe))
        _, found = index.search(xq, K + 1)
        _, truth = flat.search(xq, K + 1)
        drop = [(row[row != own][:K]) for row, own in zip(found, self_ids, strict=True)]
        want = [(row[row != own][:K]) for row, own in zip(truth, self_ids, strict=True)]
        return np.array([len(set(f) & set(t)) / K for f, t in zip(drop, want, strict=True)])

    chosen = hits(result.params.nprobe)
    bound = chosen.mean() - 1.645 * chosen.std(ddof=1) / np.sqrt(len(chosen))
    assert bound >= TARGET and chosen.mean() == pytest.approx(result.recall_at_10, abs=1e-4)
    fewer = hits(result.params.nprobe - 1)
    assert fewer.mean() - 1.645 * fewer.std(ddof=1) / np.sqrt(len(fewer)) < TARGET


def test_unreachable_target_reports_best_effort(data) -> None:
    xb, ids, _ = data
    index = FaissIndex.build(xb, ids, "IVF64,PQ4x4")  # 2-byte codes, no refine
    result = tune(index, xb, ids, target_recall=0.999)
    assert not result.reached and result.params.nprobe == 64


def test_params_persist_in_store_and_are_used_after_reopening(data, tmp_path, monkeypatch) -> None:
    xb, ids, xq = data
    from retrieval.storage.store import CollectionChanges, IndexStore, StoreOptions
    from retrieval.types import ModelIdentity

    monkeypatch.setattr(reading_module, "MMAP_MIN_BYTES", 0)  # also exercise the mmap path
    identity = ModelIdentity.from_dict(_identity_dict())
    store = IndexStore.create(tmp_path, identity, StoreOptions(target_recall=0.9))
    with store.catalog.transaction():
        store.catalog.put_vectors([f"img:{i}" for i in range(N)], xb)
        store.catalog.put_vectors([f"txt:{i}" for i in range(50)], xq[:50])
    with store.writer_lock(), store.catalog.transaction():
        added = [store.catalog.add_item(IMAGES, f"img:{i}", path=f"/p/{i}") for i in range(N)]
        texts = [store.catalog.add_item(TEXTS, f"txt:{i}", text=str(i)) for i in range(50)]
        store.commit(
            {IMAGES: CollectionChanges(added=added), TEXTS: CollectionChanges(added=texts)},
            index_types={IMAGES: "ivf", TEXTS: "flat"},
        )
    info = store.info()["collections"]
    assert info[IMAGES]["recall_at_10"] >= 0.9 and info[IMAGES]["target_recall"] == 0.9
    assert set(info[IMAGES]["search_params"]) == {"nprobe"}
    assert info[TEXTS]["recall_at_10"] is None and info[TEXTS]["search_params"] is None
    tuning = store.tuning(IMAGES)
    assert tuning is not None and tuning.queries == 1000 + 50  # image and text queries
    store.close()

    reopened = IndexStore.open(tmp_path, readonly=True)
    index = reopened.get_index(IMAGES)
    assert index is not None and index.read_only
    assert index.search_params == tuning.params
    reopened.close()

    # An update through the mmapped index reads it fully first, keeps the tuning when the
    # index stays within its tuned size, and re-measures when the target changes.
    store = IndexStore.open(tmp_path)
    with store.writer_lock(), store.catalog.transaction():
        store.commit({IMAGES: CollectionChanges(removed=[added[0]])})
    assert store.tuning(IMAGES) == tuning
    store = store.with_options(target_recall=0.5)
    with store.writer_lock(), store.catalog.transaction():
        store.commit({IMAGES: CollectionChanges(removed=[added[1]])})
    retuned = store.tuning(IMAGES)
    assert retuned is not None and retuned.target_recall == 0.5
    assert retuned.params.nprobe < tuning.params.nprobe  # type: ignore[operator]
    store.close()


def test_store_tuning_reads_only_the_sampled_text_vectors(data, tmp_path) -> None:
    """Tuning an image index of a store that also holds many texts reads the sampled caption
    vectors, not all of them, and measures exactly what `tune` does with every text given."""
    xb, ids, _ = data
    from retrieval.storage.store import CollectionChanges, IndexStore
    from retrieval.types import ModelIdentity

    n_texts = TUNE_TEXT_QUERIES * 3
    _, captions = clustered(10, n_texts, seed=5)
    store = IndexStore.create(tmp_path, ModelIdentity.from_dict(_identity_dict()))
    with store.catalog.transaction():
        store.catalog.put_vectors([f"img:{i}" for i in range(N)], xb)
        store.catalog.put_vectors([f"txt:{i}" for i in range(n_texts)], captions)
    read: list[int] = []
    by_id = store.catalog.get_vectors_by_id

    def counting(chunk, dim):  # type: ignore[no-untyped-def]
        read.append(len(chunk))
        return by_id(chunk, dim)

    store.catalog.get_vectors_by_id = counting  # type: ignore[method-assign]
    with store.writer_lock(), store.catalog.transaction():
        added = [store.catalog.add_item(IMAGES, f"img:{i}", path=f"/p/{i}") for i in range(N)]
        texts = [store.catalog.add_item(TEXTS, f"txt:{i}", text=str(i)) for i in range(n_texts)]
        store.commit(
            {IMAGES: CollectionChanges(added=added), TEXTS: CollectionChanges(added=texts)},
            index_types={IMAGES: "ivf", TEXTS: "flat"},
        )
    tuning = store.tuning(IMAGES)
    assert tuning is not None and tuning.queries == TUNE_QUERIES + TUNE_TEXT_QUERIES
    assert read == [TUNE_TEXT_QUERIES]  # the image vectors come from get_vectors, whole
    index_ids, vectors = store.catalog.get_vectors(IMAGES, DIM)
    all_texts = store.catalog.get_vectors(TEXTS, DIM)[1]
    again = FaissIndex.load(store.directory / f"{IMAGES}.1.faiss")
    reference = tune(again, vectors, index_ids, text_queries=all_texts)
    assert reference.params == tuning.params
    assert reference.recall_at_10 == pytest.approx(tuning.recall_at_10)
    store.close()


@pytest.mark.parametrize("index_type", ["ivf", "hnsw", "ivfpq"])
def test_mmap_open_gives_identical_results_to_full_load(data, index_type, tmp_path) -> None:
    xb, ids, xq = data
    params = SearchParams(nprobe=7, ef_search=33, k_factor=3)
    FaissIndex.build(xb, ids, index_type).save(tmp_path / "i.faiss")
    full = FaissIndex.load(tmp_path / "i.faiss", search_params=params)
    mapped = FaissIndex.load(tmp_path / "i.faiss", mmap=True, search_params=params)
    assert mapped.read_only and mapped.search_params == full.search_params
    for allowed in (None, ids[:300]):
        got, want = (
            mapped.search(xq, K, allowed_ids=allowed),
            full.search(xq, K, allowed_ids=allowed),
        )
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])


@pytest.mark.parametrize(
    ("n", "nlist", "expected"),
    [
        (500, 0, 500),  # small: everything
        (100_000, 0, 4 * faiss_index.PQ_MIN_TRAIN),  # Flat/HNSW-PQ: enough for PQ codebooks
        (1_000_000, 4000, 64 * 4000),  # 64 points per list, not all 1M
        (100_000, 1265, 64 * 1265),
        (20_000, 1000, 20_000),  # never more than n
    ],
)
def test_training_sample_size_follows_faiss_guidance(n, nlist, expected) -> None:
    size = faiss_index.training_sample_size(n, nlist)
    assert size == expected
    if nlist and size < n:
        assert 39 * nlist <= size <= 256 * nlist


@pytest.mark.parametrize("index_type", ["auto", "ivf", "ivfpq"])
def test_1m_ivf_trains_within_faiss_guidance_and_a_bounded_kmeans(index_type) -> None:
    """At 1M x 512 the named IVF types train 2048 lists on 64 points each (faiss: 39..256),
    ~46 s of k-means on 2 cores, not 4000 lists on 256k points (~3 minutes)."""
    factory = faiss_index.resolve_index_type(index_type, 1_000_000, 512)
    nlist = int(factory.split(",")[0].removeprefix("IVF"))
    size = faiss_index.training_sample_size(1_000_000, nlist)
    assert nlist == faiss_index.MAX_NLIST == 2048
    assert 39 * nlist <= size <= 256 * nlist and size == 64 * 2048
    assert size * nlist <= 64 * 2048**2  # k-means work ~ sample x centroids


def test_ivf_trains_on_the_sample_only(data, monkeypatch) -> None:
    xb, ids, _ = data
    seen: list[int] = []
    original = faiss_index._training_sample

    def spy(x, index):
        sample = original(x, index)
        seen.append(len(sample))
        return sample

    monkeypatch.setattr(policy, "TRAIN_POINTS_PER_CENTROID", 39)
    monkeypatch.setattr(policy, "PQ_MIN_TRAIN", 256)
    monkeypatch.setattr(faiss_index, "_training_sample", spy)
    index = FaissIndex.build(xb, ids, "IVF64,Flat")
    assert seen == [39 * 64] and index.ntotal == N


def _identity_dict() -> dict:
    return {"name": "test", "pretrained": None, "dim": DIM}


def test_auto_picks_refined_pq_when_vectors_outgrow_memory(monkeypatch) -> None:
    assert faiss_index.resolve_index_type("auto", 100_000, 512) == "IVF1265,Flat"
    monkeypatch.setattr(policy, "AUTO_PQ_MIN_BYTES", 100_000 * 512 * 4)
    assert faiss_index.resolve_index_type("auto", 100_000, 512) == "IVF1265,PQ64x8,Refine(SQ8)"


def test_tuning_uses_up_to_tune_text_queries_and_the_choice_holds_on_held_out_texts() -> None:
    """The text sample (the harder, deciding group) is TUNE_TEXT_QUERIES strong by default, and
    the setting chosen on it reaches the target on 3,000 other text queries of the same
    distribution with no slack: the lower confidence bound over that many queries leaves
    room for the sampling error a smaller sample hid (0.960 tuned, 0.948 held-out at 1M)."""
    xb, xq = clustered(N, TUNE_TEXT_QUERIES + 3000, seed=3)
    ids = np.arange(N, dtype=np.int64)
    index = FaissIndex.build(xb, ids, "ivf")  # seeded k-means: the same choice every run
    result = tune(index, xb, ids, target_recall=TARGET, text_queries=xq)
    assert result.reached and result.queries == TUNE_QUERIES + TUNE_TEXT_QUERIES
    held_out = np.setdiff1d(np.arange(len(xq)), sample_rows(len(xq), TUNE_TEXT_QUERIES))
    _, truth = exact_search(xb, ids, xq[held_out], K)
    _, found = index.search(xq[held_out], K)
    assert recall_at_k(found, truth) >= TARGET
