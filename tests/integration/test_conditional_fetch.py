"""Re-imports download only what changed (issue 22): image URLs fetched before are revalidated
with If-None-Match / If-Modified-Since against a real HTTP server on 127.0.0.1 that counts
requests and answers 304; changed bytes are stored and embedded; --refetch / ?refetch=true
fetch in full; URLs without validators are reused for REMOTE_MAX_AGE_S; the address and redirect
checks hold on the conditional path too."""

from __future__ import annotations

import hashlib
import json
import tempfile
import threading
import time
from collections.abc import Iterator
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from clirun import invoke, json_lines
from fastapi.testclient import TestClient
from httpkit import index_shop, open_app
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks.harness import noise_png
from retrieval.config import REMOTE_MAX_AGE_S, ServeConfig
from retrieval.ingest.fetch import FetchError, FetchPolicy, fetch_if_changed
from retrieval.ingest.product_api import ProductWriter
from retrieval.ingest.products import ProductRow
from retrieval.ingest.remote import resolve_remote
from retrieval.storage.blobs import URL_RECORDS
from retrieval.storage.catalog import Catalog

ALLOW = FetchPolicy.from_allow(["127.0.0.1"], total_timeout_s=3.0)
BASE_TIME = 1_700_000_000


def png(seed: int) -> bytes:
    return noise_png(seed, width=40, height=32)


class Cdn(BaseHTTPRequestHandler):
    """`/e/NAME` sends an ETag, `/m/NAME` a Last-Modified, `/n/NAME` neither; `/s/NAME` is
    `/e/NAME` answered after 0.3 s; `/r/NAME` redirects to `redirects[NAME]`. Each NAME's
    image is `png(seeds[NAME])`; `statuses[path]` overrides the answer. `requests` logs (path,
    conditional headers sent)."""

    seeds: dict[str, int] = {}
    statuses: dict[str, int] = {}
    redirects: dict[str, str] = {}
    requests: list[tuple[str, dict[str, str]]] = []
    answers: list[bool] = []  # per request: did a body (200) go back?
    bodies: list[str] = []  # the paths a body (200) went back for
    lock = threading.Lock()
    in_flight = most_in_flight = 0

    def log_message(self, *_: object) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        sent = {
            h: self.headers[h] for h in ("If-None-Match", "If-Modified-Since") if self.headers[h]
        }
        Cdn.requests.append((self.path, sent))
        kind, _, name = self.path.strip("/").partition("/")
        if kind == "s":  # slow: how many requests are in flight at once
            with Cdn.lock:
                Cdn.in_flight += 1
                Cdn.most_in_flight = max(Cdn.most_in_flight, Cdn.in_flight)
            time.sleep(0.3)
            with Cdn.lock:
                Cdn.in_flight -= 1
            kind = "e"
        if self.path in Cdn.statuses:
            return self._answer(Cdn.statuses[self.path], {}, b"")
        if kind == "r":
            return self._answer(302, {"Location": Cdn.redirects[name]}, b"")
        seed = Cdn.seeds.get(name)
        if seed is None:
            return self._answer(404, {}, b"")
        validators = {}
        if kind == "e":
            validators["ETag"] = f'"v{seed}"'
        elif kind == "m":
            validators["Last-Modified"] = formatdate(BASE_TIME + seed, usegmt=True)
        fresh = (kind == "e" and sent.get("If-None-Match") == validators.get("ETag")) or (
            kind == "m" and sent.get("If-Modified-Since") == validators.get("Last-Modified")
        )
        if fresh:
            return self._answer(304, validators, b"")
        return self._answer(200, {**validators, "Content-Type": "image/png"}, png(seed))

    def _answer(self, status: int, headers: dict[str, str], body: bytes) -> None:
        Cdn.answers.append(status == 200)
        if status == 200:
            Cdn.bodies.append(self.path)
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Cdn)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest.fixture(autouse=True)
def fresh_cdn() -> None:
    Cdn.seeds, Cdn.statuses, Cdn.redirects, Cdn.requests, Cdn.answers = {}, {}, {}, [], []
    Cdn.bodies = []


