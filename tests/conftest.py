"""Shared fixtures: a tiny real open_clip model as a `local-dir:` folder, and state in tmp_path."""

from __future__ import annotations

import os
from collections.abc import Iterator
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


@pytest.fixture(scope="session")
def multilingual_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """`--model` values of the tiny multilingual models (tests/multilingual.py: XLM-R, NLLB and
    SigLIP-i18n layouts), by kind."""
    from multilingual import WRITERS

    root = tmp_path_factory.mktemp("multilingual")
    return {kind: f"local-dir:{write(root / kind)}" for kind, write in WRITERS.items()}


# OpenVINO, once loaded into a process, changes the rounding of later torch CPU ops there
# (in-process and forked-worker preprocessing stopped being bit-identical) and crashed DataLoader
# fork tests that ran after it in the same pytest process. So the suite runs the model with torch,
# set for the whole session because module-scoped fixtures load models before any function-scoped
# fixture runs; the tests of the exported runtime unset it, carry the `runtime` marker and run
# last (pytest_collection_modifyitems below).
os.environ["MMSEARCH_BACKEND"] = "torch"


@pytest.fixture(scope="session")
def export_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One exported-graph cache for the session: each tiny model exports once (~5 s), not once
    per test, and nothing is written to the user's ~/.cache."""
    return tmp_path_factory.mktemp("exports")


@pytest.fixture(autouse=True)
def isolated_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, export_cache: Path) -> Path:
    """Point every piece of state (index dir, caches) at tmp_path, stay offline, and run the
    model on the CPU so results compare exactly on machines with a GPU too."""
    monkeypatch.setenv("MMSEARCH_INDEX", str(tmp_path / "indexes" / "default"))
    monkeypatch.setenv("MMSEARCH_DEVICE", "cpu")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("MMSEARCH_EXPORT_CACHE", str(export_cache))
    monkeypatch.setenv("MMSEARCH_HASH_CACHE", str(tmp_path / "hashes.json"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "photos"
    make_images(folder, 12)
    return folder


LEVELS = ("unit", "integration", "e2e")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The folder a test lives in is its level: unit (the library, no model), integration (the
    tiny real model in this process: CLI, HTTP app, catalog), e2e (subprocesses, servers,
    kills, browsers, a Ray cluster). e2e tests are `slow`, so `-m "not slow"` is the fast loop.
    Tests that load the exported runtime (OpenVINO) into this process run after all others."""
    for item in items:
        level = next((part for part in item.path.parts if part in LEVELS), None)
        if level == "e2e":
            item.add_marker(pytest.mark.slow)
    items.sort(key=lambda item: item.get_closest_marker("runtime") is not None)


@pytest.fixture(autouse=True)
def openvino_only_in_runtime_tests(request: pytest.FixtureRequest) -> Iterator[None]:
    """A test without the `runtime` marker must not load OpenVINO into this process: the tests
    that run after it (torch rounding, forked DataLoader workers) then fail or crash the whole
    pytest process with a segfault and no summary. The usual cause is a library call built
    with `EmbedConfig(...)` (backend `auto`: OpenVINO) instead of `testdata.cpu_config()`."""
    import sys

    loaded = "openvino" in sys.modules
    yield
    if not loaded and "openvino" in sys.modules and not request.node.get_closest_marker("runtime"):
        pytest.fail(
            "this test loaded OpenVINO into the pytest process without the `runtime` marker; "
            "build its EmbedConfig with testdata.cpu_config() (backend torch) or mark it"
        )
