"""Paths and access: no request reads a file that is not an indexed item's indexed bytes, and with
an API key set every route but the public ones needs it, checked in constant time before any
body is read, and the key appears in no answer, log line or metric."""

from __future__ import annotations

import base64
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from clirun import run_ok
from fastapi.testclient import TestClient
from httpkit import free_port, index_photos, open_app
from starlette.routing import Mount

from retrieval.config import ServeConfig
from retrieval.http import keys

KEY = "k3y-7f0c1e9a-never-shown"


def photo(directory: Path, number: int) -> Path:
    return directory.parent / "photos" / f"img_{number:03d}.png"


@pytest.fixture
def fresh(tiny_model: str, tmp_path: Path) -> Iterator[tuple[Path, TestClient, dict[str, int]]]:
    directory = index_photos(tiny_model, tmp_path, count=2)
    with open_app(directory) as (app, service), TestClient(app) as client:
        ids = {item.path: item.id for item in service.store.catalog.iter_items("images")}
        yield directory, client, ids


@pytest.fixture(scope="module")
def shared(
    tiny_model: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Path, TestClient, dict[str, int]]]:
    """One index for the tests below; each spoils its own photo number, none re-indexes."""
    directory = index_photos(tiny_model, tmp_path_factory.mktemp("access"), count=8)
    with open_app(directory) as (app, service), TestClient(app) as client:
        ids = {item.path: item.id for item in service.store.catalog.iter_items("images")}
        yield directory, client, ids


