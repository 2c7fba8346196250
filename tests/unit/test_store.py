"""IndexStore: generations, incremental faiss updates vs rebuilds, readers seeing new commits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from retrieval.errors import IndexMismatchError, IndexNotFoundError
from retrieval.storage.store import CollectionChanges, IndexStore
from retrieval.types import IMAGES, ModelIdentity

DIM = 16


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    vectors = rng.standard_normal((n, DIM)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def add(
    store: IndexStore, vectors: np.ndarray, start: int, index_type: str | None = None
) -> list[int]:
    keys = [f"img:{start + n}" for n in range(len(vectors))]
    with store.catalog.transaction():
        store.catalog.put_vectors(keys, vectors)
    with store.catalog.transaction():
        ids = [store.catalog.add_item(IMAGES, key, path=f"/p/{key}") for key in keys]
        types = {IMAGES: index_type} if index_type else None
        store.commit({IMAGES: CollectionChanges(added=ids)}, index_types=types)
    store.cleanup()
    return ids


def remove(store: IndexStore, ids: list[int]) -> None:
    with store.catalog.transaction():
        store.catalog.delete_items(ids)
        store.commit({IMAGES: CollectionChanges(removed=ids)})
    store.cleanup()


@pytest.fixture
def store(tmp_path: Path) -> IndexStore:
    return IndexStore.create(tmp_path / "idx", ModelIdentity("tiny", None, DIM, None))


def built_n(store: IndexStore) -> int:
    return int(store.catalog.get_meta("built_n:images") or 0)


def test_small_additions_update_in_place_and_growth_rebuilds(store: IndexStore) -> None:
    rng = np.random.default_rng(0)
    add(store, unit(rng, 100), 0)
    assert built_n(store) == 100
    new = unit(rng, 10)
    ids = add(store, new, 100)
    assert built_n(store) == 100  # added to the existing index, not rebuilt
    _, found = store.get_index(IMAGES).search(new[:1], 1)
    assert found[0, 0] == ids[0]
    add(store, unit(rng, 200), 200)
    assert built_n(store) == 310  # grew past 2x: rebuilt from stored vectors
    assert store.get_index(IMAGES).ntotal == 310


def test_removal_from_hnsw_rebuilds_and_forgets_the_vector(store: IndexStore) -> None:
    rng = np.random.default_rng(1)
    vectors = unit(rng, 50)
    ids = add(store, vectors, 0, index_type="hnsw")
    assert "HNSW" in store.get_index(IMAGES).factory
    remove(store, ids[:1])
    index = store.get_index(IMAGES)
    assert index.ntotal == 49 and built_n(store) == 49
    _, found = index.search(vectors[:1], 3)
    assert ids[0] not in found[0].tolist()


def test_changing_index_type_rebuilds_without_reembedding(store: IndexStore) -> None:
    rng = np.random.default_rng(2)
    add(store, unit(rng, 40), 0)
    with store.catalog.transaction():
        store.commit({}, index_types={IMAGES: "hnsw"})
    assert "HNSW" in store.get_index(IMAGES).factory
    assert store.get_index(IMAGES).ntotal == 40


def test_reader_sees_each_new_generation(store: IndexStore, tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    add(store, unit(rng, 20), 0)
    reader = IndexStore.open(tmp_path / "idx", readonly=True)
    assert reader.get_index(IMAGES).ntotal == 20
    add(store, unit(rng, 5), 20)
    assert reader.get_index(IMAGES).ntotal == 25
    assert sorted(p.name for p in (tmp_path / "idx").glob("*.faiss")) == ["images.2.faiss"]


def commit_once_before(
    monkeypatch: pytest.MonkeyPatch, reader: IndexStore, method: str, commit: object
) -> None:
    """Make `reader.method` run `commit()` (another process's index run, committing and deleting
    the reader's generation's file) the first time it is called, then do its own work: the
    interleaving of a lock-free reader with a writer, at the worst moment."""
    real = getattr(reader, method)
    calls = []

    def racing(*args: object) -> object:
        if not calls:
            calls.append(1)
            commit()  # type: ignore[operator]
        return real(*args)

    monkeypatch.setattr(reader, method, racing)


@pytest.mark.parametrize("moment", ["_load_verified", "_faiss_path"])
def test_a_commit_between_reading_the_generation_and_its_file_opens_the_new_one(
    store: IndexStore,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    moment: str,
) -> None:
    """Found by the soak: a query racing an index run's commit got HTTP 500 (the old faiss
    file was deleted between the reader's is_file() and its load), or, one step earlier, the
    reader rebuilt the index in memory from the next generation's vectors as if the file were
    damaged. Either way the reader must simply open the new generation."""
    rng = np.random.default_rng(7)
    add(store, unit(rng, 20), 0)
    reader = IndexStore.open(tmp_path / "idx", readonly=True)
    more = unit(rng, 5)
    commit_once_before(monkeypatch, reader, moment, lambda: add(store, more, 20))
    index = reader.get_index(IMAGES)
    assert reader.catalog.generation == 2 and index.ntotal == 25
    assert not (tmp_path / "idx" / "images.1.faiss").exists()
    _, found = index.search(more[:1], 1)
    assert found[0, 0] == reader.catalog.get_ids(IMAGES)[20]
    assert "missing" not in caplog.text


def test_a_missing_file_at_an_unchanged_generation_is_rebuilt_and_said(
    store: IndexStore, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rng = np.random.default_rng(8)
    add(store, unit(rng, 12), 0)
    (tmp_path / "idx" / "images.1.faiss").unlink()
    reader = IndexStore.open(tmp_path / "idx", readonly=True)
    assert reader.get_index(IMAGES).ntotal == 12
    assert "images.1.faiss is missing; rebuilding it in memory" in caplog.text


def test_uncommitted_generation_is_invisible_and_cleaned_up(
    store: IndexStore, tmp_path: Path
) -> None:
    rng = np.random.default_rng(4)
    add(store, unit(rng, 20), 0)
    with pytest.raises(RuntimeError), store.catalog.transaction():
        ids = [store.catalog.add_item(IMAGES, "img:x", path="/p/x")]
        store.catalog.put_vectors(["img:x"], unit(rng, 1))
        store.commit({IMAGES: CollectionChanges(added=ids)})
        raise RuntimeError("killed before COMMIT")
    assert (tmp_path / "idx" / "images.2.faiss").exists()  # written, never made current
    reader = IndexStore.open(tmp_path / "idx", readonly=True)
    assert reader.catalog.generation == 1 and reader.get_index(IMAGES).ntotal == 20
    with store.writer_lock():
        pass
    assert not (tmp_path / "idx" / "images.2.faiss").exists()


def test_open_errors(tmp_path: Path, store: IndexStore) -> None:
    with pytest.raises(IndexNotFoundError, match="mmsearch index"):
        IndexStore.open(tmp_path / "nothing")
    manifest = tmp_path / "idx" / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"format_version": 1', '"format_version": 99'))
    with pytest.raises(IndexMismatchError, match="format version 99"):
        IndexStore.open(tmp_path / "idx")


def test_unchanged_collection_is_linked_not_rewritten(store: IndexStore, tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    vectors = unit(rng, 30)
    ids = add(store, vectors, 0)
    before = (tmp_path / "idx" / "images.1.faiss").stat().st_ino
    with store.catalog.transaction():
        store.catalog.put_vectors(["txt:a"], unit(rng, 1))
        text_id = store.catalog.add_item("texts", "txt:a", text="a")
        store.commit({"texts": CollectionChanges(added=[text_id])})
    store.cleanup()
    assert (tmp_path / "idx" / "images.2.faiss").stat().st_ino == before
    _, found = store.get_index(IMAGES).search(vectors[:1], 1)
    assert found[0, 0] == ids[0] and store.get_index("texts").ntotal == 1


def test_a_collections_record_is_typed_and_reads_what_older_versions_wrote(
    tmp_path: Path,
) -> None:
    """storage/collections.py: the typed record keeps the meta keys indexes already have."""
    from retrieval.storage.catalog import Catalog
    from retrieval.storage.collections import CollectionState, read_state, write_state

    catalog = Catalog(tmp_path / "catalog.sqlite")
    assert read_state(catalog, IMAGES) == CollectionState()
    with catalog.transaction():
        # as an older version wrote them, key by key
        catalog.set_meta("built_n:images", "310")
        catalog.set_meta("ondisk:images", "1")
        catalog.set_meta("index_type:images", "")
    state = read_state(catalog, IMAGES)
    assert (state.built_n, state.ondisk, state.index_type) == (310, True, "auto")
    with catalog.transaction():
        write_state(catalog, IMAGES, built_for="ivf", ondisk=False, ivfdata="")
    assert catalog.get_meta("built_for:images") == "ivf" and not read_state(catalog, IMAGES).ondisk
    with pytest.raises(TypeError, match="no field 'nlist'"):
        write_state(catalog, IMAGES, nlist=4)
    catalog.close()
