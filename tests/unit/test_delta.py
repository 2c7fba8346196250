"""The change log (storage/delta.py): base generation + logged changes, searched by every
reader, against exact brute-force search over a dict model of the items. No model: vectors are
random unit vectors stored as the writers store them (float16 in the catalog)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from retrieval.index.exact import exact_search
from retrieval.ingest.indexer import Indexer
from retrieval.storage import commit, compaction, delta
from retrieval.storage.compaction import COMPACT_DIR, Compaction
from retrieval.storage.delta import Delta, LiveIndex, merge_hits
from retrieval.storage.integrity import check_index
from retrieval.storage.store import IndexStore
from retrieval.types import IMAGES, ModelIdentity

DIM = 8


def stored(vector: np.ndarray) -> np.ndarray:
    """What a reader gets back from the catalog: the float16 copy."""
    return vector.astype(np.float16).astype(np.float32)


class DeltaMachine(RuleBasedStateMachine):
    """Writes (add, replace, delete) through a delta Indexer, compactions (under the writer lock,
    and beside writers: built from a snapshot while writes go on, then swapped in), and two
    readers (the writer's own store and a second read-only one, as another `serve` would
    have)."""

    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp())
        self.directory = self.tmp / "idx"
        self.writer = IndexStore.create(self.directory, ModelIdentity("tiny", None, DIM, None))
        self.model: dict[int, np.ndarray] = {}
        self.rng = np.random.default_rng(0)
        self.keys = 0
        self.reader: IndexStore | None = None
        # a compaction beside writers between its build and its swap, on its own connection
        self.pending: tuple[IndexStore, Compaction] | None = None
        self.swapped = 0

    def _vectors(self, n: int) -> tuple[list[str], np.ndarray]:
        vectors = self.rng.standard_normal((n, DIM)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        keys = [f"k{self.keys + i}" for i in range(n)]
        self.keys += n
        with self.writer.catalog.transaction():
            self.writer.catalog.put_vectors(keys, vectors)
        return keys, vectors

    def _indexer(self) -> Indexer:
        return Indexer(self.writer, sweep_vectors=False, delta=True)

    @initialize(n=st.integers(0, 12))
    def base(self, n: int) -> None:
        keys, vectors = self._vectors(n)
        with Indexer(self.writer) as indexer, indexer.change() as changes:
            for key, vector in zip(keys, vectors, strict=True):
                self.model[changes.add(IMAGES, key, path=f"/{key}")] = stored(vector)
        self.reader = IndexStore.open(self.directory, readonly=True)

    @rule(n=st.integers(1, 3))
    def add(self, n: int) -> None:
        keys, vectors = self._vectors(n)
        with self._indexer() as indexer, indexer.change() as changes:
            for key, vector in zip(keys, vectors, strict=True):
                self.model[changes.add(IMAGES, key, path=f"/{key}")] = stored(vector)

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def replace(self, data: st.DataObject) -> None:
        item_id = data.draw(st.sampled_from(sorted(self.model)))
        keys, vectors = self._vectors(1)
        with self._indexer() as indexer, indexer.change() as changes:
            item = self.writer.catalog.get_item(item_id)
            assert item is not None
            changes.replace(item, key=keys[0], size=None, mtime_ns=None)
        self.model[item_id] = stored(vectors[0])

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def delete(self, data: st.DataObject) -> None:
        doomed = data.draw(st.sets(st.sampled_from(sorted(self.model)), min_size=1, max_size=3))
        with self._indexer() as indexer, indexer.change() as changes:
            changes.remove(self.writer.catalog.get_items(sorted(doomed)).values())
        for item_id in doomed:
            del self.model[item_id]

    @rule()
    def compact(self) -> None:
        before = self.writer.catalog.generation
        with Indexer(self.writer) as indexer:
            folded = indexer.compact()
        assert self.writer.catalog.delta_size() == 0
        assert self.writer.catalog.generation == before + folded

    @precondition(lambda self: self.pending is None)
    @rule()
    def build_beside_writers(self) -> None:
        store = IndexStore.open(self.directory)
        compaction = Compaction(store).__enter__()
        if compaction.build():
            self.pending = (store, compaction)
            return
        compaction.__exit__(None, None, None)
        store.close()

    @precondition(lambda self: self.pending is not None)
    @rule()
    def swap_beside_writers(self) -> None:
        assert self.pending is not None
        store, compaction = self.pending
        self.pending = None
        snapshot = compaction.snapshot
        assert snapshot is not None
        moved = self.writer.catalog.generation != snapshot.generation
        try:
            swapped = compaction.swap(0.0)
        finally:
            compaction.__exit__(None, None, None)
            store.close()
        # it swaps in exactly when nothing compacted since its snapshot
        assert swapped is not moved
        if swapped:
            self.swapped += 1
            assert self.writer.catalog.generation == snapshot.generation + 1
            # the rows logged after the snapshot stay, for readers to apply to the new base
            assert all(seq > snapshot.seq for seq, *_ in self.writer.catalog.read_delta())
        assert not (self.directory / COMPACT_DIR).exists()

    @invariant()
    def readers_match_brute_force(self) -> None:
        if self.reader is None:
            return
        query = self.rng.standard_normal((1, DIM)).astype(np.float32)
        ids = np.asarray(sorted(self.model), dtype=np.int64)
        vectors = np.stack([self.model[i] for i in ids]) if len(ids) else np.zeros((0, DIM))
        allowed = ids[self.rng.random(len(ids)) < 0.5]
        # the writer's store, a long-lived reader (another `serve`), and a fresh one (a CLI
        # query: nothing cached, the base and the whole log read cold)
        fresh = IndexStore.open(self.directory, readonly=True)
        for store in (self.writer, self.reader, fresh):
            live = store.get_index(IMAGES)
            if not self.model:
                assert live is None or live.ntotal == 0
                continue
            assert live is not None
            assert live.ntotal == len(self.model)
            for k, filters in ((len(self.model) + 2, None), (3, None), (4, allowed)):
                want_scores, want_ids = exact_search(vectors, ids, query, k, allowed_ids=filters)
                scores, found = live.search(query, k, allowed_ids=filters)
                # every k that exist come back (filters applied inside both searches)
                assert (found >= 0).sum() == (want_ids >= 0).sum()
                np.testing.assert_array_equal(found, want_ids)
                np.testing.assert_allclose(scores, want_scores, rtol=1e-4, atol=1e-5)
        fresh.close()

    def teardown(self) -> None:
        if self.pending is not None:
            store, compaction = self.pending
            compaction.__exit__(None, None, None)
            store.close()
        SWAPS.append(self.swapped)
        report = check_index(self.directory)
        assert report.ok, report.problems
        if self.reader is not None:
            self.reader.close()
        self.writer.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


SWAPS: list[int] = []


def test_base_plus_delta_matches_brute_force_with_compaction_at_a_small_threshold(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A small log limit, so writes also cross it and compact inline.
    monkeypatch.setattr(commit, "max_rows_for", lambda vectors: 10)
    # Tiny collections often grow past the bounds of an incremental update (a rebuild, which
    # only the compaction under the writer lock does): widen them, so the compaction beside
    # writers swaps in often, between writes and inline compactions.
    monkeypatch.setattr(compaction, "RETRAIN_GROWTH", 1000.0)
    SWAPS.clear()
    run_state_machine_as_test(
        DeltaMachine,
        settings=settings(
            max_examples=15,
            stateful_step_count=20,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
    assert sum(SWAPS) > 0  # the compaction beside writers did swap in


def test_small_writes_leave_the_faiss_file_alone(tmp_path: Path) -> None:
    store = IndexStore.create(tmp_path / "idx", ModelIdentity("tiny", None, DIM, None))
    vectors = np.eye(DIM, dtype=np.float32)
    with store.catalog.transaction():
        store.catalog.put_vectors([f"k{i}" for i in range(DIM - 1)], vectors[:-1])
    with Indexer(store) as indexer, indexer.change() as changes:
        ids = [changes.add(IMAGES, f"k{i}", path=f"/{i}") for i in range(DIM - 1)]
    faiss_file = tmp_path / "idx" / f"images.{store.catalog.generation}.faiss"
    before = faiss_file.stat()
    with store.catalog.transaction():
        store.catalog.put_vectors([f"k{DIM - 1}"], vectors[-1:])
    with Indexer(store, delta=True) as indexer, indexer.change() as changes:
        new = changes.add(IMAGES, f"k{DIM - 1}", path="/new")
        changes.remove([store.catalog.get_item(ids[0])])  # type: ignore[list-item]
    after = faiss_file.stat()
    assert (after.st_ino, after.st_mtime_ns, after.st_size) == (
        before.st_ino,
        before.st_mtime_ns,
        before.st_size,
    )
    assert store.catalog.delta_size() == 2
    _, found = store.get_index(IMAGES).search(vectors[DIM - 1 :], 1)  # type: ignore[union-attr]
    assert found[0, 0] == new
    _, found = store.get_index(IMAGES).search(vectors[:1], DIM)  # type: ignore[union-attr]
    assert ids[0] not in found
    # An index run compacts: a new generation, an empty log, the same answers.
    with Indexer(store) as indexer, indexer.change():
        pass
    assert store.catalog.delta_size() == 0
    _, found = store.get_index(IMAGES).search(vectors[DIM - 1 :], 1)  # type: ignore[union-attr]
    assert found[0, 0] == new
    assert check_index(tmp_path / "idx").ok


def test_merge_hits_keeps_the_best_k_and_pads() -> None:
    first = (np.array([[0.9, 0.5, -np.inf]], np.float32), np.array([[1, 2, -1]]))
    second = (np.array([[0.7, 0.1, -np.inf]], np.float32), np.array([[7, 8, -1]]))
    scores, ids = merge_hits(first, second, 3)
    assert ids.tolist() == [[1, 7, 2]]
    np.testing.assert_allclose(scores, [[0.9, 0.7, 0.5]])
    scores, ids = merge_hits(first, (np.full((1, 3), -np.inf), np.full((1, 3), -1)), 4)
    assert ids.tolist() == [[1, 2, -1, -1]]
    assert np.isneginf(scores[0, 2:]).all()


def test_log_only_collection_has_no_base_file() -> None:
    delta = Delta()
    delta.apply([5, 6], base_max_id=0)
    delta.extend(np.array([5, 6]), np.eye(2, DIM, dtype=np.float32))
    live = LiveIndex(None, delta)
    assert live.ntotal == 2
    _, found = live.search(np.eye(1, DIM, dtype=np.float32), 3, allowed_ids=np.array([6]))
    assert found.tolist() == [[6, -1, -1]]


def test_a_collection_empty_at_its_generation_is_served_from_the_log(tmp_path: Path) -> None:
    store = IndexStore.create(tmp_path / "idx", ModelIdentity("tiny", None, DIM, None))
    with Indexer(store) as indexer, indexer.change():
        pass  # generation 1, no images: no faiss file
    vectors = np.eye(2, DIM, dtype=np.float32)
    with store.catalog.transaction():
        store.catalog.put_vectors(["a", "b"], vectors)
    with Indexer(store, delta=True) as indexer, indexer.change() as changes:
        ids = [changes.add(IMAGES, key, path=f"/{key}") for key in ("a", "b")]
    live = store.get_index(IMAGES)
    assert live is not None and live.base is None and live.ntotal == 2
    _, found = live.search(vectors, 3)
    assert found.tolist() == [[ids[0], ids[1], -1], [ids[1], ids[0], -1]]
    assert check_index(tmp_path / "idx").ok


def test_the_log_limits_grow_with_the_catalog_within_bounds() -> None:
    from retrieval.config import DELTA_COMPACT_MAX, DELTA_COMPACT_MIN
    from retrieval.storage.delta import compact_rows_for, max_rows_for

    assert compact_rows_for(0) == compact_rows_for(10_000) == DELTA_COMPACT_MIN
    # past the floor, a compaction (O(n)) comes once per a fixed fraction of n logged rows
    assert compact_rows_for(100_000) == 100_000 // 16
    assert compact_rows_for(120_000) == 120_000 // 16
    assert compact_rows_for(10_000_000) == DELTA_COMPACT_MAX  # readers search the log exactly
    for vectors in (0, 50_000, 100_000, 10**7):
        assert max_rows_for(vectors) == 2 * compact_rows_for(vectors)


@pytest.mark.parametrize("base", [32, 320])
def test_a_write_compacts_inline_past_the_limit_the_catalog_size_sets(
    base: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(delta, "DELTA_COMPACT_MIN", 1)  # the catalog's share, not the floor
    store = IndexStore.create(tmp_path / "idx", ModelIdentity("tiny", None, DIM, None))
    keys = [f"k{n}" for n in range(base + 100)]
    vectors = np.random.default_rng(3).standard_normal((len(keys), DIM)).astype(np.float32)
    with store.catalog.transaction():
        store.catalog.put_vectors(keys, vectors)
    with Indexer(store) as indexer, indexer.change() as changes:
        for key in keys[:base]:
            changes.add(IMAGES, key, path=f"/{key}")
    assert store.base_vectors() == base
    generation = store.catalog.generation
    logged = 0
    while store.catalog.generation == generation:  # one logged row per write
        with store.catalog.transaction():  # the index run dropped the vectors no item used
            store.catalog.put_vectors(
                [keys[base + logged]], vectors[base + logged : base + logged + 1]
            )
        with Indexer(store, delta=True) as indexer, indexer.change() as changes:
            changes.add(IMAGES, keys[base + logged], path=f"/new{logged}")
        logged += 1
        assert logged <= 100
    # the write that would have passed twice base/16 rows compacted the log itself
    assert logged == 2 * (base // 16) + 1
    assert store.catalog.delta_size() == 0
    report = check_index(tmp_path / "idx")
    assert report.ok, report.problems