def conditional(requests: list[tuple[str, dict[str, str]]]) -> list[bool]:
    """Per request: was it conditional?"""
    return [bool(sent) for _, sent in requests]


def blob_names(index: Path) -> set[str]:
    return {path.stem for path in (index / "blobs").rglob("*.png")}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- the fetch itself (no model) ---------------------------------------------------------------
@pytest.mark.parametrize("kind", ["e", "m"])
def test_a_current_copy_is_answered_304_and_a_changed_one_in_full(server: str, kind: str) -> None:
    Cdn.seeds["a"] = 1
    url = f"{server}/{kind}/a"
    first = fetch_if_changed(url, ALLOW)
    assert first.data == png(1) and (first.etag or first.last_modified)
    again = fetch_if_changed(url, ALLOW, first.etag, first.last_modified)
    assert again.data is None and (again.etag, again.last_modified) == (
        first.etag,
        first.last_modified,
    )
    Cdn.seeds["a"] = 2
    changed = fetch_if_changed(url, ALLOW, first.etag, first.last_modified)
    assert changed.data == png(2) and (changed.etag, changed.last_modified) != (
        first.etag,
        first.last_modified,
    )
    header = "If-None-Match" if kind == "e" else "If-Modified-Since"
    assert [header in sent for _, sent in Cdn.requests] == [False, True, True]


def test_the_conditional_path_keeps_the_address_and_redirect_checks(server: str) -> None:
    with pytest.raises(FetchError) as err:  # 127.0.0.1 without --fetch-allow
        fetch_if_changed(f"{server}/e/a", FetchPolicy(), '"v1"')
    assert err.value.reason == "address-refused" and Cdn.requests == []
    Cdn.redirects["meta"] = "http://169.254.169.254/latest/meta-data/"
    with pytest.raises(FetchError) as err:
        fetch_if_changed(f"{server}/r/meta", ALLOW, '"v1"', "Tue, 14 Nov 2023 22:13:20 GMT")
    assert err.value.reason == "address-refused" and "169.254.169.254" in str(err.value)
    Cdn.redirects["loop"] = "/r/loop"
    with pytest.raises(FetchError) as err:
        fetch_if_changed(f"{server}/r/loop", ALLOW, '"v1"')
    assert err.value.reason == "too-many-redirects"


@settings(max_examples=25, deadline=None)
@given(
    kind=st.sampled_from(["e", "m", "n"]),
    steps=st.lists(st.sampled_from(["change", "import", "refetch"]), max_size=8),
)
def test_resolved_bytes_follow_the_server_with_one_body_per_change(
    server: str, kind: str, steps: list[str]
) -> None:
    """Model-based: after every import the stored copy is the server's current image (for a
    server with validators; without, the copy of the last full fetch, within the max age), and
    a body crosses the wire only on the first fetch, after a change, or when forced."""
    Cdn.seeds, Cdn.requests, Cdn.answers = {"p": 0}, [], []
    url = f"{server}/{kind}/p"
    row = ProductRow(1, "P-1", "p", (url,), {})
    stored_seed, bodies, asked = None, 0, 0  # the oracle
    with tempfile.TemporaryDirectory() as tmp:
        catalog = Catalog(Path(tmp) / "catalog.db")
        for step in ["import", *steps]:
            if step == "change":
                Cdn.seeds["p"] += 1
                continue
            resolved = resolve_remote([row], Path(tmp), catalog, ALLOW, refetch=step == "refetch")
            if stored_seed is None or step == "refetch":
                asked, bodies, stored_seed = asked + 1, bodies + 1, Cdn.seeds["p"]
            elif kind != "n":  # asked whether it changed; a body only if it did
                asked += 1
                bodies += stored_seed != Cdn.seeds["p"]
                stored_seed = Cdn.seeds["p"]
            [stored] = resolved.rows[0].images
            assert Path(stored).read_bytes() == png(stored_seed)
            assert resolved.origins == {stored: url} and not resolved.failures
        catalog.close()
    assert len(Cdn.requests) == asked
    assert sum(1 for _, sent in Cdn.requests if not sent) == 1 + steps.count("refetch")
    assert sum(Cdn.answers) == bodies  # 200s, each with the image


