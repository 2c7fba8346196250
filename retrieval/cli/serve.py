"""`mmsearch serve`: every option maps onto a ServeConfig or BatchConfig field (most read an
MMSEARCH_* environment variable); http/runner.py does the serving."""

from __future__ import annotations

from typing import Annotated

import typer

from ..config import DEFAULT_INDEX_DIR, MIB, BatchConfig, ServeConfig
from .common import (
    BackendOption,
    DeviceOption,
    FetchAllowOption,
    IndexOption,
    PrecisionOption,
    run_guarded,
)
from .environment import read_settings

_SERVE = ServeConfig()
_BATCH = BatchConfig()


def serve(
    index_dir: IndexOption = None,
    host: Annotated[
        str, typer.Option(help="Address to listen on (0.0.0.0: all)", envvar="MMSEARCH_HOST")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, envvar="MMSEARCH_PORT")] = 8000,
    api_key: Annotated[
        str | None,
        typer.Option(
            help="Require this key (X-API-Key or Authorization: Bearer) on every endpoint but "
            "/health",
            envvar="MMSEARCH_API_KEY",
            show_default=False,
        ),
    ] = None,
    fetch_allow: FetchAllowOption = None,
    compact_rows: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Product writes go to a change log; past this many rows it is folded into the "
            "faiss files in the background [default: 1/16 of the catalog's vectors, 2048 to "
            "8192; a write that would take the log past twice that folds it itself]",
            envvar="MMSEARCH_COMPACT_ROWS",
            show_default=False,
        ),
    ] = _SERVE.compact_rows,
    cors_origin: Annotated[
        list[str] | None,
        typer.Option(
            help="Origin allowed to call the API from a browser, e.g. https://shop.example "
            "(repeatable; none by default)",
            envvar="MMSEARCH_CORS_ORIGINS",
            show_default=False,
        ),
    ] = None,
    allowed_host: Annotated[
        list[str] | None,
        typer.Option(
            help="Without --api-key, a Host name to answer to besides localhost, IP addresses "
            "and --host (repeatable; '*': any). Others get 400, against DNS rebinding",
            envvar="MMSEARCH_ALLOWED_HOSTS",
            show_default=False,
        ),
    ] = None,
    forwarded_allow_ip: Annotated[
        list[str] | None,
        typer.Option(
            help="Address of a reverse proxy whose X-Forwarded-For/-Proto headers are trusted "
            "(repeatable; none by default)",
            envvar="MMSEARCH_FORWARDED_ALLOW_IPS",
            show_default=False,
        ),
    ] = None,
    device: DeviceOption = "auto",
    precision: PrecisionOption = "auto",
    backend: BackendOption = "auto",
    max_upload_mb: Annotated[
        float, typer.Option(min=0.01, help="Largest accepted query image, MiB (413 above)")
    ] = _SERVE.max_upload_bytes / MIB,
    max_megapixels: Annotated[
        float, typer.Option(min=0.01, help="Largest accepted query image, megapixels (422 above)")
    ] = _SERVE.max_megapixels,
    decode_budget_mpx: Annotated[
        float,
        typer.Option(
            min=0.01,
            help="Megapixels decoded at once over all requests (more wait): bounds decode memory",
            envvar="MMSEARCH_DECODE_BUDGET_MPX",
        ),
    ] = _SERVE.decode_budget_megapixels,
    max_concurrency: Annotated[
        int, typer.Option(min=1, help="Searches running at once", envvar="MMSEARCH_CONCURRENCY")
    ] = _SERVE.max_concurrency,
    max_queue: Annotated[
        int, typer.Option(min=0, help="Searches waiting for a slot before 429s start")
    ] = _SERVE.max_queue,
    cache_size: Annotated[
        int,
        typer.Option(
            min=0,
            help="Query-text embeddings kept in an LRU cache (0: off)",
            envvar="MMSEARCH_CACHE",
        ),
    ] = _BATCH.cache_size,
    max_batch: Annotated[
        int, typer.Option(min=1, help="Most query texts embedded in one forward pass")
    ] = _BATCH.max_batch,
    batch_wait_ms: Annotated[
        float, typer.Option(min=0.0, help="How long a text query waits for others to batch with")
    ] = _BATCH.max_wait_s * 1000,
    access_log: Annotated[bool, typer.Option(help="Log every request (uvicorn)")] = True,
    currency: Annotated[
        str | None,
        typer.Option(
            help="ISO 4217 code of the catalog's prices (EUR, USD), shown by the search page",
            envvar="MMSEARCH_CURRENCY",
        ),
    ] = None,
    boost: Annotated[
        list[str] | None,
        typer.Option(
            help="Default business boost of product searches that give none: in_stock:1.2 "
            "(multiply when true), popularity:log[:SCALE] (add SCALE * log1p, 0.01 by "
            "default) (repeatable)",
            envvar="MMSEARCH_BOOSTS",
            show_default=False,
        ),
    ] = None,
    record_queries: Annotated[
        bool,
        typer.Option(
            help="Keep a sample (1,000) of the query vectors received in the index directory "
            "(recorded_queries.npy); the next re-tune of an approximate index measures recall "
            "with them (see `mmsearch info`)",
            envvar="MMSEARCH_RECORD_QUERIES",
        ),
    ] = False,
) -> None:
    """Serve searches over HTTP: a JSON API (docs at /docs), Prometheus /metrics, and a search
    page at /. One process: the model is loaded once and text queries are micro-batched."""

    def body() -> None:
        from ..http.runner import is_loopback, run_server
        from ..http.storefront import check_currency
        from ..search.merch import parse_boosts

        parse_boosts(boost or [])  # a typo fails now, not at the first search

        embed = read_settings().embed_config(device=device, precision=precision, backend=backend)
        config = ServeConfig(
            api_key=api_key or None,
            cors_origins=tuple(cors_origin or ()),
            allowed_hosts=tuple(allowed_host or ()),
            forwarded_allow_ips=tuple(forwarded_allow_ip or ()),
            fetch_allow=tuple(fetch_allow or ()),
            compact_rows=compact_rows,
            boosts=tuple(boost or ()),
            max_upload_bytes=int(max_upload_mb * MIB),
            max_megapixels=max_megapixels,
            decode_budget_megapixels=decode_budget_mpx,
            max_concurrency=max_concurrency,
            max_queue=max_queue,
            currency=check_currency(currency),
            batching=BatchConfig(
                max_batch=max_batch, max_wait_s=batch_wait_ms / 1000, cache_size=cache_size
            ),
            record_queries=record_queries,
        )
        if config.api_key is None and not is_loopback(host):
            typer.echo(
                f"warning: serving on {host} without --api-key: anyone who can reach this port "
                "can search the index and download the indexed images (by IP address, or by a "
                "name given with --allowed-host)",
                err=True,
            )
        directory = index_dir or DEFAULT_INDEX_DIR
        run_server(directory, embed, config, host=host, port=port, access_log=access_log)

    run_guarded(body)
