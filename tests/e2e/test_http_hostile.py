"""Hostile clients against a live `mmsearch serve` configuration (real uvicorn on 127.0.0.1, raw
sockets where a well-behaved client library cannot misbehave enough): slow and oversized
requests, malformed bodies and query strings, header floods. Every answer is a JSON 4xx or a
closed connection within its timeout, never a 5xx or a hang, and the server keeps answering."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import httpx
import pytest
from httpkit import (
    address,
    exchange,
    index_photos,
    json_body,
    open_app,
    read_until_closed,
    run_server,
    status_of,
)

from benchmarks.faults.fuzz_http import fuzz
from retrieval.config import ServeConfig

# Short timeouts so each slow-client case takes about a second; the defaults are 10/15/120 s.
SLOW = ServeConfig(
    header_timeout_s=1.0, body_idle_timeout_s=1.0, body_timeout_s=2.5, max_upload_bytes=64 * 1024
)
# How long past its timeout a connection may take to close: event-loop and CPU contention slack.
SLACK_S = 3.0


@pytest.fixture(scope="module")
def live(tiny_model: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    directory = index_photos(tiny_model, tmp_path_factory.mktemp("hostile"), count=6)
    with open_app(directory, SLOW) as (app, _), run_server(app, SLOW) as base:
        yield base


def assert_alive(base: str) -> None:
    assert httpx.get(f"{base}/health", timeout=10).status_code == 200


# -- slow clients ----------------------------------------------------------------------------------
def test_a_connection_that_sends_nothing_is_closed_after_the_header_timeout(live: str) -> None:
    started = time.monotonic()
    assert exchange(live) == b""
    assert SLOW.header_timeout_s <= time.monotonic() - started < SLOW.header_timeout_s + SLACK_S
    assert_alive(live)


def test_headers_sent_a_byte_at_a_time_are_cut_off(live: str) -> None:
    head = b"GET /search?q=x HTTP/1.1\r\nHost: localhost\r\nX-Slow: " + b"a" * 40
    started = time.monotonic()
    # 0.1 s per byte: the head would take 6 s, the server waits 1 s.
    assert exchange(live, *(head[i : i + 1] for i in range(len(head))), pause_s=0.1) == b""
    assert time.monotonic() - started < SLOW.header_timeout_s + SLACK_S + 0.1 * 10
    assert_alive(live)


def test_keep_alive_connections_get_the_header_timeout_again_after_each_answer(live: str) -> None:
    request = b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n"
    with socket.create_connection(address(live), timeout=10) as sock:
        sock.sendall(request)
        time.sleep(0.3)
        first = sock.recv(65536)
        assert status_of(first) == 200
        sock.sendall(b"GET /health HTTP/1.1\r\nHo")  # and then nothing
        started = time.monotonic()
        assert read_until_closed(sock, 10) == b""
    assert time.monotonic() - started < SLOW.header_timeout_s + SLACK_S


def multipart_head(length: int, path: str = "/search/image") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {length}\r\n"
        "Content-Type: multipart/form-data; boundary=XyZ\r\n\r\n"
    ).encode()


def test_a_stalled_body_gets_408(live: str) -> None:
    started = time.monotonic()
    raw = exchange(live, multipart_head(5000) + b"--XyZ\r\nContent-Disposition: form-data")
    assert status_of(raw) == 408, raw
    assert "stalled" in json_body(raw)["message"]
    assert time.monotonic() - started < SLOW.body_idle_timeout_s + SLACK_S
    assert_alive(live)


def test_a_trickled_body_gets_408_at_the_total_deadline(live: str) -> None:
    # One byte every 0.4 s never stalls for the 1 s idle timeout; the 2.5 s total cuts it off.
    part = b'--XyZ\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n'
    chunks = [multipart_head(5000) + part] + [b"a"] * 30
    started = time.monotonic()
    raw = exchange(live, *chunks, pause_s=0.4)
    assert status_of(raw) == 408, raw
    assert "took over" in json_body(raw)["message"]
    assert time.monotonic() - started < 30 * 0.4 + SLACK_S


def test_a_slow_json_body_gets_408_too(live: str) -> None:
    head = b"POST /search HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
    raw = exchange(live, head + b"Content-Length: 100\r\n\r\n" + b'{"text": "')
    assert status_of(raw) == 408, raw


# -- oversized and malformed bodies -------------------------------------------------------------
def test_an_oversized_declared_body_is_refused_before_it_is_sent(live: str) -> None:
    raw = exchange(live, multipart_head(10**12))
    assert status_of(raw) == 413 and json_body(raw)["error"] == "too_large"


def test_an_oversized_chunked_body_is_refused_while_streaming(live: str) -> None:
    head = (
        b"POST /search/image HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n"
        b"Content-Type: multipart/form-data; boundary=XyZ\r\n\r\n"
    )
    part = b'--XyZ\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n'
    chunk = b"%x\r\n%s\r\n" % (32 * 1024, b"a" * 32 * 1024)
    raw = exchange(
        live, head + b"%x\r\n%s\r\n" % (len(part), part), *[chunk] * 8
    )  # 256 KiB against a ~150 KiB cap
    assert status_of(raw) == 413, raw


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("multipart/form-data; boundary=XyZ", b"--XyZ\r\nnot a header line\r\n\r\nx\r\n--XyZ--"),
        ("multipart/form-data; boundary=XyZ", b"--XyZ\r\nContent-Disposition: form-data; "
         b'name="file"; filename="a.png"\r\n\r\nPNG without the closing boundary'),
        ("multipart/form-data", b"--XyZ\r\n\r\n--XyZ--"),  # no boundary parameter
        ("multipart/form-data; boundary=", b"----\r\n\r\n"),
        ("multipart/form-data; boundary=XyZ", b"\xff\xfe\x00garbage" * 100),
        ("multipart/form-data; boundary=XyZ", b"--XyZ\r\nContent-Disposition: form-data; "
         b'name="file"; filename="\xff\xfe.png"\r\n\r\n\x89PNG\r\n--XyZ--\r\n'),
        ("multipart/form-data; boundary=XyZ", b"--XyZ--\r\n"),  # no parts at all
        ("application/x-www-form-urlencoded", b"file=%ff%fe&k=3"),
        ("text/plain", b"just text"),
    ],
)  # fmt: skip
def test_malformed_multipart_gets_a_json_4xx(live: str, content_type: str, body: bytes) -> None:
    response = httpx.post(
        f"{live}/search/image", content=body, headers={"Content-Type": content_type}, timeout=10
    )
    assert 400 <= response.status_code < 500, response.text
    assert response.json()["message"]


def test_many_multipart_parts_are_bounded(live: str) -> None:
    part = b'--XyZ\r\nContent-Disposition: form-data; name="f"\r\n\r\nx\r\n'
    body = part * 5000 + b"--XyZ--\r\n"  # ~290 KiB: over the cap anyway, and over the part limit
    response = httpx.post(
        f"{live}/search/image",
        content=body[: 60 * 1024] + b"--XyZ--\r\n",
        headers={"Content-Type": "multipart/form-data; boundary=XyZ"},
        timeout=10,
    )
    assert 400 <= response.status_code < 500, response.text


@pytest.mark.parametrize(
    "image_b64",
    ["!!!!", "AAA", "A" * 5, "data:image/png;base64,", "data:,%%%", "\u00e9\u00e9\u00e9\u00e9",
     "AAAA" * 10 + "=", "====", "data:image/png;base64,AAAA,AAAA", " AAAA", "AA\nAA"],
)  # fmt: skip
def test_invalid_base64_gets_a_json_4xx(live: str, image_b64: str) -> None:
    response = httpx.post(f"{live}/search", json={"image_b64": image_b64}, timeout=10)
    assert response.status_code in (400, 422), response.text
    assert response.json()["error"] in ("bad_request", "image_decode")


# -- parameters and query strings ------------------------------------------------------------------
@pytest.mark.parametrize(
    "query",
    ["q=x&k=99999999999999999999999999", "q=x&k=-1", "q=x&k=1e400", "q=x&k=NaN",
     "q=x&offset=99999999999999999999", "q=x&offset=-5", "q=x&k=1000&offset=9001",
     "q=x&text_weight=inf", "q=x&text_weight=1e309", "q=x&target=../../etc"],
)  # fmt: skip
def test_huge_and_odd_numbers_get_422(live: str, query: str) -> None:
    response = httpx.get(f"{live}/search?{query}", timeout=10)
    assert response.status_code == 422, response.text


@pytest.mark.parametrize(
    "query",
    ["q=x&colour=red", "q=x&price_min=abc", "q=x&%00=1", "q=x&__class__=1",
     "q=x&" + "&".join(f"f{i}=1" for i in range(40)),
     "q=x&title%27%3B%20DROP%20TABLE%20items%3B--=1"],
)  # fmt: skip
def test_unknown_filters_get_422(live: str, query: str) -> None:
    response = httpx.get(f"{live}/search?{query}", timeout=10)
    assert response.status_code == 422, response.text
    assert response.json()["error"] in ("invalid_query", "validation")


@pytest.mark.parametrize(
    "target",
    [b"/search?q=%ff%fe%fd", b"/search?q=\xff\xfe", b"/search?q=%c0%af", b"/search?%ff=%ff&q=x",
     b"/items/%ff/image", b"/search?q=%00", b"/search?q=%", b"/search?q=%zz&k=%zz"],
)  # fmt: skip
def test_non_utf8_query_strings_get_a_4xx_or_a_search(live: str, target: bytes) -> None:
    raw = exchange(
        live, b"GET " + target + b" HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    assert status_of(raw) in (200, 400, 404, 422), raw[:300]
    assert_alive(live)


def test_a_multi_megabyte_query_string_is_refused_and_the_connection_closed(live: str) -> None:
    target = b"/search?q=" + b"a" * (4 * 1024 * 1024)
    raw = exchange(live, b"GET " + target + b" HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert raw == b"" or status_of(raw) in (400, 414, 431), raw[:300]
    assert_alive(live)


def test_a_long_query_under_the_head_limit_gets_422(live: str) -> None:
    response = httpx.get(f"{live}/search", params={"q": "a" * 10_000}, timeout=10)
    assert response.status_code == 422


# -- header floods ---------------------------------------------------------------------------------
def test_a_header_flood_is_refused(live: str) -> None:
    headers = b"".join(b"X-Flood-%d: %s\r\n" % (i, b"v" * 20) for i in range(20_000))
    raw = exchange(live, b"GET /health HTTP/1.1\r\nHost: localhost\r\n" + headers + b"\r\n")
    assert raw == b"" or status_of(raw) in (400, 431), raw[:300]
    assert_alive(live)


def test_one_huge_header_is_refused(live: str) -> None:
    raw = exchange(
        live, b"GET /health HTTP/1.1\r\nHost: localhost\r\nCookie: " + b"c" * 10**6 + b"\r\n\r\n"
    )
    assert raw == b"" or status_of(raw) in (400, 431), raw[:300]


def test_many_headers_under_the_limit_still_get_an_answer(live: str) -> None:
    headers = {f"X-Many-{i}": "v" for i in range(300)}
    assert httpx.get(f"{live}/search", params={"q": "x"}, headers=headers, timeout=10).is_success


def test_garbage_request_lines_are_refused(live: str) -> None:
    for line in (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", b"GET\r\n\r\n",
                 b"BREW /coffee HTCPCP/1.0\r\n\r\n"):  # fmt: skip
        raw = exchange(live, line)
        assert raw == b"" or 400 <= status_of(raw) < 500, (line, raw[:200])
    assert_alive(live)


def test_schemathesis_against_the_live_server_gets_only_documented_4xx(live: str) -> None:
    # A few cases per operation; `python -m benchmarks.faults.fuzz_http` runs thousands.
    report = fuzz(live, examples=4, stateful=4)
    assert not report.failures, "\n\n".join(report.failures.values())
    assert report.total >= 60 and report.stateful_steps > 0
    assert report.statuses[200] > 0 and not any(status >= 500 for status in report.statuses)
    assert len(report.cases) >= 9  # every operation was called


def test_the_server_still_searches_after_all_that(live: str) -> None:
    response = httpx.get(f"{live}/search", params={"q": "a red shoe", "k": 3}, timeout=10)
    assert response.status_code == 200 and len(response.json()["results"]) == 3
