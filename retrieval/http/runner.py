"""Running the HTTP app under uvicorn: open the index, warm the model and indexes before the
port is bound (a server that cannot search fails at start, not with 503s forever), serve, and
close the service (which stops the text batcher) on the way out."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from ..config import EmbedConfig, ServeConfig


def is_loopback(host: str) -> bool:
    """True when `host` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


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

    with open_for_search(directory, embed, batching=config.batching) as service:
        service.warm()
        uvicorn.run(create_app(service, config), host=host, port=port, access_log=access_log)
