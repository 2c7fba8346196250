"""Shared fixtures: a tiny real open_clip model as a `local-dir:` folder, and state in tmp_path."""

from __future__ import annotations

from pathlib import Path

import pytest
from testdata import make_images, write_tiny_model


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir: Path) -> str:
    """The `--model` value for the tiny model."""
    return f"local-dir:{tiny_model_dir}"


@pytest.fixture(autouse=True)
def isolated_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point every piece of state (index dir, caches) at tmp_path, stay offline, and run the
    model on the CPU so results compare exactly on machines with a GPU too."""
    monkeypatch.setenv("MMSEARCH_INDEX", str(tmp_path / "indexes" / "default"))
    monkeypatch.setenv("MMSEARCH_DEVICE", "cpu")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "photos"
    make_images(folder, 12)
    return folder
