"""Fetching product images from URLs without opening the server to SSRF.

Only http/https. The host's every address (getaddrinfo) must be public: loopback, private,
link-local, multicast, reserved, unspecified and IPv4-mapped/6to4 forms of those are refused
unless `--fetch-allow HOST|CIDR` names them. The connection is then made to the address that
was checked (the URL's host rewritten to it, with Host and TLS SNI/certificate checks kept on
the name), so DNS cannot answer differently in between. Redirects are followed by hand, at most
MAX_REDIRECTS, each target checked the same way. Bytes are capped, every read has a timeout
and the whole fetch a deadline (a server that drips bytes forever is dropped), and the bytes
must decode as an image (blobs.image_format).

`fetch_if_changed` sends the validators of a stored copy (If-None-Match / If-Modified-Since,
RFC 9110 13.1) through the same checks, and a 304 answer means the stored copy is current. The
headers are written here rather than through an HTTP cache library (hishel): such a cache keys
on the URL it requests, which is the pinned address here, and keeps a second copy of every body
beside the content-addressed blobs."""

from __future__ import annotations

import ipaddress
import socket
import time
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit, urlunsplit

from ..config import REMOTE_MAX_AGE_S
from ..errors import ImageDecodeError, ImageTooLargeError, MmsearchError
from ..storage.blobs import image_format

SCHEMES = ("http", "https")
MAX_REDIRECTS = 3
# Shop images are a few MB at most; the cap bounds memory and disk per fetch.
MAX_FETCH_BYTES = 20 << 20
# Per connect/read; a healthy CDN answers in well under a second.
READ_TIMEOUT_S = 5.0
# The whole fetch, redirects included: long enough for 20 MB on a slow link, short enough that
# a write waiting on it does not hold the writer lock for long.
TOTAL_TIMEOUT_S = 20.0
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class FetchError(MmsearchError):
    """A URL that may not or could not be fetched; `reason` is a short label."""

    def __init__(self, url: str, reason: str, detail: str = "", status: int | None = None) -> None:
        self.url = url
        self.reason = reason
        self.detail = detail
        self.status = status  # the HTTP status, for "http-status"
        super().__init__(f"{url[:200]}: {reason}" + (f" ({detail})" if detail else ""))

    @property
    def transient(self) -> bool:
        """The server could not be reached or failed (5xx): the URL may well work later,
        unlike a refusal, a 4xx answer or bytes that are not an image."""
        if self.reason == "http-status":
            return self.status is not None and self.status >= 500
        return self.reason in TRANSIENT_REASONS


@dataclass(frozen=True)
class FetchPolicy:
    """What may be fetched: `allow_hosts` and `allow_networks` (from --fetch-allow) permit
    private addresses; the limits bound each fetch; `max_age_s` is how long a stored copy of a
    URL without validators is reused (config.REMOTE_MAX_AGE_S)."""

    allow_hosts: frozenset[str] = frozenset()
    allow_networks: tuple[IpNetwork, ...] = ()
    max_bytes: int = MAX_FETCH_BYTES
    read_timeout_s: float = READ_TIMEOUT_S
    total_timeout_s: float = TOTAL_TIMEOUT_S
    max_age_s: float = REMOTE_MAX_AGE_S

    @classmethod
    def from_allow(cls, allow: list[str] | tuple[str, ...], **limits: float) -> FetchPolicy:
        """A policy from --fetch-allow values: a CIDR or address, else a host name."""
        hosts, networks = set(), []
        for value in allow:
            try:
                networks.append(ipaddress.ip_network(value.strip("[]"), strict=False))
            except ValueError:
                hosts.add(value.lower())
        return cls(frozenset(hosts), tuple(networks), **limits)  # type: ignore[arg-type]


def is_url(source: str) -> bool:
    return urlsplit(source).scheme.lower() in SCHEMES and "://" in source


def _public(address: IpAddress) -> bool:
    if isinstance(address, ipaddress.IPv6Address):
        mapped = address.ipv4_mapped or address.sixtofour
        if mapped is not None:
            return _public(mapped)
    return not (
        address.is_loopback
        or address.is_private
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
        or not address.is_global
    )


