"""Image URLs: fetched with SSRF protection (every refused case of issue 22 against a real
HTTP server on 127.0.0.1), stored content-addressed, not refetched on a re-import, and usable
from catalog files and over HTTP."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from clirun import json_lines
from fastapi.testclient import TestClient
from httpkit import index_shop, open_app

from benchmarks.harness import noise_png as png
from retrieval.config import ServeConfig
from retrieval.errors import ImageDecodeError, ImageTooLargeError
from retrieval.ingest.fetch import FetchError, FetchPolicy, fetch
from retrieval.ingest.product_api import ProductWriter


class Shop(BaseHTTPRequestHandler):
    hits: list[str] = []

    def log_message(self, *_: object) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        Shop.hits.append(self.path)
        if self.path.startswith("/img"):
            body = png(int(self.path.removeprefix("/img").removesuffix(".png") or 0))
            self._send(200, body, "image/png")
        elif self.path == "/to-metadata":
            self._redirect("http://169.254.169.254/latest/meta-data/")
        elif self.path == "/to-img":
            self._redirect("/img5.png")
        elif self.path == "/loop":
            self._redirect("/loop")
        elif self.path == "/text":
            self._send(200, b"hello, not an image", "text/plain")
        elif self.path == "/big":
            self._send(200, png(1) + b"\0" * 200_000, "image/png")
        elif self.path == "/slow":
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.end_headers()
            try:
                for _ in range(600):
                    self.wfile.write(b"\x89")
                    self.wfile.flush()
                    time.sleep(0.1)
            except OSError:
                pass
        else:
            self._send(404, b"no", "text/plain")

    def _send(self, status: int, body: bytes, kind: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _redirect(self, location: str) -> None:
        self.send_response(302)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Shop)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


ALLOW = FetchPolicy.from_allow(["127.0.0.1"], total_timeout_s=1.5, max_bytes=100_000)


def test_an_allowed_local_server_is_fetched_and_redirects_followed(server: str) -> None:
    assert fetch(f"{server}/img3.png", ALLOW) == png(3)
    assert fetch(f"{server}/to-img", ALLOW) == png(5)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("{server}/img1.png", "address-refused"),  # 127.0.0.1 without --fetch-allow
        ("http://localhost:{port}/img1.png", "address-refused"),  # a name resolving to it
        ("http://[::1]:{port}/img1.png", "address-refused"),
        ("http://[::ffff:127.0.0.1]:{port}/img1.png", "address-refused"),  # IPv4-mapped
        ("http://169.254.169.254/latest/meta-data/", "address-refused"),
        ("http://10.0.0.1/x.png", "address-refused"),
        ("http://0.0.0.0:{port}/img1.png", "address-refused"),
        ("http://224.0.0.1/x.png", "address-refused"),
        ("file:///etc/passwd", "scheme-refused"),
        ("gopher://127.0.0.1:70/x", "scheme-refused"),
    ],
)
def test_non_public_addresses_and_other_schemes_are_refused_before_connecting(
    server: str, url: str, reason: str
) -> None:
    port = server.rsplit(":", 1)[1]
    Shop.hits.clear()
    with pytest.raises(FetchError) as err:
        fetch(url.format(server=server, port=port), FetchPolicy())
    assert err.value.reason == reason
    assert Shop.hits == []  # refused before any connection


def test_a_redirect_to_a_private_address_or_in_a_loop_is_refused(server: str) -> None:
    with pytest.raises(FetchError) as err:
        fetch(f"{server}/to-metadata", ALLOW)
    assert err.value.reason == "address-refused" and "169.254.169.254" in str(err.value)
    with pytest.raises(FetchError) as err:
        fetch(f"{server}/loop", ALLOW)
    assert err.value.reason == "too-many-redirects"


def test_caps_slow_servers_and_non_images(server: str) -> None:
    with pytest.raises(ImageTooLargeError):
        fetch(f"{server}/big", ALLOW)
    with pytest.raises(ImageDecodeError):
        fetch(f"{server}/text", ALLOW)
    started = time.monotonic()
    with pytest.raises(FetchError) as err:
        fetch(f"{server}/slow", ALLOW)
    assert err.value.reason == "too-slow" and time.monotonic() - started < 4


def test_a_slow_image_url_holds_up_no_other_write(shop_index: Path, server: str) -> None:
    writer = ProductWriter(shop_index, lambda: None, fetch_policy=ALLOW)
    done: list[float] = []

    def slow_put() -> None:
        # a title already embedded: this writer has no model
        writer.put("SLOW", {"title": "shoes model 0", "images": [f"{server}/slow"]})
        done.append(time.monotonic())

    thread = threading.Thread(target=slow_put)
    thread.start()
    time.sleep(0.2)
    writer.patch("SKU-000", {"price": 1})
    patched = time.monotonic()
    thread.join()
    assert patched < done[0]
    [image] = writer.get("SLOW")["images"]
    assert image["status"] == "too-slow" and image["item_id"] is None
    writer.close()


@pytest.fixture
def shop_index(tiny_model: str, tmp_path: Path) -> Path:
    return index_shop(tiny_model, tmp_path)


def test_catalog_urls_are_fetched_once_stored_by_content_and_refetched_on_request(
    tiny_model: str, tmp_path: Path, server: str
) -> None:
    catalog = tmp_path / "p.jsonl"
    catalog.write_text(
        json.dumps({"id": "U-1", "title": "remote", "images": [f"{server}/img8.png"]})
        + "\n"
        + json.dumps({"id": "U-2", "title": "refused", "images": [f"{server}/img9.png"]})
        + "\n"
    )
    index = tmp_path / "idx"
    Shop.hits.clear()
    first = json_lines("index", "--catalog", catalog, "--model", tiny_model, "--index", index,
                       "--fetch-allow", "127.0.0.1", "--json", "-q")[0]  # fmt: skip
    assert first["created"] == 2 and first["embedded"] == 2 and len(Shop.hits) == 2
    blobs = list((index / "blobs").rglob("*.png"))
    assert sorted(b.stem for b in blobs) == sorted(
        hashlib.sha256(png(n)).hexdigest() for n in (8, 9)
    )  # content-addressed
    again = json_lines("index", "--catalog", catalog, "--index", index,
                       "--fetch-allow", "127.0.0.1", "--json", "-q")[0]  # fmt: skip
    assert again["unchanged"] == 2 and len(Shop.hits) == 2  # nothing refetched
    json_lines("index", "--catalog", catalog, "--index", index, "--fetch-allow", "127.0.0.1",
               "--refetch", "--json", "-q")  # fmt: skip
    assert len(Shop.hits) == 4
    without = json_lines("index", "--catalog", catalog, "--index", index, "--json", "-q",
                         "--refetch")[0]  # fmt: skip
    assert without["replaced"] == 2  # images now refused: the products stay, their images go
    writer = ProductWriter(index, lambda: None)
    [image] = writer.get("U-1")["images"]
    assert image == {
        "item_id": None,
        "source": f"{server}/img8.png",
        "status": "address-refused",
        "detail": image["detail"],
    }
    writer.close()


def test_http_put_fetches_urls_with_the_servers_policy(shop_index: Path, server: str) -> None:
    config = ServeConfig(fetch_allow=("127.0.0.1",))
    with open_app(shop_index, config) as (app, _), TestClient(app) as client:
        answer = client.put(
            "/products/W-1", json={"title": "web", "images": [f"{server}/img4.png"]}
        )
        assert answer.status_code == 201, answer.text
        [image] = answer.json()["images"]
        assert image["status"] == "embedded" and image["source"] == f"{server}/img4.png"
        hit = client.get(f"/items/{image['item_id']}/image")
        assert hit.status_code == 200 and hit.content == png(4)
        refused = client.put("/products/W-2", json={"title": "x", "images": [f"{server}/text"]})
        assert refused.json()["images"][0]["status"] == "not-an-image"
    with open_app(shop_index) as (app, _), TestClient(app) as client:
        answer = client.put("/products/W-3", json={"title": "x", "images": [f"{server}/img4.png"]})
        assert answer.json()["images"][0]["status"] == "address-refused"