def test_an_import_fetches_and_revalidates_its_urls_concurrently(
    server: str, tmp_path: Path
) -> None:
    Cdn.seeds.update({f"x{n}": n for n in range(6)})
    Cdn.most_in_flight = 0
    rows = [ProductRow(n, f"S-{n}", "s", (f"{server}/s/x{n}", f"{server}/s/x0"), {})
            for n in range(6)]  # fmt: skip
    catalog = Catalog(tmp_path / "catalog.db")
    for _ in range(2):  # fetched, then revalidated
        resolved = resolve_remote(rows, tmp_path, catalog, ALLOW)
        for n, row in enumerate(resolved.rows):
            assert [Path(image).read_bytes() for image in row.images] == [png(n), png(0)][
                : 2 - (n == 0)
            ]
    catalog.close()
    assert len(Cdn.requests) == 12 and conditional(Cdn.requests) == [False] * 6 + [True] * 6
    assert Cdn.most_in_flight > 1  # one URL at a time would take 6 round trips per import


# -- through the CLI import and the HTTP writes (tiny model) -----------------------------------
def import_catalog(catalog: Path, index: Path, *args: object) -> dict:
    return json_lines("index", "--catalog", catalog, "--index", index,
                      "--fetch-allow", "127.0.0.1", "--json", "-q", *args)[0]  # fmt: skip


def write_rows(path: Path, server: str, kinds: dict[str, str]) -> Path:
    """One product per name, its one image at /KIND/NAME."""
    path.write_text(
        "".join(
            json.dumps(
                {"id": f"U-{name}", "title": f"photo {name}", "images": [f"{server}/{kind}/{name}"]}
            )
            + "\n"  # fmt: skip
            for name, kind in kinds.items()
        )
    )
    return path


def test_reimport_revalidates_unchanged_urls_and_reembeds_changed_ones(
    tiny_model: str, tmp_path: Path, server: str
) -> None:
    Cdn.seeds.update(a=1, b=2)
    catalog = write_rows(tmp_path / "p.jsonl", server, {"a": "e", "b": "m"})
    index = tmp_path / "idx"
    first = import_catalog(catalog, index, "--model", tiny_model)
    assert first["created"] == 2 and first["embedded"] == 2
    assert conditional(Cdn.requests) == [False, False]
    ids = {sku: ProductWriter(index, lambda: None).get(sku)["images"][0]["item_id"]
           for sku in ("U-a", "U-b")}  # fmt: skip

    Cdn.requests, Cdn.answers = [], []
    again = import_catalog(catalog, index)
    assert again["unchanged"] == 2 and again["embedded"] == 0
    assert conditional(Cdn.requests) == [True, True] and Cdn.answers == [False, False]  # 304s

    Cdn.seeds["a"], Cdn.requests, Cdn.answers, Cdn.bodies = 7, [], [], []
    changed = import_catalog(catalog, index)
    assert (changed["replaced"], changed["unchanged"], changed["embedded"]) == (1, 1, 1)
    # only the changed image's body came (the two URLs are checked concurrently, in any order)
    assert sorted(Cdn.answers) == [False, True] and Cdn.bodies == ["/e/a"]
    assert sha(png(7)) in blob_names(index)
    writer = ProductWriter(index, lambda: None)
    [image] = writer.get("U-a")["images"]
    assert image["status"] == "embedded" and image["source"] == f"{server}/e/a"
    assert writer.get("U-b")["images"][0]["item_id"] == ids["U-b"]  # untouched
    writer.close()

    Cdn.requests, Cdn.answers = [], []
    forced = import_catalog(catalog, index, "--refetch")
    assert conditional(Cdn.requests) == [False, False] and Cdn.answers == [True, True]
    assert forced["unchanged"] == 2 and forced["embedded"] == 0  # same bytes: same blobs
    checked = invoke("check", "--json", "--index", index)  # blobs/ and fetched/ are the index's
    assert checked.exit_code == 0 and json.loads(checked.stdout)["problems"] == []


