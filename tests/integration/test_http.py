"""The HTTP API through TestClient: every endpoint, every error path, parity with the CLI."""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import pytest
from clirun import run_ok
from fastapi.testclient import TestClient
from httpkit import cli_query, index_photos, index_shop, open_app
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from retrieval.config import ServeConfig
from retrieval.search.service import SearchRequest, SearchResult, SearchService

KEY = "s3cret-key"


@pytest.fixture(scope="module")
def photo_index(tiny_model: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return index_photos(tiny_model, tmp_path_factory.mktemp("photos"))


@pytest.fixture(scope="module")
def client(photo_index: Path) -> Iterator[TestClient]:
    with open_app(photo_index) as (app, _), TestClient(app) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def shop_index(tiny_model: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return index_shop(tiny_model, tmp_path_factory.mktemp("shop"))


@pytest.fixture(scope="module")
def shop(shop_index: Path) -> Iterator[TestClient]:
    with open_app(shop_index) as (app, _), TestClient(app) as test_client:
        yield test_client


def photo(index: Path, number: int) -> Path:
    return index.parent / "photos" / f"img_{number:03d}.png"


def png_bytes(size: tuple[int, int] = (40, 30), color: str = "red") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, "PNG")
    return buffer.getvalue()


# -- searches: same hits as `mmsearch query --json` --------------------------------------------
@pytest.mark.parametrize("target", ["images", "texts"])
def test_text_search_returns_the_cli_hits_in_the_cli_order(
    client: TestClient, photo_index: Path, target: str
) -> None:
    want = cli_query(photo_index, "a red shoe", "--target", target, "-k", "5")
    got = client.get("/search", params={"q": "a red shoe", "target": target, "k": 5}).json()
    assert got["results"] == want["results"]
    assert got["query"] == want["query"]
    posted = client.post("/search", json={"text": "a red shoe", "target": target, "k": 5})
    assert posted.status_code == 200
    assert posted.json()["results"] == want["results"]


@pytest.mark.parametrize(
    ("index_name", "args", "params"),
    [
        ("photo", ["a red shoe", "-k", "5"], {"q": "a red shoe", "k": 5}),
        ("photo", ["a blue hat", "--target", "texts"], {"q": "a blue hat", "target": "texts"}),
        (
            "shop",
            ["a hat", "--filter", "category=hats", "--text-weight", "0.7", "--offset", "1"],
            {"q": "a hat", "category": "hats", "text_weight": 0.7, "offset": 1},
        ),
    ],
)
def test_http_answer_is_byte_for_byte_the_cli_json_plus_took_ms(
    request: pytest.FixtureRequest, index_name: str, args: list[str], params: dict
) -> None:
    directory = request.getfixturevalue(f"{index_name}_index")
    test_client = request.getfixturevalue("client" if index_name == "photo" else "shop")
    printed = run_ok("query", *args, "--json", "--index", directory, "--device", "cpu")
    assert printed.endswith("}\n") and printed.count("\n") == 1
    answer = test_client.get("/search", params=params)
    assert answer.status_code == 200
    took = json.dumps(answer.json()["took_ms"])
    assert answer.text == printed[:-2] + ',"took_ms":' + took + "}"


def test_image_search_by_upload_and_base64_returns_the_cli_hits(
    client: TestClient, photo_index: Path
) -> None:
    query = photo(photo_index, 3)
    want = cli_query(photo_index, "--image", query, "-k", "4")["results"]
    data = query.read_bytes()
    upload = client.post("/search/image", params={"k": 4}, files={"file": ("q.png", data)})
    assert upload.status_code == 200
    assert upload.json()["results"] == want
    assert upload.json()["results"][0]["path"] == str(query)
    assert upload.json()["query"]["image"] == "q.png"
    as_b64 = base64.b64encode(data).decode()
    for image_b64 in (as_b64, "data:image/png;base64," + as_b64):
        posted = client.post("/search", json={"image_b64": image_b64, "k": 4})
        assert posted.json()["results"] == want


def test_offset_pages_through_the_same_ranking(client: TestClient) -> None:
    full = client.get("/search", params={"q": "lake", "k": 6}).json()["results"]
    page = client.get("/search", params={"q": "lake", "k": 3, "offset": 2}).json()["results"]
    assert page == full[2:5]
    assert [hit["rank"] for hit in page] == [3, 4, 5]


# -- items and images ---------------------------------------------------------------------------
def test_items_show_stored_fields_and_404_when_unknown(
    client: TestClient, photo_index: Path
) -> None:
    hit = client.get("/search", params={"q": "x", "k": 1}).json()["results"][0]
    item = client.get(f"/items/{hit['id']}").json()
    assert item["path"] == hit["path"] and item["collection"] == "images"
    assert item["image_url"] == f"/items/{hit['id']}/image"
    text_hit = client.get("/search", params={"q": "x", "target": "texts", "k": 1}).json()
    text_item = client.get(f"/items/{text_hit['results'][0]['id']}").json()
    assert text_item["text"] == text_hit["results"][0]["text"] and text_item["image_url"] is None
    missing = client.get("/items/987654")
    assert missing.status_code == 404 and missing.json()["error"] == "not_found"


def test_item_image_serves_the_indexed_file_and_cached_thumbnails(client: TestClient) -> None:
    hit = client.get("/search", params={"q": "x", "k": 1}).json()["results"][0]
    original = client.get(f"/items/{hit['id']}/image")
    assert original.status_code == 200 and original.headers["content-type"] == "image/png"
    assert original.content == Path(hit["path"]).read_bytes()
    thumb = client.get(f"/items/{hit['id']}/image", params={"size": 16})
    assert thumb.headers["content-type"] == "image/jpeg"
    with Image.open(io.BytesIO(thumb.content)) as image:
        assert max(image.size) == 16  # 48x40 source, aspect kept
    assert client.get(f"/items/{hit['id']}/image", params={"size": 16}).content == thumb.content


@pytest.mark.parametrize(
    "path",
    [
        "/items/..%2F..%2F..%2Fetc%2Fpasswd/image",
        "/items/1%2F..%2F..%2Fetc%2Fpasswd/image",
        "/items/-1/image",
        "/items/1/image/../../../../etc/passwd",
        "/static/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        "/static/..%2F..%2Fhttp.py",
        "/items/99999999999999999999/image",
    ],
)
def test_image_route_never_serves_paths_from_the_request(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code in (404, 422)
    assert b"root:" not in response.content and b"create_app" not in response.content


def test_text_items_have_no_image(client: TestClient) -> None:
    hit = client.get("/search", params={"q": "x", "target": "texts", "k": 1}).json()["results"][0]
    assert client.get(f"/items/{hit['id']}/image").status_code == 404


def test_files_changed_or_swapped_after_indexing_are_not_served(
    tiny_model: str, tmp_path: Path
) -> None:
    directory = index_photos(tiny_model, tmp_path, count=3)
    with open_app(directory) as (app, service), TestClient(app) as client:
        ids = {item.path: item.id for item in service.store.catalog.iter_items("images")}
        edited, linked, deleted = (str(photo(directory, n)) for n in range(3))
        Path(edited).write_bytes(png_bytes((64, 64)))
        os.remove(linked)
        os.symlink("/etc/passwd", linked)
        os.remove(deleted)
        for path in (edited, linked, deleted):
            response = client.get(f"/items/{ids[path]}/image")
            assert response.status_code == 404, response.text
            assert "re-index" in response.json()["message"]


# -- errors: always JSON, never 500 for bad input -------------------------------------------------
@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "error"),
    [
        ("get", "/search", {"params": {"q": "   "}}, 422, "validation"),
        ("get", "/search", {"params": {}}, 422, "validation"),
        ("get", "/search", {"params": {"q": "x", "k": 0}}, 422, "validation"),
        ("get", "/search", {"params": {"q": "x", "k": 5000}}, 422, "validation"),
        ("get", "/search", {"params": {"q": "x", "target": "shoes"}}, 422, "validation"),
        ("get", "/search", {"params": {"q": "x", "offset": 9001}}, 422, "validation"),
        ("get", "/search", {"params": {"q": "x", "colour": "red"}}, 422, "invalid_query"),
        ("get", "/search", {"params": {"q": "x", "target": "products"}}, 422, "invalid_query"),
        ("get", "/search", {"params": [("q", "x"), ("a", "1"), ("a", "2")]}, 422, "invalid_query"),
        ("get", "/search", {"params": {"q": "x", "text_weight": "nan"}}, 422, "validation"),
        ("post", "/search", {"json": {}}, 422, "invalid_query"),
        ("post", "/search", {"json": {"text": " \n"}}, 422, "validation"),
        ("post", "/search", {"json": {"text": "x", "image_b64": "AAAA"}}, 422, "invalid_query"),
        ("post", "/search", {"json": {"text": "x", "top_k": 3}}, 422, "validation"),
        ("post", "/search", {"json": {"text": "x", "filters": {"a": True}}}, 422, "invalid_query"),
        ("post", "/search", {"json": {"text": "x", "filters": {"a": [[1]]}}}, 422, "validation"),
        ("post", "/search", {"json": {"image_b64": "not base64!"}}, 400, "bad_request"),
        ("post", "/search", {"json": {"image_b64": ""}}, 422, "image_decode"),
        (
            "post",
            "/search",
            {"content": b"{nope", "headers": {"content-type": "application/json"}},
            400,
            "bad_request",
        ),  # fmt: skip
        ("post", "/search/image", {"data": {"k": "3"}}, 422, "validation"),
        (
            "post",
            "/search/image",
            {"files": {"file": ("x.png", b"GIF89a broken")}},
            422,
            "image_decode",
        ),  # fmt: skip
        ("post", "/search/image", {"files": {"file": ("x.png", b"")}}, 422, "image_decode"),
        ("get", "/items/abc", {}, 422, "validation"),
        ("get", "/items/1/image", {"params": {"size": 5000}}, 422, "validation"),
        ("get", "/nowhere", {}, 404, "not_found"),
        ("delete", "/search", {}, 405, "method_not_allowed"),
    ],
)
def test_bad_requests_get_a_json_4xx_saying_what_was_wrong(
    client: TestClient, method: str, path: str, kwargs: dict, status: int, error: str
) -> None:
    response = client.request(method.upper(), path, **kwargs)
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == error and body["message"]


