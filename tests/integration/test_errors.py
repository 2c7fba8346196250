"""Each error carries its exit code and HTTP status (errors.py), so the CLI and the HTTP app
cannot drift apart; no traceback is reachable from a bad setting or an unwritable index."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from clirun import run_subprocess
from fastapi import FastAPI
from fastapi.testclient import TestClient

from retrieval import errors
from retrieval.http.errors import install_error_handlers

ERRORS = [
    cls
    for cls in vars(errors).values()
    if isinstance(cls, type) and issubclass(cls, errors.MmsearchError)
]


@pytest.mark.parametrize("cls", ERRORS, ids=lambda cls: cls.__name__)
def test_every_error_says_its_exit_code_and_http_status(cls: type) -> None:
    assert cls.exit_code in {1, 2, 74, 75}
    assert 400 <= cls.http_status < 600 and cls.http_code
    if cls is not errors.MmsearchError:  # the base is the unknown case: 1 and 500
        assert (cls.exit_code, cls.http_status) != (1, 500), cls


def test_bad_options_are_their_own_error_and_still_bad_input() -> None:
    assert issubclass(errors.InvalidOptionError, errors.InvalidQueryError)
    assert errors.InvalidOptionError.http_code != errors.InvalidQueryError.http_code
    from retrieval.config import EmbedConfig

    with pytest.raises(errors.InvalidOptionError, match="--device"):
        EmbedConfig(device="gpu0")


def test_the_http_status_and_the_exit_code_come_from_the_same_error(tmp_path: Path) -> None:
    app = FastAPI()
    directory = tmp_path / "secret-layout" / "index"
    install_error_handlers(app, directory)

    @app.get("/busy")
    def busy() -> None:
        raise errors.IndexBusyError(f"another run is writing to {directory}; wait")

    @app.get("/missing")
    def missing() -> None:
        raise errors.ItemNotFoundError("no item with id 9 in this index")

    client = TestClient(app)
    answer = client.get("/busy")
    assert answer.status_code == errors.IndexBusyError.http_status == 503
    assert answer.json()["error"] == "index_busy" and answer.headers["Retry-After"]
    # The server's own paths never reach a client.
    assert str(directory) not in answer.text and "the index" in answer.json()["message"]
    answer = client.get("/missing")
    assert answer.status_code == 404 and answer.json()["error"] == "not_found"


def test_a_bad_thread_count_is_one_line_not_a_traceback(tiny_model: str, tmp_path: Path) -> None:
    env = {**os.environ, "MMSEARCH_THREADS": "abc", "MMSEARCH_BACKEND": "openvino"}
    folder = tmp_path / "photos"
    folder.mkdir()
    result = run_subprocess("index", folder, "--model", tiny_model, "-q", env=env, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "MMSEARCH_THREADS='abc' is not a thread count" in result.stderr


def test_an_index_directory_that_cannot_be_created_is_one_line(
    tiny_model: str, tmp_path: Path
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    folder = tmp_path / "photos"
    folder.mkdir()
    result = run_subprocess(
        "index", folder, "--model", tiny_model, "--index", blocker / "index", "-q", timeout=120
    )
    assert result.returncode == 74, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("error: ") and "check the path" in result.stderr


def test_an_unknown_backend_is_refused_before_any_work_from_the_one_registry(
    tmp_path: Path,
) -> None:
    from clirun import invoke

    from retrieval.embedders import runtime

    assert ("auto", "torch", *runtime.ENGINES) == runtime.BACKENDS
    result = invoke("index", tmp_path, "--backend", "tensorrt", "--index", tmp_path / "idx")
    assert result.exit_code == 2
    words = " ".join(result.output.replace("│", " ").split())  # typer draws a wrapped box
    assert "unknown --backend 'tensorrt'; use one of auto, torch, openvino, onnxruntime" in words
    assert not (tmp_path / "idx").exists()  # refused before anything was written
