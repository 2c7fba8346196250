"""Stored images (storage/blobs.py): content-addressed, and only unused ones past the grace
period are deleted, with the URL records that pointed at them."""

from __future__ import annotations

import os
import time
from pathlib import Path

from retrieval.storage.blobs import (
    UNUSED_BLOB_GRACE_S,
    UrlRecord,
    drop_unused_blobs,
    read_url_record,
    store_blob,
    unused_blobs,
    write_url_record,
)


def test_unused_blobs_past_the_grace_period_go_with_their_url_records(tmp_path: Path) -> None:
    used = store_blob(tmp_path, b"used bytes", "png")
    young = store_blob(tmp_path, b"young bytes", "png")
    old = store_blob(tmp_path, b"old bytes", "jpg")
    assert store_blob(tmp_path, b"old bytes", "jpg") == old  # the same bytes are stored once
    aged = time.time() - UNUSED_BLOB_GRACE_S - 1
    for path in (used, old):
        os.utime(path, (aged, aged))
    for url, blob in (("https://cdn.test/a.png", used), ("https://cdn.test/b.jpg", old)):
        write_url_record(tmp_path, UrlRecord(url, blob.name, '"v1"', None, time.time()))
    assert unused_blobs(tmp_path, {used.name}) == sorted([young, old])
    assert drop_unused_blobs(tmp_path, {used.name}, time.time()) == (1, len(b"old bytes"))
    assert used.is_file() and young.is_file() and not old.exists()
    assert read_url_record(tmp_path, "https://cdn.test/a.png") is not None
    assert read_url_record(tmp_path, "https://cdn.test/b.jpg") is None
    assert len(list((tmp_path / "fetched").glob("*/*.json"))) == 1  # b's record is deleted


def test_an_index_without_stored_images_has_none_unused(tmp_path: Path) -> None:
    assert unused_blobs(tmp_path, set()) == []
    assert drop_unused_blobs(tmp_path, set(), time.time()) == (0, 0)
