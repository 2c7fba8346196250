"""The findings of the security probe of `mmsearch serve` (issue 21), each reproduced against a
live server on 127.0.0.1 (real uvicorn, raw sockets where a client library would not send the
request): a catalog served with a key, a folder served without one."""

from __future__ import annotations

import base64
import io
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from httpkit import (
    exchange,
    free_port,
    index_photos,
    json_body,
    open_app,
    run_server,
    status_of,
)
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from testdata import write_catalog

from retrieval.config import ServeConfig
from retrieval.images import load_image

KEY = "hardening-key-5c1d"
AUTH = {"X-API-Key": KEY}
SCRIPT = b"<html><body><script>alert(document.domain)</script></body></html>"
# The keyless server: a small decode budget and pixel cap, so the budget test needs small PNGs.
FOLDER = ServeConfig(
    allowed_hosts=("photos.lan",), decode_budget_megapixels=0.5, max_megapixels=0.4
)


def markup_png(path: Path) -> None:
    """A valid 64x64 PNG carrying an HTML document in a tEXt chunk."""
    info = PngInfo()
    info.add_text("Comment", SCRIPT.decode())
    Image.new("RGB", (64, 64), (200, 30, 30)).save(path, "PNG", pnginfo=info)


@pytest.fixture(scope="module")
def shop(tiny_model: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A catalog with two products whose images are named promo.html and banner.svg, served
    with an API key."""
    from clirun import run_ok

    root = tmp_path_factory.mktemp("shop")
    (root / "shop" / "img").mkdir(parents=True)
    markup_png(root / "shop" / "img" / "promo.html")
    markup_png(root / "shop" / "img" / "banner.svg")
    extra = [
        {"id": "PROMO-1", "title": "promo", "image": "img/promo.html", "category": "hats",
         "price": "1.0", "brand": "acme"},
        {"id": "PROMO-2", "title": "banner", "image": "img/banner.svg", "category": "hats",
         "price": "2.0", "brand": "acme"},
    ]  # fmt: skip
    catalog = write_catalog(root / "shop", extra=extra)
    directory = root / "index"
    run_ok("index", "--catalog", catalog, "--model", tiny_model, "--index", directory, "--quiet")
    config = ServeConfig(api_key=KEY)
    with open_app(directory, config) as (app, _), run_server(app, config) as base:
        yield base


@pytest.fixture(scope="module")
def folder(tiny_model: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    directory = index_photos(tiny_model, tmp_path_factory.mktemp("folder"), count=6)
    with open_app(directory, FOLDER) as (app, _), run_server(app, FOLDER) as base:
        yield base


def item_id_of(base: str, name: str, headers: dict[str, str] | None = None) -> int:
    """The id of the indexed image whose file name is `name` (ids are small and dense)."""
    for item_id in range(1, 200):
        item = httpx.get(f"{base}/items/{item_id}", headers=headers, timeout=10)
        if item.status_code == 200 and (item.json().get("path") or "").endswith(name):
            return item_id
    raise AssertionError(f"no indexed {name}")


# -- 1: stored XSS through a catalog image's name ----------------------------------------------
@pytest.mark.parametrize("name", ["promo.html", "banner.svg"])
def test_a_catalog_image_named_like_a_document_is_served_as_the_image_it_is(
    shop: str, name: str
) -> None:
    response = httpx.get(f"{shop}/items/{item_id_of(shop, name, AUTH)}/image", headers=AUTH)
    assert response.status_code == 200 and SCRIPT in response.content
    assert response.headers["content-type"] == "image/png"
    assert response.headers["x-content-type-options"] == "nosniff"
    policy = response.headers["content-security-policy"]
    assert "sandbox" in policy and "default-src 'none'" in policy
    thumbnail = httpx.get(
        f"{shop}/items/{item_id_of(shop, name, AUTH)}/image", params={"size": 32}, headers=AUTH
    )
    assert thumbnail.headers["content-type"] == "image/jpeg"
    assert "sandbox" in thumbnail.headers["content-security-policy"]


# -- 2: unbounded metric labels ----------------------------------------------------------------
def metrics_text(base: str, headers: dict[str, str] | None = None) -> str:
    response = httpx.get(f"{base}/metrics", headers=headers, timeout=30)
    assert response.status_code == 200
    return response.text


def test_invented_methods_and_paths_add_no_metric_series(shop: str) -> None:
    before = metrics_text(shop, AUTH)
    with httpx.Client(timeout=10) as client:
        for number in range(300):
            method = f"M3X7{number:04d}"
            assert client.request(method, f"{shop}/stats").status_code == 401
            path = f"/nowhere/{number}"
            assert client.request(method, shop + path, headers=AUTH).status_code in (404, 405)
            assert client.get(shop + path, headers=AUTH).status_code == 404
        long_method = "M" * 8000  # under the 16 KiB head limit
        assert client.request(long_method, f"{shop}/stats").status_code == 401
    after = metrics_text(shop, AUTH)
    assert "M3X7" not in after and "MMMM" not in after and "/nowhere" not in after
    assert 'method="other",route="other",status="401"} 301.0' in after
    assert 'method="GET",route="other",status="404"} 300.0' in after
    # A handful of new series (the ones above), not one per request.
    assert len(after) - len(before) < 8_000, len(after) - len(before)


# -- 3: decode memory budgeted by pixels --------------------------------------------------------
def png_bytes(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (10, 120, 200)).save(buffer, "PNG")
    return buffer.getvalue()


def metric_value(text: str, name: str) -> float:
    match = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert match, name
    return float(match.group(1))


def test_concurrent_uploads_never_decode_more_pixels_at_once_than_the_budget(folder: str) -> None:
    image = png_bytes(600, 600)  # 0.36 Mpx: under the 0.4 cap, two would overrun the 0.5 budget

    def upload(_: int) -> int:
        files = {"file": ("big.png", image, "image/png")}
        return httpx.post(f"{folder}/search/image", files=files, timeout=60).status_code

    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(upload, range(8)))
    assert statuses == [200] * 8
    text = metrics_text(folder)
    assert metric_value(text, "mmsearch_decode_megapixels_peak") == pytest.approx(0.36)
    assert metric_value(text, "mmsearch_decode_megapixels_in_use") == 0
    assert (
        metric_value(text, "mmsearch_decode_megapixels_budget") == FOLDER.decode_budget_megapixels
    )


def test_a_composed_query_holds_its_pixels_in_all_its_parts_together(folder: str) -> None:
    part = {"image_b64": base64.b64encode(png_bytes(500, 500)).decode()}  # 0.25 Mpx each
    response = httpx.post(f"{folder}/search", json={"parts": [part, part]}, timeout=30)
    assert response.status_code == 422, response.text
    assert response.json()["reason"] == "too-many-pixels"
    assert "0.5 megapixels together" in response.json()["message"]
    assert httpx.post(f"{folder}/search", json={"parts": [part]}, timeout=30).status_code == 200


def test_query_jpegs_decode_at_the_smallest_scale_that_covers_the_model_input() -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (2000, 1500), (90, 90, 90)).save(buffer, "JPEG")
    assert load_image(buffer.getvalue(), reduce_to=180).size == (250, 188)  # 1/8
    assert load_image(buffer.getvalue(), reduce_to=224).size == (500, 375)  # 1/8: 188 < 224
    assert load_image(buffer.getvalue(), reduce_to=400).size == (1000, 750)
    assert load_image(buffer.getvalue()).size == (2000, 1500)
    png = png_bytes(2000, 1500)
    assert load_image(png, reduce_to=224).size == (2000, 1500)  # PNG has no reduced decoding


# -- 4: DNS rebinding on a keyless server -------------------------------------------------------
REBOUND = ["attacker.rebind.example:8932", "attacker.rebind.example", "localhost.attacker.example",
           "127.0.0.1.nip.example:80"]  # fmt: skip
TRUSTED = ["localhost", "LOCALHOST:8000", "localhost.", "127.0.0.1:1", "[::1]:8000", "10.0.0.7",
           "photos.lan", "Photos.LAN:8932"]  # fmt: skip


@pytest.mark.parametrize("host", REBOUND)
def test_a_keyless_server_refuses_names_it_was_not_given(folder: str, host: str) -> None:
    response = httpx.get(f"{folder}/items/1", headers={"Host": host}, timeout=10)
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "bad_request" and "--allowed-host" in response.text
    assert "path" not in response.json()


@pytest.mark.parametrize("host", TRUSTED)
def test_a_keyless_server_answers_loopback_addresses_and_allowed_names(
    folder: str, host: str
) -> None:
    response = httpx.get(f"{folder}/items/1", headers={"Host": host}, timeout=10)
    assert response.status_code == 200, (host, response.text)


def test_a_keyed_server_checks_the_key_whatever_the_host(shop: str) -> None:
    rebound = {"Host": "attacker.rebind.example"}
    assert httpx.get(f"{shop}/stats", headers=rebound).status_code == 401
    assert httpx.get(f"{shop}/stats", headers={**rebound, **AUTH}).status_code == 200


# -- 5: the head limit holds for a head sent in one write ---------------------------------------
def test_a_head_over_the_limit_sent_in_one_write_is_refused(folder: str) -> None:
    headers = b"".join(b"X-Pad-%03d: %s\r\n" % (i, b"p" * 90) for i in range(200))  # ~20 KB
    raw = exchange(folder, b"GET /health HTTP/1.1\r\nHost: localhost\r\n" + headers + b"\r\n")
    assert status_of(raw) == 431, raw[:300]
    assert json_body(raw)["error"] == "too_large"


@pytest.mark.parametrize(
    "headers",
    [b"X-Big: " + b"a" * 120_000 + b"\r\n",
     b"".join(b"X-H%d: v\r\n" % i for i in range(5000))],
)  # fmt: skip
def test_a_huge_head_in_one_write_is_never_served(folder: str, headers: bytes) -> None:
    raw = exchange(folder, b"GET /health HTTP/1.1\r\nHost: localhost\r\n" + headers + b"\r\n")
    # 431 from the app when the head arrived in one read, uvicorn's 400 when it came in parts.
    assert raw == b"" or status_of(raw) in (400, 431), raw[:300]
    assert httpx.get(f"{folder}/health").status_code == 200


# -- 6: headers of the page, its assets and the docs --------------------------------------------
@pytest.mark.parametrize("path", ["/", "/static/app.js", "/docs", "/redoc", "/openapi.json",
                                  "/search?q=x", "/stats", "/nowhere"])  # fmt: skip
def test_every_answer_forbids_framing_and_sniffing_and_has_a_policy(folder: str, path: str) -> None:
    response = httpx.get(folder + path, timeout=10)
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["x-frame-options"] == "DENY"
    policy = response.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in policy and "unsafe-eval" not in policy
    if path in ("/", "/static/app.js"):
        assert "default-src 'self'" in policy and "unsafe-inline" not in policy


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_the_docs_load_every_asset_from_this_server_and_no_inline_script(
    shop: str, page: str
) -> None:
    html = httpx.get(shop + page, headers=AUTH).text
    assert "http://" not in html and "https://" not in html
    assert not re.search(r"<script(?![^>]*\bsrc=)", html)  # script-src 'self' would block it
    assets = re.findall(r'(?:src|href)="(/[^"]+)"', html)
    assert len(assets) >= 2
    for asset in assets:
        response = httpx.get(shop + asset, headers=AUTH)
        assert response.status_code == 200 and len(response.content) > 100, asset


def test_docs_assets_need_the_key_like_every_other_route(shop: str) -> None:
    response = httpx.get(f"{shop}/docs/assets/swagger-ui-bundle.js")
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Basic")


# -- 7: a cached thumbnail of a swapped file ----------------------------------------------------
@pytest.mark.parametrize(("number", "swap"), [(4, "rewrite"), (5, "rename")])
def test_a_cached_thumbnail_is_not_served_after_a_swap_that_keeps_size_and_mtime(
    folder: str, tmp_path: Path, number: int, swap: str
) -> None:
    item_id = item_id_of(folder, f"img_{number:03d}.png")
    path = Path(httpx.get(f"{folder}/items/{item_id}").json()["path"])
    assert httpx.get(f"{folder}/items/{item_id}/image", params={"size": 64}).status_code == 200
    stat = path.stat()
    decoy = Image.new("RGB", Image.open(path).size, (0, 255, 0))
    buffer = io.BytesIO()
    decoy.save(buffer, "PNG")
    data = buffer.getvalue()[: stat.st_size].ljust(stat.st_size, b"\0")
    if swap == "rewrite":
        path.write_bytes(data)
    else:
        (tmp_path / "decoy.png").write_bytes(data)
        os.replace(tmp_path / "decoy.png", path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (stat.st_size, stat.st_mtime_ns)
    for params in ({}, {"size": 64}):
        response = httpx.get(f"{folder}/items/{item_id}/image", params=params)
        assert response.status_code == 404, (params, response.status_code)
        assert "changed on disk" in response.json()["message"]


# -- 8: X-Forwarded-For believed only from configured proxies -----------------------------------
class Records(logging.Handler):
    """Collects formatted records (Handler.handle already holds the handler's lock)."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.mark.parametrize(("proxies", "logged"), [((), "127.0.0.1"), (("127.0.0.1",), "6.6.6.6")])
def test_forwarded_headers_are_believed_only_from_configured_proxies(
    tiny_model: str, tmp_path: Path, proxies: tuple[str, ...], logged: str
) -> None:
    directory = index_photos(tiny_model, tmp_path, count=2)
    config = ServeConfig(forwarded_allow_ips=proxies)
    records = Records()
    access = logging.getLogger("uvicorn.access")
    with (
        open_app(directory, config) as (app, _),
        run_server(app, config, log_level="info", access_log=True) as base,
    ):
        access.addHandler(records)
        try:
            spoofed = {"X-Forwarded-For": "6.6.6.6", "X-Forwarded-Proto": "https"}
            assert httpx.get(f"{base}/health", headers=spoofed).status_code == 200
        finally:
            access.removeHandler(records)
    [line] = [line for line in records.lines if "/health" in line]
    assert line.startswith(logged + ":"), line


# -- 9: HEAD on GET routes ----------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/health", "/ready", "/items/{image}", "/items/{image}/image",
                                  "/items/{image}/image?size=32", "/static/app.js", "/", "/docs",
                                  "/metrics", "/search?q=red"])  # fmt: skip