def test_urls_without_validators_are_reused_for_a_day_then_fetched_again(
    tiny_model: str, tmp_path: Path, server: str
) -> None:
    Cdn.seeds["c"] = 3
    catalog = write_rows(tmp_path / "p.jsonl", server, {"c": "n"})
    index = tmp_path / "idx"
    import_catalog(catalog, index, "--model", tiny_model)
    Cdn.seeds["c"], Cdn.requests = 4, []
    kept = import_catalog(catalog, index)
    assert kept["unchanged"] == 1 and Cdn.requests == []  # within the max age: not asked
    refused = json_lines("index", "--catalog", catalog, "--index", index, "--json", "-q")[0]
    assert refused["replaced"] == 1 and Cdn.requests == []  # the copy only under the policy
    [record] = (index / URL_RECORDS).rglob("*.json")
    fields = json.loads(record.read_text())
    record.write_text(json.dumps({**fields, "fetched_at": time.time() - REMOTE_MAX_AGE_S - 1}))
    aged = import_catalog(catalog, index)
    assert conditional(Cdn.requests) == [False]  # nothing to ask with: a plain GET
    assert aged["replaced"] == 1 and aged["embedded"] == 1 and sha(png(4)) in blob_names(index)


def test_a_failed_revalidation_keeps_the_copy_unless_the_server_says_it_is_gone(
    tiny_model: str, tmp_path: Path, server: str
) -> None:
    Cdn.seeds["d"] = 5
    catalog = write_rows(tmp_path / "p.jsonl", server, {"d": "e"})
    index = tmp_path / "idx"
    import_catalog(catalog, index, "--model", tiny_model)
    Cdn.statuses["/e/d"] = 503
    down = import_catalog(catalog, index)
    assert down["unchanged"] == 1 and len(Cdn.requests) == 2  # kept: still searchable
    Cdn.statuses["/e/d"] = 404
    gone = import_catalog(catalog, index)
    assert gone["replaced"] == 1
    writer = ProductWriter(index, lambda: None)
    [image] = writer.get("U-d")["images"]
    assert (image["status"], image["item_id"]) == ("http-status", None)
    writer.close()
    refused = json_lines("index", "--catalog", catalog, "--index", index, "--json", "-q")[0]
    assert refused["unchanged"] == 1 and len(Cdn.requests) == 3  # refused before connecting


@pytest.fixture
def shop_index(tiny_model: str, tmp_path: Path) -> Path:
    return index_shop(tiny_model, tmp_path)


def test_http_put_and_bulk_revalidate_a_field_patch_asks_nothing_refetch_forces(
    shop_index: Path, server: str
) -> None:
    Cdn.seeds["w"] = 6
    body = {"title": "web", "images": [f"{server}/e/w"]}
    row = json.dumps({"id": "W-1", **body, "price": 3}) + "\n"  # as after the patch below
    config = ServeConfig(fetch_allow=("127.0.0.1",))
    with open_app(shop_index, config) as (app, _), TestClient(app) as client:
        assert client.put("/products/W-1", json=body).status_code == 201
        item_id = client.get("/products/W-1").json()["images"][0]["item_id"]
        assert client.put("/products/W-1", json=body).status_code == 200
        assert conditional(Cdn.requests) == [False, True] and Cdn.answers == [True, False]
        patched = client.patch("/products/W-1", json={"price": 3})
        assert patched.status_code == 200 and len(Cdn.requests) == 2  # no request at all
        bulk = client.post("/products/bulk", content=row)
        assert bulk.json()["counts"]["unchanged"] == 1
        assert conditional(Cdn.requests[2:]) == [True]
        forced = client.put("/products/W-1", params={"refetch": "true"}, json=body)
        assert forced.status_code == 200 and conditional(Cdn.requests[3:]) == [False]
        client.post("/products/bulk", params={"refetch": "true"}, content=row)
        assert conditional(Cdn.requests[4:]) == [False] and Cdn.answers[3:] == [True, True]
        [image] = client.get("/products/W-1").json()["images"]
        assert image["item_id"] == item_id and image["status"] == "embedded"
