"""Running the HTTP app under uvicorn: open the index, warm the model and indexes before the
port is bound (a server that cannot search fails at start, not with 503s forever), serve, and
close the service (which stops the text batcher) on the way out."""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..config import EmbedConfig, ServeConfig
from .limits import HEAD_LIMIT_BYTES


def is_loopback(host: str) -> bool:
    """True when `host` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def server_config(app: Any, config: ServeConfig, *, host: str, port: int, **options: Any) -> Any:
    """The uvicorn.Config that `mmsearch serve` runs `app` under (tests run the same one)."""
    import uvicorn

    from .slow_clients import head_timeout_protocol

    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=head_timeout_protocol(config.header_timeout_s),
        # A head still arriving past this gets uvicorn's 400 and a closed connection; one that
        # arrived whole in one read gets the app's 431 (limits.HeadLimitMiddleware).
        h11_max_incomplete_event_size=HEAD_LIMIT_BYTES,
        # uvicorn believes X-Forwarded-For from 127.0.0.1 unless told otherwise, so any local
        # process could choose the client address in the access log: only named proxies.
        proxy_headers=bool(config.forwarded_allow_ips),
        forwarded_allow_ips=list(config.forwarded_allow_ips) or None,
        **options,
    )


# glibc's mallopt parameter number for the mmap threshold (malloc.h).
M_MMAP_THRESHOLD = -3
# Allocations from this size up get their own mapping, unmapped when freed.
MMAP_THRESHOLD_BYTES = 1024 * 1024


def return_freed_images_to_the_os() -> None:
    """Pin glibc's mmap threshold at 1 MiB. By default it rises to 32 MiB after the first large
    free, so Pillow's 16 MiB image blocks then come from per-thread malloc arenas, which keep
    them after the image is freed: 8 threads decoding one 49 Mpx PNG at a time (the decode
    budget) still grew the server by 2.3 GB and kept it; with the threshold pinned the peak
    was 390 MB and the memory went back (benchmarks/decode_memory.py). No-op elsewhere."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (macOS, musl builds without it)
        return
    mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)


def run_server(
    directory: Path,
    embed: EmbedConfig,
    config: ServeConfig,
    *,
    host: str,
    port: int,
    access_log: bool = True,
) -> None:
    """Serve the index at `directory` until uvicorn stops (Ctrl-C, SIGTERM)."""
    import uvicorn

    from ..compose import open_for_search
    from .routes import create_app

    return_freed_images_to_the_os()
    with open_for_search(
        directory, embed, batching=config.batching, record_queries=config.record_queries
    ) as service:
        service.warm()
        # The name the server was told to listen on is one it answers to (HostCheckMiddleware).
        config = replace(config, allowed_hosts=(*config.allowed_hosts, host))
        app = create_app(service, config)
        options = server_config(app, config, host=host, port=port, access_log=access_log)
        # uvicorn re-raises the SIGINT it handled once it has shut down; uvicorn.run() swallows
        # that KeyboardInterrupt and so do we: Ctrl+C is how `serve` is meant to stop (exit 0).
        with contextlib.suppress(KeyboardInterrupt):
            uvicorn.Server(options).run()