# -- files ---------------------------------------------------------------------------------------
def test_a_link_swapped_in_with_the_indexed_size_and_mtime_is_not_served(
    shared: tuple[Path, TestClient, dict[str, int]], tmp_path: Path
) -> None:
    directory, client, ids = shared
    indexed = photo(directory, 0)
    stat = indexed.stat()
    # Same length, same mtime, other bytes: a size+mtime check alone would serve the decoy.
    decoy = tmp_path / "secret.bin"
    decoy.write_bytes(b"S" * stat.st_size)
    os.utime(decoy, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    os.remove(indexed)
    os.symlink(decoy, indexed)
    for params in ({}, {"size": 32}):
        response = client.get(f"/items/{ids[str(indexed)]}/image", params=params)
        assert response.status_code == 404, response.text
        assert b"SSSS" not in response.content and "changed on disk" in response.json()["message"]


def test_a_file_rewritten_in_place_with_the_indexed_stat_is_not_served(
    shared: tuple[Path, TestClient, dict[str, int]],
) -> None:
    directory, client, ids = shared
    indexed = photo(directory, 1)
    stat = indexed.stat()
    indexed.write_bytes(b"X" * stat.st_size)
    os.utime(indexed, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert client.get(f"/items/{ids[str(indexed)]}/image").status_code == 404


@pytest.mark.parametrize(
    ("number", "special"), [(2, "fifo"), (3, "/dev/zero"), (4, "/dev/null"), (5, "directory")]
)
def test_special_files_swapped_in_are_refused_without_blocking(
    shared: tuple[Path, TestClient, dict[str, int]], number: int, special: str
) -> None:
    directory, client, ids = shared
    indexed = photo(directory, number)
    os.remove(indexed)
    if special == "fifo":
        os.mkfifo(indexed)  # opening it for reading without O_NONBLOCK would wait forever
    elif special == "directory":
        indexed.mkdir()
    else:
        os.symlink(special, indexed)
    started = time.monotonic()
    for params in ({}, {"size": 32}):
        response = client.get(f"/items/{ids[str(indexed)]}/image", params=params)
        assert response.status_code == 404, response.text
    assert time.monotonic() - started < 5


def test_thumbnails_of_deleted_items_are_gone_even_when_cached(
    fresh: tuple[Path, TestClient, dict[str, int]], tiny_model: str
) -> None:
    directory, client, ids = fresh
    deleted = photo(directory, 1)
    item_id = ids[str(deleted)]
    assert client.get(f"/items/{item_id}/image", params={"size": 32}).status_code == 200
    os.remove(deleted)
    # Gone from disk but still in the catalog: 404, not the cached thumbnail.
    assert client.get(f"/items/{item_id}/image", params={"size": 32}).status_code == 404
    run_ok("index", deleted.parent, "--model", tiny_model, "--index", directory, "--quiet")
    # Gone from the catalog (the server sees the new generation without a restart).
    for path in (f"/items/{item_id}", f"/items/{item_id}/image", f"/items/{item_id}/image?size=32"):
        assert client.get(path).status_code == 404, path


@pytest.mark.parametrize(
    "path",
    ["/items/0/image", "/items/999999/image", "/items/9223372036854775807/image",
     "/items/9223372036854775808/image", "/items/-1/image", "/items/1.5/image",
     "/items/%2e%2e%2f%2e%2e%2fetc%2fpasswd/image", "/items/1%00/image", "/items//image",
     "/static/../../../../etc/passwd", "/static/%2e%2e%2f%2e%2e%2f%2e%2e%2fpyproject.toml",
     "/static/..%5c..%5cpyproject.toml", "//etc/passwd", "/items/1/image/..%2f..%2f"],
)  # fmt: skip
def test_ids_that_do_not_exist_and_traversal_read_nothing(
    shared: tuple[Path, TestClient, dict[str, int]], path: str
) -> None:
    _, client, _ = shared
    response = client.get(path)
    assert response.status_code in (404, 422), (path, response.status_code)
    assert b"root:" not in response.content and b"[project]" not in response.content


# -- the API key -----------------------------------------------------------------------------------
def basic(password: str, user: str = "anyone") -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


GOOD_CREDENTIALS = [
    {"X-API-Key": KEY}, {"Authorization": f"Bearer {KEY}"}, basic(KEY), basic(KEY, ""),
]  # fmt: skip
BAD_CREDENTIALS = [
    {}, {"X-API-Key": "wrong"}, {"Authorization": f"Basic {KEY}"}, {"Authorization": "Bearer"},
    {"X-API-Key": KEY[:-1]}, {"X-API-Key": KEY + "x"}, {"X-API-Key": ""}, basic("wrong"),
    basic(KEY + "x"), {"Authorization": "Basic " + base64.b64encode(KEY.encode()).decode()},
    {"Authorization": "Basic !!!"}, {"Authorization": "Basic"},
]  # fmt: skip


@pytest.fixture(scope="module")
def keyed(tiny_model: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    directory = index_photos(tiny_model, tmp_path_factory.mktemp("keyed"), count=3)
    with open_app(directory, ServeConfig(api_key=KEY)) as (app, _), TestClient(app) as client:
        yield client


def concrete(path: str) -> str:
    return path.replace("{item_id}", "1").replace("{path:path}", "app.js")


def real_routes(routes: list[Any]) -> list[tuple[str, str]]:
    """(method, path) of every route the app serves, read from the app itself (docs, the page,
    the static mount included), so a route added later is checked without editing this test."""
    found = []
    for route in routes:
        if isinstance(route, Mount):
            found.append(("GET", f"{route.path}/app.js"))
        elif hasattr(route, "original_router"):  # FastAPI >= 0.165 keeps included routers whole
            found += real_routes(route.original_router.routes)
        else:
            found += [(method, concrete(route.path)) for method in sorted(route.methods or ())]
    return [(method, path) for method, path in found if method != "HEAD"]


def test_every_route_but_health_needs_the_key(keyed: TestClient) -> None:
    routes = real_routes(keyed.app.routes)
    paths = {path for _, path in routes}
    assert {"/", "/docs", "/redoc", "/openapi.json", "/docs/assets/app.js", "/static/app.js",
            "/search", "/stats", "/metrics", "/items/1/image"} <= paths  # fmt: skip
    guarded = [(method, path) for method, path in routes if path != "/health"]
    for method, path in guarded:
        for headers in BAD_CREDENTIALS:
            response = keyed.request(method, path, headers=headers)
            assert response.status_code == 401, (method, path, headers, response.text)
            assert response.json()["error"] == "unauthorized"
    for path in ("/nowhere", "/items/1/image/x", "/static/missing.js"):
        assert keyed.get(path).status_code == 401, path
    assert keyed.get("/health").status_code == 200


def test_each_of_the_three_ways_to_send_the_key_opens_every_route(keyed: TestClient) -> None:
    for method, path in real_routes(keyed.app.routes):
        if method != "GET":
            continue
        for headers in GOOD_CREDENTIALS:
            response = keyed.get(path, headers=headers)
            assert response.status_code != 401, (path, headers, response.text)
    for headers in GOOD_CREDENTIALS:  # the page and its assets, as a browser fetches them
        for path in ("/", "/static/app.js", "/static/style.css", "/docs", "/openapi.json"):
            assert keyed.get(path, headers=headers).status_code == 200, (path, headers)


def test_browsers_are_asked_for_basic_auth_and_api_clients_for_a_bearer_token(
    keyed: TestClient,
) -> None:
    challenge = 'Basic realm="mmsearch", charset="UTF-8"'
    for path in ("/", "/docs", "/redoc", "/openapi.json", "/static/app.js"):
        assert keyed.get(path).headers["WWW-Authenticate"] == challenge, path
    # A link to a search opened in the address bar is a navigation too: the browser asks for
    # HTML. A script's fetch() or curl does not, and gets no login prompt.
    navigate = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
    assert keyed.get("/search?q=x", headers=navigate).headers["WWW-Authenticate"] == challenge
    for path in ("/search?q=x", "/stats", "/items/1/image"):
        assert keyed.get(path).headers["WWW-Authenticate"] == "Bearer", path


def test_the_schema_documents_all_three_schemes_on_every_guarded_route(keyed: TestClient) -> None:
    schema = keyed.get("/openapi.json", headers={"X-API-Key": KEY}).json()
    schemes = schema["components"]["securitySchemes"]
    assert {(s["type"], s.get("scheme"), s.get("name")) for s in schemes.values()} == {
        ("apiKey", None, "X-API-Key"), ("http", "bearer", None), ("http", "basic", None),
    }  # fmt: skip
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            wanted = [] if path == "/health" else [{name: []} for name in schemes]
            assert operation.get("security", []) == wanted, (method, path)


def test_no_body_is_read_or_validated_without_the_key(keyed: TestClient) -> None:
    # Before the key check moved in front of FastAPI, these got 400 and 413: the server parsed
    # the bodies of clients it should have turned away, and told them what was wrong.
    cases = [
        {"content": b"{nope", "headers": {"content-type": "application/json"}},
        {"content": b"x", "headers": {"content-length": str(10**12)}},
        {"content": b"--B\r\nbad", "headers": {"content-type": "multipart/form-data; boundary=B"}},
    ]  # fmt: skip
    for case in cases:
        assert keyed.post("/search", **case).status_code == 401  # type: ignore[arg-type]
    assert keyed.get("/search", params={"q": "x", "k": "nope"}).status_code == 401


def test_the_key_is_compared_in_constant_time(
    keyed: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = keys.hmac.compare_digest

    def recording(given: bytes, expected: bytes) -> bool:
        calls.append((given, expected))
        return real(given, expected)

    monkeypatch.setattr(keys.hmac, "compare_digest", recording)
    assert keyed.get("/stats", headers={"X-API-Key": "guess"}).status_code == 401
    assert calls == [(b"guess", KEY.encode())]
    calls.clear()
    assert keyed.get("/stats", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    # Once, in the middleware (http/keys.py; the dependency only documents the schemes).
    assert calls == [(KEY.encode(), KEY.encode())]
    calls.clear()
    assert keyed.get("/", headers=basic("guess")).status_code == 401
    assert keyed.get("/", headers=basic(KEY)).status_code == 200
    assert calls == [(b"guess", KEY.encode()), (KEY.encode(), KEY.encode())]


def test_non_ascii_keys_are_refused_not_crashed_on(keyed: TestClient) -> None:
    for raw in (b"\xff\xfe", "kéy".encode(), b"\x00"):
        response = keyed.get("/stats", headers=[(b"x-api-key", raw)])
        assert response.status_code == 401


def test_the_key_is_in_no_answer_log_or_metric(
    keyed: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    good = {"X-API-Key": KEY}
    seen: list[str] = []
    with caplog.at_level(logging.DEBUG):
        for headers in (good, {"X-API-Key": "wrong"}, {}, basic(KEY), basic(KEY + "!"),
                        basic("u", KEY)):  # fmt: skip
            for method, path, kwargs in (
                ("GET", "/search?q=x", {}), ("GET", "/search?q=%20", {}), ("GET", "/stats", {}),
                ("POST", "/search", {"json": {"image_b64": "!!"}}), ("GET", "/items/99999", {}),
                ("POST", "/search/image", {"files": {"file": ("a.png", b"junk")}}),
                ("GET", "/metrics", {}), ("GET", "/openapi.json", {}), ("GET", "/ready", {}),
                ("GET", "/", {}), ("GET", "/docs", {}), ("GET", "/static/app.js", {}),
            ):  # fmt: skip
                response = keyed.request(method, path, headers=headers, **kwargs)  # type: ignore[arg-type]
                seen.append(response.text + str(response.headers))
    assert all(KEY not in text for text in seen)
    assert KEY not in caplog.text


@pytest.mark.slow
def test_serve_never_prints_the_key(tiny_model: str, tmp_path: Path) -> None:
    directory = index_photos(tiny_model, tmp_path, count=3)
    port = free_port()
    command = [sys.executable, "-c", "from retrieval.cli import app; app()", "serve",
               "--index", str(directory), "--port", str(port), "--device", "cpu",
               "--host", "0.0.0.0"]  # fmt: skip
    env = {**os.environ, "MMSEARCH_API_KEY": KEY}
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    output: list[bytes] = []
    reader = threading.Thread(target=lambda: output.extend(server.stdout or []), daemon=True)
    reader.start()
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                if server.poll() is not None or time.monotonic() > deadline:
                    reader.join(timeout=10)
                    raise AssertionError(b"".join(output).decode(errors="replace")) from None
                time.sleep(0.2)
        for headers in (
            {"X-API-Key": KEY},
            {"X-API-Key": KEY + "!"},
            {"Authorization": "Bearer " + KEY},
            basic(KEY),
            basic(KEY + "!"),
        ):
            paths = ("/search?q=x", "/stats", "/metrics", "/items/999/image", "/search?q=", "/")
            for path in paths:
                assert KEY not in httpx.get(base + path, headers=headers, timeout=30).text
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=30)
        reader.join(timeout=10)
    text = b"".join(output).decode(errors="replace")
    assert "GET /stats" in text  # the access log ran
    assert KEY not in text
