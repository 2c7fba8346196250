"""Image sources that are not local files: `http(s)://` URLs (fetched under a FetchPolicy,
fetch.py) and `data:image/...;base64,` URLs, turned into content-addressed files in the index
directory (blobs.py) before a write, so the write path, thumbnails and `check` only ever see
local files. A URL a product already has is not fetched again (its stored copy is reused)
unless `refetch` is asked for."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from ..errors import ImageDecodeError, ImageTooLargeError
from ..storage.blobs import decode_data_url, image_format, is_data_url, store_blob
from ..storage.catalog import Catalog
from .fetch import FetchError, FetchPolicy, fetch, is_url
from .products import ProductRow

MAX_DATA_BYTES = 20 << 20


@dataclass
class Resolved:
    """Rows with remote sources replaced by stored files; `origins`: stored file -> the URL
    it came from; `failures`: URL -> (reason, detail) for sources that stay unresolved."""

    rows: list[ProductRow]
    origins: dict[str, str] = field(default_factory=dict)
    failures: dict[str, tuple[str, str]] = field(default_factory=dict)


def is_remote(source: str) -> bool:
    return is_url(source) or is_data_url(source)


def resolve_remote(
    rows: list[ProductRow],
    directory: Path,
    catalog: Catalog,
    policy: FetchPolicy | None,
    *,
    refetch: bool = False,
) -> Resolved:
    """Fetch or decode every remote source of `rows` (None policy: URLs are refused)."""
    result = Resolved([])
    remote = [row for row in rows if any(is_remote(s) for s in row.images)]
    known: dict[str, str] = {}
    if remote and not refetch:
        for record in catalog.get_product_records(r.id for r in remote).values():
            for state in record.images:
                if state.get("url") and Path(state["source"]).is_file():
                    known[state["url"]] = state["source"]
    for row in rows:
        if row not in remote:
            result.rows.append(row)
            continue
        sources = []
        for source in row.images:
            if not is_remote(source):
                sources.append(source)
                continue
            stored = known.get(source) or _store(source, directory, policy, result)
            if stored is None:
                sources.append(source)
                continue
            if is_url(source):
                result.origins[stored] = source
                known[source] = stored
            sources.append(stored)
        result.rows.append(replace(row, images=tuple(dict.fromkeys(sources))))
    return result


def _store(
    source: str, directory: Path, policy: FetchPolicy | None, result: Resolved
) -> str | None:
    try:
        if is_data_url(source):
            data = decode_data_url(source, MAX_DATA_BYTES)
        elif policy is None:
            raise FetchError(source, "fetch-disabled", "this writer fetches no URLs")
        else:
            data = fetch(source, policy)
        return str(store_blob(directory, data, image_format(data, source[:80])))
    except FetchError as err:
        result.failures[source] = (err.reason, err.detail)
    except ImageDecodeError as err:
        result.failures[source] = (err.reason, err.detail)
    except ImageTooLargeError as err:
        result.failures[source] = ("too-large", str(err))
    return None


__all__ = ["Resolved", "is_remote", "resolve_remote"]