def check_url(url: str, policy: FetchPolicy) -> tuple[str, str, int, IpAddress]:
    """(scheme, host, port, the address to connect to) for a URL the policy permits.

    Raises:
        FetchError: another scheme, no host, a name that does not resolve, or any address of
            the host that is not public and not allowed.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise FetchError(url, "scheme-refused", f"only http and https, not {scheme or 'none'}")
    host = (parts.hostname or "").lower()
    if not host:
        raise FetchError(url, "bad-url", "no host")
    try:
        port = parts.port or (443 if scheme == "https" else 80)
    except ValueError as err:
        raise FetchError(url, "bad-url", str(err)) from err
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as err:
        raise FetchError(url, "unresolvable", str(err)) from err
    addresses = [ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos]
    if not addresses:
        raise FetchError(url, "unresolvable", "no address")
    for address in addresses:
        allowed = host in policy.allow_hosts or any(
            address in network for network in policy.allow_networks
        )
        if not allowed and not _public(address):
            raise FetchError(
                url,
                "address-refused",
                f"{host} resolves to {address}, a non-public address; allow it with "
                "--fetch-allow HOST|CIDR",
            )
    return scheme, host, port, addresses[0]


# A name that does not resolve is most often a DNS hiccup; the others are the network's.
TRANSIENT_REASONS = frozenset({"unresolvable", "fetch-failed", "too-slow"})


@dataclass(frozen=True)
class Fetched:
    """A fetch's answer: the bytes (None: 304, the caller's copy is current) and the
    validators the server gave for them (None when it gave none)."""

    data: bytes | None
    etag: str | None = None
    last_modified: str | None = None


def fetch(url: str, policy: FetchPolicy) -> bytes:
    """The image bytes at `url` (following at most MAX_REDIRECTS checked redirects).

    Raises:
        FetchError: refused or failed (see module docstring).
        ImageTooLargeError: more than policy.max_bytes.
        ImageDecodeError: the bytes are not an image.
    """
    data = fetch_if_changed(url, policy).data
    if data is None:  # only a conditional request may be answered 304
        raise FetchError(url, "http-status", "HTTP 304 to a plain GET", 304)
    return data


def fetch_if_changed(
    url: str, policy: FetchPolicy, etag: str | None = None, last_modified: str | None = None
) -> Fetched:
    """`url`'s bytes and validators, or `Fetched(None, ...)` when the server answers 304 to
    the validators of a stored copy (`etag`, `last_modified`); every hop checked as `fetch`.

    Raises:
        as fetch.
    """
    import httpx

    deadline = time.monotonic() + policy.total_timeout_s
    timeout = httpx.Timeout(policy.read_timeout_s)
    current = url
    with httpx.Client(timeout=timeout, follow_redirects=False, trust_env=False) as client:
        for _ in range(MAX_REDIRECTS + 1):
            scheme, host, port, address = check_url(current, policy)
            parts = urlsplit(current)
            netloc = f"[{address}]" if address.version == 6 else str(address)
            pinned = urlunsplit((scheme, f"{netloc}:{port}", parts.path or "/", parts.query, ""))
            headers = {"Host": parts.netloc.rsplit("@", 1)[-1], "Accept": "image/*"}
            if etag:
                headers["If-None-Match"] = etag
            if last_modified:
                headers["If-Modified-Since"] = last_modified
            try:
                with client.stream(
                    "GET", pinned, headers=headers, extensions={"sni_hostname": host}
                ) as answer:
                    if answer.has_redirect_location:  # not 304, nor a 3xx without one
                        location = answer.headers.get("location", "")
                        current = urljoin(current, location)
                        continue
                    status = answer.status_code
                    if status == 304 and (etag or last_modified):
                        return _validated(answer, None, etag, last_modified)
                    if status != 200:
                        raise FetchError(url, "http-status", f"HTTP {status}", status)
                    data = _read_capped(answer, url, policy, deadline)
            except httpx.HTTPError as err:
                raise FetchError(url, "fetch-failed", f"{type(err).__name__}: {err}") from err
            image_format(data, url[:200])
            return _validated(answer, data)
    raise FetchError(url, "too-many-redirects", f"more than {MAX_REDIRECTS}")


def _validated(
    answer: object, data: bytes | None, etag: str | None = None, last_modified: str | None = None
) -> Fetched:
    """The answer's validators (a 304 may repeat them or not: then the ones sent stay)."""
    headers = answer.headers  # type: ignore[attr-defined]
    return Fetched(
        data,
        headers.get("etag") or etag,
        headers.get("last-modified") or last_modified,
    )


def _read_capped(answer: object, url: str, policy: FetchPolicy, deadline: float) -> bytes:
    declared = answer.headers.get("content-length")  # type: ignore[attr-defined]
    if declared and declared.isdigit() and int(declared) > policy.max_bytes:
        raise ImageTooLargeError(f"{url[:200]} is {declared} bytes; the cap is {policy.max_bytes}")
    chunks, size = [], 0
    for chunk in answer.iter_bytes():  # type: ignore[attr-defined]
        size += len(chunk)
        if size > policy.max_bytes:
            raise ImageTooLargeError(f"{url[:200]} is over the cap of {policy.max_bytes} bytes")
        if time.monotonic() > deadline:
            raise FetchError(url, "too-slow", f"not done within {policy.total_timeout_s:g} s")
        chunks.append(chunk)
    return b"".join(chunks)


__all__ = [
    "MAX_REDIRECTS",
    "FetchError",
    "FetchPolicy",
    "Fetched",
    "ImageDecodeError",
    "check_url",
    "fetch",
    "fetch_if_changed",
    "is_url",
]