def test_undecodable_upload_names_the_reason(client: TestClient) -> None:
    truncated = png_bytes((64, 64))[:60]
    response = client.post("/search/image", files={"file": ("cut.png", truncated)})
    assert response.status_code == 422
    assert response.json()["reason"] in {"truncated", "corrupt"}


def test_unexpected_errors_are_a_logged_json_500(
    photo_index: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    with open_app(photo_index) as (app, service), TestClient(app) as client:

        def broken(*_: object) -> None:
            raise RuntimeError("disk on fire")

        monkeypatch.setattr(service, "search", broken)
        with caplog.at_level(logging.ERROR):
            response = client.get("/search", params={"q": "x"})
    assert response.status_code == 500
    assert response.json() == {
        "error": "internal",
        "message": "internal error; the server log has the traceback",
    }
    assert "disk on fire" in caplog.text and "Traceback" in caplog.text


# -- limits -------------------------------------------------------------------------------------
def test_uploads_over_the_byte_cap_get_413(photo_index: Path) -> None:
    config = ServeConfig(max_upload_bytes=2000)
    big = png_bytes((200, 200), "white") + b"\0" * 3000
    huge = b"x" * (config.max_upload_bytes * 2 + 70_000)

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(huge), 8192):
            yield huge[start : start + 8192]

    with open_app(photo_index, config) as (app, _), TestClient(app) as client:
        upload = client.post("/search/image", files={"file": ("big.png", big)})
        as_b64 = client.post("/search", json={"image_b64": base64.b64encode(big).decode()})
        declared = client.post("/search/image", files={"file": ("huge.png", huge)})
        chunked = client.post(
            "/search", content=chunks(), headers={"content-type": "application/json"}
        )
    for response in (upload, as_b64, declared, chunked):
        assert response.status_code == 413, response.text
        assert response.json()["error"] == "too_large"
        assert "--max-upload-mb" in response.json()["message"]