def test_head_answers_like_get_without_a_body(folder: str, path: str) -> None:
    path = path.format(image=item_id_of(folder, "img_000.png"))
    head = httpx.head(folder + path, timeout=10)
    get = httpx.get(folder + path, timeout=10)
    assert head.status_code == get.status_code == 200, (path, head.status_code)
    assert head.content == b"" and head.headers["content-type"] == get.headers["content-type"]
    if path != "/metrics" and not path.startswith("/search"):  # those change between calls
        assert head.headers["content-length"] == str(len(get.content))
    metrics = metrics_text(folder)
    assert 'method="HEAD",route="/health",status="200"' in metrics


# -- 10: Cache-Control on keyed answers ---------------------------------------------------------
@pytest.mark.parametrize("path", ["/search?q=hat", "/stats", "/items/1", "/ready", "/metrics",
                                  "/openapi.json", "/", "/docs"])  # fmt: skip
def test_keyed_answers_are_not_stored_by_caches(shop: str, path: str) -> None:
    response = httpx.get(shop + path, headers=AUTH, timeout=10)
    assert response.status_code == 200 and response.headers["cache-control"] == "no-store"
    assert httpx.get(shop + path).headers["cache-control"] == "no-store"  # the 401 too


def test_keyed_images_and_assets_stay_private(shop: str) -> None:
    image = httpx.get(f"{shop}/items/{item_id_of(shop, '.png', AUTH)}/image", headers=AUTH)
    assert image.headers["cache-control"] == "private, max-age=3600"
    asset = httpx.get(f"{shop}/static/app.js", headers=AUTH)
    assert asset.headers["cache-control"] == "private, no-cache" and asset.headers["etag"]


