"""The HTTP app on the default CPU runtime (OpenVINO), not only on torch: the same answers as
torch eager, under concurrent text, image and batched queries (a concurrency defect of the
default runtime was once found only by a soak run, because every HTTP test pinned torch)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from httpkit import CAPTIONS, index_photos
from PIL import Image
from testdata import cpu_config

from retrieval.compose import open_for_search
from retrieval.config import ServeConfig
from retrieval.http import create_app

pytestmark = pytest.mark.runtime
TOLERANCE = 1e-4  # the runtime's promise against open_clip fp32 eager (embedders/runtime.py)


@pytest.fixture(scope="module")
def photo_index(tiny_model: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return index_photos(tiny_model, tmp_path_factory.mktemp("photos"))


def app_client(directory: Path, backend: str) -> Iterator[TestClient]:
    config = ServeConfig(allowed_hosts=("testserver",))  # TestClient's Host, as in httpkit
    embed = cpu_config(backend=backend)
    with (
        open_for_search(directory, embed, batching=config.batching) as service,
        TestClient(create_app(service, config)) as client,
    ):
        yield client


@pytest.fixture(scope="module")
def runtime_client(photo_index: Path) -> Iterator[TestClient]:
    yield from app_client(photo_index, "openvino")


@pytest.fixture(scope="module")
def torch_client(photo_index: Path) -> Iterator[TestClient]:
    yield from app_client(photo_index, "torch")


def png(color: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), color).save(buffer, "PNG")
    return buffer.getvalue()


def ranked(answer: dict) -> list[tuple[int, float]]:
    return [(hit["id"], hit["score"]) for hit in answer["results"]]


def assert_same(got: list[tuple[int, float]], want: list[tuple[int, float]]) -> None:
    assert [i for i, _ in got] == [i for i, _ in want]
    assert all(abs(a - b) <= TOLERANCE for (_, a), (_, b) in zip(got, want, strict=True))


def test_the_runtime_answers_as_torch_does(
    runtime_client: TestClient, torch_client: TestClient
) -> None:
    for text in CAPTIONS:
        params = {"q": text, "k": 5}
        got, want = (
            runtime_client.get("/search", params=params),
            torch_client.get("/search", params=params),
        )
        assert got.status_code == want.status_code == 200
        assert_same(ranked(got.json()), ranked(want.json()))
    files = {"file": ("red.png", png("red"), "image/png")}
    got = runtime_client.post("/search/image", files=files, params={"k": 5})
    want = torch_client.post("/search/image", files=files, params={"k": 5})
    assert got.status_code == want.status_code == 200
    assert_same(ranked(got.json()), ranked(want.json()))


def test_concurrent_text_and_image_queries_on_the_runtime_agree_with_one_at_a_time(
    runtime_client: TestClient,
) -> None:
    texts = [f"{caption} {n}" for n in range(6) for caption in CAPTIONS]  # distinct: no cache
    alone = {
        text: ranked(runtime_client.get("/search", params={"q": text}).json()) for text in texts
    }
    colors = ["red", "green", "blue", "white"]

    def text_query(text: str) -> tuple[str, list[tuple[int, float]]]:
        answer = runtime_client.get("/search", params={"q": text})
        assert answer.status_code == 200, answer.text
        return text, ranked(answer.json())

    def image_query(color: str) -> int:
        files = {"file": (f"{color}.png", png(color), "image/png")}
        return runtime_client.post("/search/image", files=files).status_code

    with ThreadPoolExecutor(8) as pool:
        images = [pool.submit(image_query, color) for color in colors * 3]
        together = dict(pool.map(text_query, texts))
    assert all(future.result() == 200 for future in images)
    for text in texts:
        assert_same(together[text], alone[text])