@pytest.mark.parametrize(
    "field",
    [
        {"min_score": True},
        {"k": True},
        {"offset": False},
        {"text_weight": True},
        {"collapse": 1},
        {"parts": [{"text": "x", "weight": True}]},
        {"parts": [{"item": True}]},
    ],
)
def test_booleans_are_not_numbers_in_json_bodies(photo_index: Path, field: dict) -> None:
    """Found by schemathesis: pydantic's lax mode read `"min_score": true` as 1.0 and searched
    with it (200). A JSON boolean where the schema says number (or a number where it says
    boolean) is a client's mistake: 422, saying which field."""
    body = {"text": "a photo"} | field if "parts" not in field else field
    with open_app(photo_index) as (app, _), TestClient(app) as client:
        answer = client.post("/search", json=body)
        assert client.post("/search", json={"text": "a photo", "k": 10.0}).status_code == 200
    assert answer.status_code == 422, answer.text
    assert next(iter(field)) in answer.json()["message"]


def test_images_over_the_megapixel_cap_get_422(photo_index: Path) -> None:
    config = ServeConfig(max_megapixels=1.0)
    with open_app(photo_index, config) as (app, _), TestClient(app) as client:
        ok = client.post("/search/image", files={"file": ("ok.png", png_bytes((1000, 1000)))})
        big = client.post("/search/image", files={"file": ("b.png", png_bytes((2000, 1000)))})
    assert ok.status_code == 200
    assert big.status_code == 422
    assert big.json()["reason"] == "too-many-pixels"
    assert "2000x1000" in big.json()["message"] and "--max-megapixels" in big.json()["message"]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def hold_searches(
    service: SearchService, monkeypatch: pytest.MonkeyPatch
) -> tuple[threading.Event, threading.Event]:
    """(entered, release): every search blocks until `release` is set; `entered` is set as soon
    as one is running, i.e. holds a worker slot."""
    release, entered = threading.Event(), threading.Event()
    original = service.search

    def slow(request: SearchRequest) -> SearchResult:
        entered.set()
        release.wait(10)
        return original(request)

    monkeypatch.setattr(service, "search", slow)
    return entered, release


