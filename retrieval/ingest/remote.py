"""Image sources that are not local files: `http(s)://` URLs (fetched under a FetchPolicy,
fetch.py) and `data:image/...;base64,` URLs, turned into content-addressed files in the index
directory (blobs.py) before a write, so the write path, thumbnails and `check` only ever see
local files.

A URL fetched before is not downloaded again on a re-import (the CLI's `index --catalog`, HTTP
PUT and bulk). Its record (blobs.UrlRecord) holds the server's validators:
- with an ETag or Last-Modified, the server is asked (If-None-Match / If-Modified-Since, every
  hop checked as a first fetch is); 304 reuses the stored blob, so nothing is re-embedded; 200
  stores the new bytes, which are embedded under a new blob;
- without either, the stored copy is reused while younger than `policy.max_age_s`
  (config.REMOTE_MAX_AGE_S says why) and the policy still permits the URL's host, then
  fetched again in full;
- a revalidation the server could not answer (unreachable, timed out, 5xx) keeps the stored
  copy (stale-if-error, RFC 5861: a CDN hiccup must not drop a shop's photos from search); a
  definitive answer (4xx, not an image, an address the policy now refuses) fails the image.
`refetch` skips all of this and fetches every URL in full; `revalidate=False` (a PATCH that
leaves the images alone) reuses stored copies without contacting any server."""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import urlsplit

from ..config import FETCH_CONCURRENCY
from ..errors import ImageDecodeError, ImageTooLargeError
from ..storage.blobs import (
    UrlRecord,
    blob_path,
    decode_data_url,
    image_format,
    is_data_url,
    read_url_record,
    store_blob,
    write_url_record,
)
from ..storage.catalog import Catalog
from .fetch import FetchError, FetchPolicy, check_url, fetch_if_changed, is_url
from .products import ProductRow

logger = logging.getLogger(__name__)

MAX_DATA_BYTES = 20 << 20


@dataclass
class Resolved:
    """Rows with remote sources replaced by stored files; `origins`: stored file -> the URL
    it came from; `failures`: URL -> (reason, detail) for sources that stay unresolved.
    Per URL, one of: `fetched` (downloaded in full), `revalidated` (304), `reused` (no
    request), `stale` (revalidation failed, stored copy kept)."""

    rows: list[ProductRow]
    origins: dict[str, str] = field(default_factory=dict)
    failures: dict[str, tuple[str, str]] = field(default_factory=dict)
    fetched: int = 0
    revalidated: int = 0
    reused: int = 0
    stale: int = 0


def is_remote(source: str) -> bool:
    return is_url(source) or is_data_url(source)


def resolve_remote(
    rows: list[ProductRow],
    directory: Path,
    catalog: Catalog,
    policy: FetchPolicy | None,
    *,
    refetch: bool = False,
    revalidate: bool = True,
) -> Resolved:
    """Fetch, revalidate or decode every remote source of `rows` (see the module docstring;
    a None policy fetches nothing: URLs the products already have are reused, others fail)."""
    result = Resolved([])
    remote = [row for row in rows if any(is_remote(s) for s in row.images)]
    known: dict[str, str] = {}  # URL -> the stored file a product has for it
    if remote:
        for record in catalog.get_product_records(r.id for r in remote).values():
            for state in record.images:
                if state.get("url") and Path(state["source"]).is_file():
                    known[state["url"]] = state["source"]
    resolver = _Resolver(directory, policy, known, result, refetch, revalidate)
    wanted = list(dict.fromkeys(s for row in remote for s in row.images if is_remote(s)))
    if len(wanted) > 1:  # network-bound: a re-import of many URLs waits on round trips
        with ThreadPoolExecutor(min(FETCH_CONCURRENCY, len(wanted))) as pool:
            list(pool.map(resolver.resolve, wanted))
    for row in rows:
        if not any(is_remote(s) for s in row.images):
            result.rows.append(row)
            continue
        sources = []
        for source in row.images:
            stored = resolver.resolve(source) if is_remote(source) else source
            if stored is None:
                sources.append(source)
                continue
            if is_url(source):
                result.origins[stored] = source
            sources.append(stored)
        result.rows.append(replace(row, images=tuple(dict.fromkeys(sources))))
    return result