# -- 4 and 8 through `mmsearch serve` itself ----------------------------------------------------
@pytest.mark.slow
def test_serve_answers_its_host_name_and_allowed_names_and_logs_the_real_client(
    tiny_model: str, tmp_path: Path
) -> None:
    name = socket.gethostname()
    try:
        socket.gethostbyname(name)
    except OSError:
        pytest.skip(f"this machine's name {name!r} does not resolve")
    directory = index_photos(tiny_model, tmp_path, count=2)
    port = free_port()
    command = [sys.executable, "-c", "from retrieval.cli import app; app()", "serve",
               "--index", str(directory), "--host", name, "--port", str(port),
               "--device", "cpu"]  # fmt: skip
    env = {**os.environ, "MMSEARCH_ALLOWED_HOSTS": "photos.lan"}
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    output: list[bytes] = []
    reader = threading.Thread(target=lambda: output.extend(server.stdout or []), daemon=True)
    reader.start()
    base = f"http://{socket.gethostbyname(name)}:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                httpx.get(f"{base}/health", timeout=1)
                break
            except httpx.TransportError:
                if server.poll() is not None or time.monotonic() > deadline:
                    reader.join(timeout=10)
                    raise AssertionError(b"".join(output).decode(errors="replace")) from None
                time.sleep(0.2)
        spoofed = {"X-Forwarded-For": "6.6.6.6"}
        for host, status in ((f"{name}:{port}", 200), ("photos.lan", 200),
                             ("attacker.rebind.example", 400)):  # fmt: skip
            response = httpx.get(f"{base}/stats", headers={"Host": host, **spoofed}, timeout=30)
            assert response.status_code == status, (host, response.text)
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=30)
        reader.join(timeout=10)
    text = b"".join(output).decode(errors="replace")
    assert "GET /stats" in text and "6.6.6.6" not in text, text