@pytest.mark.anyio
async def test_overload_answers_429_with_retry_after_instead_of_waiting(
    photo_index: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = ServeConfig(max_concurrency=1, max_queue=1, queue_timeout_s=0.3, retry_after_s=2)
    with open_app(photo_index, config) as (app, service):
        entered, release = hold_searches(service, monkeypatch)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as http:
            results: list[httpx.Response] = []

            async def call() -> None:
                results.append(await http.get("/search", params={"q": "x"}))

            async with anyio.create_task_group() as group:
                group.start_soon(call)  # runs, blocked in slow()
                await anyio.to_thread.run_sync(entered.wait)
                group.start_soon(call)  # waits for the slot, gives up after 0.3 s
                await anyio.sleep(0.05)
                refused = await http.get("/search", params={"q": "x"})  # queue full: at once
                await anyio.sleep(0.5)
                release.set()
    assert refused.status_code == 429 and refused.headers["retry-after"] == "2"
    assert refused.json()["error"] == "overloaded"
    assert sorted(r.status_code for r in results) == [200, 429]


@pytest.mark.anyio
async def test_a_full_server_refuses_before_reading_or_validating_and_probes_still_answer(
    photo_index: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under overload most requests are refused, so a refusal must cost next to nothing: it
    comes before routing, validation and the body (a bad request gets 429, not 422), while
    /health, /ready, /stats and /metrics still answer."""
    config = ServeConfig(max_concurrency=1, max_queue=0, retry_after_s=3)
    with open_app(photo_index, config) as (app, service):
        entered, release = hold_searches(service, monkeypatch)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as http:
            busy: list[httpx.Response] = []

            async def hold() -> None:
                busy.append(await http.get("/search", params={"q": "x"}))

            async with anyio.create_task_group() as group:
                group.start_soon(hold)
                await anyio.to_thread.run_sync(entered.wait)
                invalid = await http.get("/search", params={"q": "x", "k": "many"})
                malformed = await http.post(
                    "/search", content=b"{not json", headers={"content-type": "application/json"}
                )
                probes = [await http.get(path) for path in ("/health", "/ready", "/stats")]
                release.set()
            metrics = (await http.get("/metrics")).text
            # once the slot is free the same bad request is judged on its merits again
            judged = await http.get("/search", params={"q": "x", "k": "many"})
    for refused in (invalid, malformed):
        assert refused.status_code == 429, refused.text
        assert refused.headers["retry-after"] == "3"
        assert refused.json()["error"] == "overloaded"
    health, ready, stats = probes
    assert health.status_code == 200 and stats.status_code == 200
    # ASGITransport runs no lifespan, so /ready says "starting" (503): the route answered
    assert ready.status_code != 429 and ready.json()["error"] != "overloaded"
    assert stats.json()["server"]["in_flight"] == 1
    assert busy[0].status_code == 200
    assert 'method="POST",route="<overloaded>",status="429"} 1.0' in metrics
    assert judged.status_code == 422


# -- access ---------------------------------------------------------------------------------------
def test_api_key_guards_every_endpoint_but_health(photo_index: Path) -> None:
    with (
        open_app(photo_index, ServeConfig(api_key=KEY)) as (app, service),
        TestClient(app) as client,
    ):
        image_id = next(service.store.catalog.iter_items("images")).id
        paths = ["/search?q=x", "/stats", "/metrics", "/ready", f"/items/{image_id}"]
        paths.append(f"/items/{image_id}/image")
        assert client.get("/health").status_code == 200
        # the page too: a browser logs in with HTTP Basic (tests/test_http_access.py)
        assert client.get("/").status_code == 401
        assert client.get("/", headers={"X-API-Key": KEY}).status_code == 200
        for path in paths:
            denied = client.get(path)
            assert denied.status_code == 401, path
            assert denied.headers["www-authenticate"] == "Bearer"
            assert client.get(path, headers={"X-API-Key": "wrong"}).status_code == 401
            assert client.get(path, headers={"X-API-Key": KEY}).status_code == 200, path
            bearer = {"Authorization": f"Bearer {KEY}"}
            assert client.get(path, headers=bearer).status_code == 200, path
        upload = client.post("/search/image", files={"file": ("q.png", png_bytes())})
        assert upload.status_code == 401
        assert client.get("/openapi.json").status_code == 401
        schema = client.get("/openapi.json", headers={"X-API-Key": KEY}).json()
        assert {"APIKeyHeader", "HTTPBearer"} <= set(schema["components"]["securitySchemes"])


def test_cors_is_closed_by_default_and_opens_for_configured_origins(photo_index: Path) -> None:
    preflight = {
        "Origin": "https://shop.example",
        "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "X-API-Key",
    }
    with open_app(photo_index) as (app, _), TestClient(app) as client:
        closed = client.get("/search", params={"q": "x"}, headers={"Origin": preflight["Origin"]})
        assert "access-control-allow-origin" not in closed.headers
        assert (
            "access-control-allow-origin"
            not in client.options("/search", headers=preflight).headers
        )
    config = ServeConfig(cors_origins=("https://shop.example",))
    with open_app(photo_index, config) as (app, _), TestClient(app) as client:
        allowed = client.options("/search", headers=preflight)
        assert allowed.status_code == 200
        assert allowed.headers["access-control-allow-origin"] == "https://shop.example"
        other = client.options("/search", headers={**preflight, "Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers


# -- status endpoints ---------------------------------------------------------------------------
def test_health_ready_and_stats(client: TestClient) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/ready").json() == {"ready": True}
    stats = client.get("/stats").json()
    assert stats["collections"]["images"]["count"] == 12
    assert stats["collections"]["texts"]["count"] == 5
    assert stats["has_catalog"] is False and stats["products"] == 0
    assert stats["model"]["dim"] == 32
    assert stats["server"]["max_concurrency"] == ServeConfig().max_concurrency


def test_not_ready_until_warm(photo_index: Path) -> None:
    with open_app(photo_index) as (app, _):
        client = TestClient(app)  # not entered: the lifespan (warm-up) never ran
        response = client.get("/ready")
    assert response.status_code == 503 and response.json()["error"] == "not_ready"


def test_repeated_queries_hit_the_embedding_cache(photo_index: Path) -> None:
    with open_app(photo_index) as (app, _), TestClient(app) as client:
        before = client.get("/stats").json()["server"]
        for _ in range(3):
            client.get("/search", params={"q": "the same words"})
        after = client.get("/stats").json()["server"]
    assert after["texts_embedded"] - before["texts_embedded"] == 1
    assert after["cache_hits"] - before["cache_hits"] == 2


def test_metrics_are_prometheus_text_per_app(photo_index: Path) -> None:
    with open_app(photo_index) as (app, _), TestClient(app) as client:
        client.get("/search", params={"q": "x"})
        client.get("/search", params={"q": ""})
        client.get("/items/424242")
        response = client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }

    def count(route: str, status: str) -> float:
        key = (("method", "GET"), ("route", route), ("status", status))
        return samples.get(("mmsearch_http_requests_total", key), 0)

    assert count("/search", "200") == 1 and count("/search", "422") == 1
    assert count("/items/{item_id}", "404") == 1
    buckets = (("le", "+Inf"), ("method", "GET"), ("route", "/search"))
    assert samples[("mmsearch_http_request_duration_seconds_bucket", buckets)] == 2
    assert samples[("mmsearch_index_items", (("collection", "images"),))] == 12
    assert samples[("mmsearch_texts_embedded", ())] >= 1
    with open_app(photo_index) as (app, _), TestClient(app) as fresh:
        text = fresh.get("/metrics").text
    assert 'route="/search"' not in text  # a second app has its own registry


def test_page_and_docs_are_served(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and "<title>mmsearch</title>" in page.text
    assert client.get("/static/app.js").status_code == 200
    assert client.get("/docs").status_code == 200
    assert "/search/image" in client.get("/openapi.json").json()["paths"]


# -- product catalog ------------------------------------------------------------------------------
def test_product_search_matches_the_cli_with_filters(shop: TestClient, shop_index: Path) -> None:
    want = cli_query(shop_index, "a hat", "--filter", "category=hats", "-k", "5")
    got = shop.get("/search", params={"q": "a hat", "category": "hats", "k": 5}).json()
    assert got["results"] == want["results"]
    assert got["query"]["target"] == "products" and got["query"]["filters"] == {"category": "hats"}
    assert {hit["category"] for hit in got["results"]} == {"hats"}
    assert len(got["results"]) == 3  # every hat, each product once


def test_product_hits_are_grouped_and_carry_catalog_fields(shop: TestClient) -> None:
    results = shop.get("/search", params={"q": "shoes", "k": 20}).json()["results"]
    assert len(results) == 9  # 9 products with 18 images: one hit each
    assert len({hit["product_id"] for hit in results}) == 9
    first = results[0]
    assert {"title", "price", "category", "brand", "path"} <= set(first)
    assert isinstance(first["price"], float)


def test_product_range_filters_in_get_and_post(shop: TestClient) -> None:
    params = {"q": "shirt", "price_min": 20, "price_max": 35, "k": 10}
    via_get = shop.get("/search", params=params).json()["results"]
    body = {"text": "shirt", "k": 10, "filters": {"price_min": 20, "price_max": 35}}
    via_post = shop.post("/search", json=body).json()["results"]
    assert via_get == via_post
    assert {hit["product_id"] for hit in via_get} == {"SKU-002", "SKU-003", "SKU-004"}
    bad = shop.get("/search", params={"q": "x", "price_min": "cheap"})
    assert bad.status_code == 422 and "number" in bad.json()["message"]
    unknown = shop.get("/search", params={"q": "x", "colour": "red"})
    assert unknown.status_code == 422 and "category" in unknown.json()["message"]


def test_text_weight_is_passed_through_and_echoed(shop: TestClient, shop_index: Path) -> None:
    for weight in ("0.0", "1.0"):
        want = cli_query(shop_index, "shoes model 3", "--text-weight", weight, "-k", "4")
        got = shop.post("/search", json={"text": "shoes model 3", "k": 4, "text_weight": weight})
        assert got.json()["results"] == want["results"]
        assert got.json()["query"]["text_weight"] == float(weight)


def test_image_search_finds_the_product_and_its_stats_list_filters(
    shop: TestClient, shop_index: Path
) -> None:
    image = shop_index.parent / "shop" / "img" / "img_009.png"
    upload = shop.post(
        "/search/image", params={"k": 3}, files={"file": ("q.png", image.read_bytes())}
    )
    assert upload.json()["results"][0]["product_id"] == "SKU-004"
    assert upload.json()["results"][0]["score"] == pytest.approx(1.0, abs=2e-3)
    stats = shop.get("/stats").json()
    assert stats["has_catalog"] is True and stats["products"] == 9
    assert stats["product_columns"]["price"] == "number"
    assert stats["product_columns"]["category"] == "keyword"
    item = shop.get(f"/items/{upload.json()['results'][0]['id']}").json()
    assert item["product_id"] == "SKU-004" and item["metadata"]["category"] == "shirts"


# -- the serve command --------------------------------------------------------------------------
def test_serve_refuses_a_missing_index_and_warns_when_exposed_without_a_key(
    tmp_path: Path,
) -> None:
    from clirun import invoke

    missing = tmp_path / "nothing-here"
    result = invoke("serve", "--index", missing, "--host", "0.0.0.0", "--port", "0")
    assert result.exit_code == 1
    assert "without --api-key" in result.stderr
    assert f"error: no index at {missing}" in result.stderr


@pytest.mark.slow
def test_serve_command_answers_over_http_and_stops_on_sigint(photo_index: Path) -> None:
    import signal
    import subprocess
    import sys
    import time

    from httpkit import free_port

    port = free_port()
    command = [sys.executable, "-c", "from retrieval.cli import app; app()", "serve",
               "--index", str(photo_index), "--port", str(port), "--api-key", KEY,
               "--device", "cpu"]  # fmt: skip
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                assert server.poll() is None and time.monotonic() < deadline
                time.sleep(0.1)
        assert httpx.get(f"{base}/ready").status_code == 401
        found = httpx.get(f"{base}/search", params={"q": "x"}, headers={"X-API-Key": KEY})
        assert found.status_code == 200 and len(found.json()["results"]) == 10
    finally:
        server.send_signal(signal.SIGINT)
        output = server.communicate(timeout=30)[0].decode()
    assert server.returncode == 0, output
    assert "Uvicorn running on" in output
