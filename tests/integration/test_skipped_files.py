"""A file that does not decode is remembered by its content key (catalog.skipped_files): a re-run
over an unchanged folder reports it again without loading the model; changed bytes are retried."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from testdata import cpu_config, make_images

from retrieval.compose import open_for_indexing
from retrieval.ingest.sync import sync_images_and_texts
from retrieval.types import ModelSpec


def no_model() -> None:
    raise AssertionError("the run loaded the model")


def index(folder: Path, index_dir: Path, model: str, *, load_model: bool = True):
    store, load = open_for_indexing(index_dir, ModelSpec(model), cpu_config())
    with store:
        return sync_images_and_texts(store, [folder], load if load_model else no_model)


@pytest.fixture
def folder_with_broken_file(tmp_path: Path) -> Path:
    folder = tmp_path / "photos"
    make_images(folder, 3)
    (folder / "broken.jpg").write_bytes(b"not an image at all\n")
    return folder


def test_unchanged_broken_file_is_reported_without_loading_the_model(
    folder_with_broken_file: Path, tmp_path: Path, tiny_model: str
) -> None:
    index_dir = tmp_path / "index"
    first = index(folder_with_broken_file, index_dir, tiny_model)
    assert first.indexed == 3
    assert [(s.path.rsplit("/", 1)[-1], s.reason) for s in first.skipped] == [
        ("broken.jpg", "not-an-image")
    ]
    again = index(folder_with_broken_file, index_dir, tiny_model, load_model=False)
    assert again.embedded == 0 and again.unchanged == 3
    assert [(s.path, s.reason, s.detail) for s in again.skipped] == [
        (s.path, s.reason, s.detail) for s in first.skipped
    ]
    # A new mtime with the same bytes is hashed, recognised, and still needs no model.
    broken = folder_with_broken_file / "broken.jpg"
    os.utime(broken, ns=(1, 1))
    touched = index(folder_with_broken_file, index_dir, tiny_model, load_model=False)
    assert [s.reason for s in touched.skipped] == ["not-an-image"]


def test_changed_broken_file_is_retried(
    folder_with_broken_file: Path, tmp_path: Path, tiny_model: str
) -> None:
    index_dir = tmp_path / "index"
    index(folder_with_broken_file, index_dir, tiny_model)
    broken = folder_with_broken_file / "broken.jpg"
    broken.write_bytes(b"")
    with pytest.raises(AssertionError, match="loaded the model"):
        index(folder_with_broken_file, index_dir, tiny_model, load_model=False)
    empty = index(folder_with_broken_file, index_dir, tiny_model)
    assert [s.reason for s in empty.skipped] == ["empty"]
    # Now it decodes: it is indexed, and its record goes.
    make_images(tmp_path / "fresh", 1, seed=9)[0].replace(broken)
    fixed = index(folder_with_broken_file, index_dir, tiny_model)
    assert fixed.skipped == [] and fixed.indexed == 1 and fixed.unchanged == 3
    later = index(folder_with_broken_file, index_dir, tiny_model, load_model=False)
    assert later.skipped == [] and later.unchanged == 4


def test_deleted_broken_file_is_forgotten(
    folder_with_broken_file: Path, tmp_path: Path, tiny_model: str
) -> None:
    index_dir = tmp_path / "index"
    index(folder_with_broken_file, index_dir, tiny_model)
    broken = folder_with_broken_file / "broken.jpg"
    data = broken.read_bytes()
    broken.unlink()
    assert index(folder_with_broken_file, index_dir, tiny_model, load_model=False).skipped == []
    # Back with the same bytes: it is a new file to the index, tried once more.
    broken.write_bytes(data)
    with pytest.raises(AssertionError, match="loaded the model"):
        index(folder_with_broken_file, index_dir, tiny_model, load_model=False)
