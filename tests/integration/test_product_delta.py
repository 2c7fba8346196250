"""Product writes go to the change log (storage/delta.py), not into the faiss files: a second
reader (another `serve` on the same directory) sees each write on its next query, filters hold
over base and log together, compaction while readers search changes no answer, and
`mmsearch check` stays clean throughout."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from clirun import run_ok
from httpkit import index_shop
from testdata import cpu_config

from benchmarks.harness import noise_png as png
from benchmarks.harness import png_data_url as data_url
from retrieval.compose import open_for_search, open_writer
from retrieval.ingest.product_api import ProductWriter
from retrieval.ingest.repair import repair_index
from retrieval.search.queries import QueryPart
from retrieval.search.service import SearchRequest, SearchService
from retrieval.storage.blobs import BLOBS, UNUSED_BLOB_GRACE_S
from retrieval.storage.compaction import COMPACT_DIR, Compaction, compact_beside_writers
from retrieval.storage.integrity import check_index
from retrieval.storage.store import IndexStore
from retrieval.types import IMAGES


@pytest.fixture
def shop_index(tiny_model: str, tmp_path: Path) -> Path:
    return index_shop(tiny_model, tmp_path)


@pytest.fixture
def replicas(shop_index: Path) -> Iterator[tuple[ProductWriter, SearchService, SearchService]]:
    """A writer and two search services, each with its own connections (as two `serve`
    processes on one index directory have)."""
    one = open_for_search(shop_index, cpu_config())
    two = open_for_search(shop_index, cpu_config())
    writer = open_writer(one)
    assert writer is not None
    try:
        yield writer, one, two
    finally:
        writer.close()
        one.close()
        two.close()


def top_image(service: SearchService, image: bytes) -> int | None:
    hits = service.search(SearchRequest(image=image, target=IMAGES, k=1)).hits
    return hits[0].id if hits else None


def product_skus(service: SearchService, **filters: object) -> set[str]:
    request = SearchRequest(text="shoe", target="products", k=100, filters=filters)
    return {hit.metadata["product_id"] for hit in service.search(request).hits}


def test_every_replica_sees_writes_on_its_next_query(
    replicas: tuple[ProductWriter, SearchService, SearchService], shop_index: Path
) -> None:
    writer, one, two = replicas
    for service in (one, two):  # both have loaded the base generation before the writes
        assert top_image(service, png(1)) is not None
    generation = writer.store.catalog.generation
    faiss_files = sorted(p.name for p in shop_index.glob("*.faiss"))
    _, view = writer.put("NEW-1", {"title": "new shoe", "images": [data_url(1)]})
    new_id = view["images"][0]["item_id"]
    # the write rewrote no faiss file: it is in the change log
    assert writer.store.catalog.generation == generation
    assert sorted(p.name for p in shop_index.glob("*.faiss")) == faiss_files
    assert writer.store.catalog.delta_size() > 0
    for service in (one, two):
        assert top_image(service, png(1)) == new_id
        assert "NEW-1" in product_skus(service)
    # another image: a new item, and the old one is no longer found
    writer.patch("NEW-1", {"images": [data_url(2)]})
    swapped = writer.get("NEW-1")["images"][0]["item_id"]
    for service in (one, two):
        assert top_image(service, png(2)) == swapped
        assert top_image(service, png(1)) != new_id
    writer.delete("NEW-1")
    for service in (one, two):
        assert top_image(service, png(2)) != swapped
        assert "NEW-1" not in product_skus(service)
    assert check_index(shop_index).ok
    # compaction folds the log into a new generation; the answers stay the same
    _, view = writer.put("NEW-2", {"title": "another shoe", "images": [data_url(3)]})
    assert writer.compact()
    assert writer.store.catalog.generation == generation + 1
    assert writer.store.catalog.delta_size() == 0
    for service in (one, two):
        assert top_image(service, png(3)) == view["images"][0]["item_id"]
    assert check_index(shop_index).ok


def test_filters_apply_to_base_and_log_alike(
    replicas: tuple[ProductWriter, SearchService, SearchService],
) -> None:
    writer, one, two = replicas
    before = product_skus(one, category="hats")
    assert before  # the base catalog has hats
    for n in range(6):
        category = "hats" if n % 2 else "boots"
        writer.put(f"D-{n}", {"title": f"delta {n}", "images": [data_url(10 + n)],
                              "category": category, "price": 100 + n})  # fmt: skip
    gone = sorted(before)[0]
    writer.delete(gone)
    writer.patch(sorted(before)[1], {"category": "boots"})
    moved = sorted(before)[1]
    expected_hats = (before - {gone, moved}) | {"D-1", "D-3", "D-5"}
    for service in (one, two):
        assert product_skus(service, category="hats") == expected_hats
        assert product_skus(service, category="boots") >= {"D-0", "D-2", "D-4", moved}
        assert product_skus(service, price_min=102, price_max=104) == {"D-2", "D-3", "D-4"}
        # k matches come back whenever k exist, from base and log together
        request = SearchRequest(text="x", target="products", k=3, filters={"category": "hats"})
        assert len(service.search(request).hits) == 3


def test_compaction_while_reading_changes_no_answer(
    replicas: tuple[ProductWriter, SearchService, SearchService], shop_index: Path
) -> None:
    writer, one, _ = replicas
    ids = {}
    for n in range(4):
        _, view = writer.put(f"C-{n}", {"title": f"c {n}", "images": [data_url(40 + n)]})
        ids[n] = view["images"][0]["item_id"]
    errors: list[BaseException] = []
    answers: list[bool] = []
    stop = threading.Event()

    def read() -> None:
        try:
            while not stop.is_set():
                for item_id in ids.values():
                    part = QueryPart(item=item_id)
                    hits = one.search(SearchRequest(parts=(part,), target=IMAGES, k=1)).hits
                    answers.append(bool(hits) and hits[0].id == item_id)
        except BaseException as err:  # noqa: BLE001 - reported by the test below
            errors.append(err)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for round_ in range(3):
            writer.patch(f"C-{round_}", {"price": round_})
            writer.put(f"X-{round_}", {"title": f"x {round_}", "images": [data_url(60 + round_)]})
            assert writer.compact()
    finally:
        stop.set()
        reader.join()
    assert not errors, errors
    assert answers and all(answers)
    assert check_index(shop_index).ok


def test_a_write_past_the_threshold_compacts_in_the_background(shop_index: Path) -> None:
    service = open_for_search(shop_index, cpu_config())
    writer = open_writer(service, compact_rows=4)
    assert writer is not None
    try:
        generation = writer.store.catalog.generation
        for n in range(3):
            writer.put(f"B-{n}", {"title": f"b {n}", "images": [data_url(80 + n)]})
        writer.close()  # waits for the background compaction
        assert writer.store.catalog.generation > generation
        assert writer.store.catalog.delta_size() < 4
        for n in range(3):
            assert top_image(service, png(80 + n)) is not None
        assert check_index(shop_index).ok
    finally:
        writer.close()
        service.close()


def test_an_index_run_compacts_the_log_and_keeps_http_writes(
    replicas: tuple[ProductWriter, SearchService, SearchService], shop_index: Path
) -> None:
    writer, one, _ = replicas
    _, view = writer.put("H-1", {"title": "http only", "images": [data_url(90)]})
    generation = writer.store.catalog.generation
    assert writer.store.catalog.delta_size() > 0
    catalog = shop_index.parent / "shop" / "products.csv"
    run_ok("index", "--catalog", catalog, "--index", shop_index, "--quiet")  # an upsert
    assert writer.store.catalog.delta_size() == 0
    assert writer.store.catalog.generation == generation + 1
    assert top_image(one, png(90)) == view["images"][0]["item_id"]
    assert check_index(shop_index).ok


def test_writes_go_on_while_a_compaction_builds_its_files(
    replicas: tuple[ProductWriter, SearchService, SearchService], shop_index: Path
) -> None:
    writer, one, two = replicas
    writer.lock_wait_s = 0.0  # a write that had to wait for the writer lock would fail
    _, first = writer.put("W-1", {"title": "before the snapshot", "images": [data_url(100)]})
    doomed = sorted(product_skus(one))[0]
    generation = writer.store.catalog.generation
    with IndexStore.open(shop_index) as store, Compaction(store) as compaction:
        assert compaction.build()  # the faiss files of the next generation, built unlocked
        _, second = writer.put("W-2", {"title": "after the snapshot", "images": [data_url(101)]})
        writer.delete(doomed)
        writer.patch("W-1", {"price": 12.5})
        assert compaction.swap(0.0)
    catalog = writer.store.catalog
    assert catalog.generation == generation + 1
    assert catalog.delta_size() > 0  # what was written meanwhile stays in the log
    for service in (one, two):
        assert top_image(service, png(100)) == first["images"][0]["item_id"]
        assert top_image(service, png(101)) == second["images"][0]["item_id"]
        assert doomed not in product_skus(service)
        assert "W-1" in product_skus(service, price_min=12, price_max=13)
    assert writer.get("W-1")["price"] == 12.5
    assert not (shop_index / COMPACT_DIR).exists()
    assert check_index(shop_index).ok


def test_a_compaction_the_index_run_overtook_is_discarded(
    replicas: tuple[ProductWriter, SearchService, SearchService], shop_index: Path
) -> None:
    writer, one, _ = replicas
    _, view = writer.put("R-1", {"title": "raced", "images": [data_url(110)]})
    generation = writer.store.catalog.generation
    with IndexStore.open(shop_index) as store, Compaction(store) as compaction:
        assert compaction.build()
        assert writer.compact() is False  # one compaction at a time per index directory
        catalog = shop_index.parent / "shop" / "products.csv"
        run_ok("index", "--catalog", catalog, "--index", shop_index, "--quiet")
        assert not compaction.swap(0.0)  # the index run compacted first: nothing swapped
    assert writer.store.catalog.generation == generation + 1
    assert top_image(one, png(110)) == view["images"][0]["item_id"]
    assert check_index(shop_index).ok


def test_a_catalog_that_shrank_by_half_compacts_by_rebuilding(
    replicas: tuple[ProductWriter, SearchService, SearchService], shop_index: Path
) -> None:
    writer, one, _ = replicas
    skus = sorted(product_skus(one))
    kept = skus[: len(skus) // 3]
    for sku in skus[len(kept) :]:
        writer.delete(sku)
    with IndexStore.open(shop_index) as store:
        # past RETRAIN_GROWTH the index is rebuilt, which only the full compaction does
        assert compact_beside_writers(store, 0.0) is None
    generation = writer.store.catalog.generation
    assert writer.compact()
    assert writer.store.catalog.generation == generation + 1
    assert writer.store.catalog.delta_size() == 0
    assert product_skus(one) == set(kept)
    assert check_index(shop_index).ok


def test_stored_images_of_replaced_products_are_deleted_by_repair_once_old(
    replicas: tuple[ProductWriter, SearchService, SearchService], shop_index: Path
) -> None:
    writer, one, _ = replicas
    writer.put("G-1", {"title": "first photo", "images": [data_url(120)]})
    writer.put("G-2", {"title": "kept", "images": [data_url(121)]})
    blobs = set((shop_index / BLOBS).glob("*/*"))
    assert len(blobs) == 2
    writer.patch("G-1", {"images": [data_url(122)]})  # the first photo is no longer used
    writer.delete("G-2")
    writer.close()
    report = check_index(shop_index)
    assert report.ok and report.counts["unused_blobs"] == 2  # noted, not damage
    # young ones may belong to a write in flight: kept
    assert repair_index(shop_index).counts["unused_blobs"] == 2
    assert blobs <= set((shop_index / BLOBS).glob("*/*"))
    old = time.time() - UNUSED_BLOB_GRACE_S - 60
    for path in blobs:
        os.utime(path, (old, old))
    repaired = repair_index(shop_index)
    assert repaired.ok and "unused_blobs" not in repaired.counts
    assert any("deleted 2 stored images" in line for line in repaired.repaired)
    assert not any(path.exists() for path in blobs)
    [current] = (shop_index / BLOBS).glob("*/*")  # G-1's new photo stays, and is found
    assert top_image(one, png(122)) == writer.get("G-1")["images"][0]["item_id"]
    assert current.is_file()