@dataclass
class _Resolver:
    """One resolve_remote call's sources, each URL handled once however many rows name it."""

    directory: Path
    policy: FetchPolicy | None
    known: dict[str, str]
    result: Resolved
    refetch: bool
    revalidate: bool
    done: dict[str, str | None] = field(default_factory=dict)
    checked: dict[str, FetchError | None] = field(default_factory=dict)  # origin -> verdict
    lock: threading.Lock = field(default_factory=threading.Lock)  # the counters, across threads

    def count(self, name: str) -> None:
        with self.lock:
            setattr(self.result, name, getattr(self.result, name) + 1)

    def resolve(self, source: str) -> str | None:
        """The stored file for `source`, or None (the reason is in result.failures)."""
        if source not in self.done:
            try:
                self.done[source] = self._resolve(source)
            except FetchError as err:
                self.result.failures[source] = (err.reason, err.detail)
            except ImageDecodeError as err:
                self.result.failures[source] = (err.reason, err.detail)
            except ImageTooLargeError as err:
                self.result.failures[source] = ("too-large", str(err))
            self.done.setdefault(source, None)
        return self.done[source]

    def _resolve(self, url: str) -> str:
        if is_data_url(url):
            data = decode_data_url(url, MAX_DATA_BYTES)
            return str(store_blob(self.directory, data, image_format(data, url[:80])))
        known, policy = self.known.get(url), self.policy
        if policy is None:
            if known is None:
                raise FetchError(url, "fetch-disabled", "this writer fetches no URLs")
            return known
        record = None if self.refetch else read_url_record(self.directory, url)
        stored = self._spelled(record, known) if record is not None else known
        if not self.revalidate and not self.refetch and stored is not None:
            self.count("reused")
            return stored
        if record is None or stored is None:
            return self._fetch(url, policy)  # new, forced, or stored before URL records existed
        if not record.has_validators and time.time() - record.fetched_at < policy.max_age_s:
            self._check(url, policy)  # a copy is only used for a URL the policy permits now
            self.count("reused")
            return stored
        if not record.has_validators:
            return self._fetch(url, policy)
        return self._revalidate(record, stored, policy)

    def _check(self, url: str, policy: FetchPolicy) -> None:
        """check_url's verdict on `url`, looked up once per scheme, host and port."""
        parts = urlsplit(url)
        origin = f"{parts.scheme}://{parts.netloc}".lower()
        if origin not in self.checked:
            try:
                check_url(url, policy)
                self.checked[origin] = None
            except FetchError as err:
                self.checked[origin] = err
        refused = self.checked[origin]
        if refused is not None:
            raise FetchError(url, refused.reason, refused.detail)

    def _revalidate(self, record: UrlRecord, stored: str, policy: FetchPolicy) -> str:
        try:
            answer = fetch_if_changed(record.url, policy, record.etag, record.last_modified)
        except FetchError as err:
            if not err.transient:
                raise
            logger.warning("%s; keeping the copy fetched before", err)
            self.count("stale")
            return stored
        if answer.data is not None:
            return self._store(record.url, answer.data, answer.etag, answer.last_modified)
        self.count("revalidated")
        if (answer.etag, answer.last_modified) != (record.etag, record.last_modified):
            write_url_record(
                self.directory,
                replace(record, etag=answer.etag, last_modified=answer.last_modified),
            )
        return stored

    def _fetch(self, url: str, policy: FetchPolicy) -> str:
        answer = fetch_if_changed(url, policy)
        if answer.data is None:  # a plain GET answered 304
            raise FetchError(url, "http-status", "HTTP 304 to a plain GET", 304)
        return self._store(url, answer.data, answer.etag, answer.last_modified)

    def _store(self, url: str, data: bytes, etag: str | None, last_modified: str | None) -> str:
        path = store_blob(self.directory, data, image_format(data, url[:80]))
        self.count("fetched")
        record = UrlRecord(url, path.name, etag, last_modified, time.time())
        write_url_record(self.directory, record)
        return str(path)

    def _spelled(self, record: UrlRecord, known: str | None) -> str:
        """The blob's path as the product already spells it (its items are keyed by that
        string), else as store_blob spells it."""
        if known is not None and Path(known).name == record.blob:
            return known
        return str(blob_path(self.directory, record.blob))


__all__ = ["Resolved", "is_remote", "resolve_remote"]
