"""Helpers for the HTTP, schema and browser tests: build small indexes through the real CLI,
open an app over them, and run it under a real uvicorn on a free loopback port."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from clirun import run_ok
from fastapi import FastAPI
from testdata import cpu_config, make_images, write_catalog

from benchmarks.livekit import free_port  # re-exported: tests import it from here
from retrieval.compose import open_for_search
from retrieval.config import ServeConfig
from retrieval.http import create_app
from retrieval.search.service import SearchService

CAPTIONS = ["a red shoe", "a blue hat", "a green shirt", "a cat on a sofa", "a mountain lake"]


def index_photos(model: str, root: Path, count: int = 12) -> Path:
    """`count` generated PNGs plus a few captions, indexed with `model` into root/index."""
    photos = make_images(root / "photos", count)
    captions = root / "captions.txt"
    captions.write_text("\n".join(CAPTIONS) + "\n")
    directory = root / "index"
    run_ok("index", photos[0].parent, "--texts", captions, "--model", model, "--index", directory,
            "--quiet", "--json")  # fmt: skip
    return directory


def index_shop(model: str, root: Path) -> Path:
    """The product catalog of test_products (9 products, 2 images each) in root/index."""
    catalog = write_catalog(root / "shop")
    directory = root / "index"
    run_ok("index", "--catalog", catalog, "--model", model, "--index", directory, "--quiet")
    return directory


def cli_query(directory: Path, *args: object) -> dict:
    """`mmsearch query ARGS --json` against `directory`."""
    return json.loads(run_ok("query", *args, "--json", "--index", directory, "--device", "cpu"))


@contextmanager
def open_app(
    directory: Path, config: ServeConfig | None = None
) -> Iterator[tuple[FastAPI, SearchService]]:
    """An app over `directory` wired as `mmsearch serve` wires it; closes everything after.
    TestClient sends `Host: testserver`: a keyless app answers that name the way `serve`
    answers its --host name (HostCheckMiddleware refuses other names)."""
    config = config or ServeConfig()
    config = replace(config, allowed_hosts=(*config.allowed_hosts, "testserver"))
    with open_for_search(directory, cpu_config(), batching=config.batching) as service:
        yield create_app(service, config), service


@contextmanager
def run_server(app: FastAPI, config: ServeConfig | None = None, **options: object) -> Iterator[str]:
    """Serve `app` with uvicorn on 127.0.0.1 in a thread, configured as `mmsearch serve` runs
    it (`config` supplies its timeouts, `options` override uvicorn's); yields its base URL once
    ready."""
    import uvicorn

    from retrieval.http.runner import server_config

    port = free_port()
    options = {"log_level": "warning", "access_log": False, **options}
    uvicorn_config = server_config(app, config or ServeConfig(), host="127.0.0.1", port=port,
                                   **options)  # fmt: skip
    server = uvicorn.Server(uvicorn_config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        # uvicorn sets `started` after the app's startup (model warm-up) has finished.
        yield base
    finally:
        server.should_exit = True
        thread.join(timeout=10)


# -- raw connections, for requests a well-behaved client library cannot send --------------------
def address(base: str) -> tuple[str, int]:
    host, port = base.removeprefix("http://").split(":")
    return host, int(port)


def exchange(base: str, *chunks: bytes, pause_s: float = 0.0, wait_s: float = 10.0) -> bytes:
    """Send `chunks` on a raw connection (pausing between them), then read until the server
    closes it or `wait_s` passes; returns everything the server sent."""
    with socket.create_connection(address(base), timeout=wait_s) as sock:
        try:
            for chunk in chunks:
                sock.sendall(chunk)
                time.sleep(pause_s)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before taking it all: read what it said
        return read_until_closed(sock, wait_s)


def read_until_closed(sock: socket.socket, wait_s: float) -> bytes:
    received = b""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        try:
            data = sock.recv(65536)
        except TimeoutError:
            break
        except ConnectionResetError:
            return received  # closed with our unread bytes still queued: a reset, not a hang
        if not data:
            return received
        received += data
    raise AssertionError(f"connection still open after {wait_s} s; got {received[:200]!r}")


def status_of(raw: bytes) -> int:
    return int(raw.split(b" ", 2)[1])


def json_body(raw: bytes) -> dict:
    return json.loads(raw.partition(b"\r\n\r\n")[2])
