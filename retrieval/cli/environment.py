"""The one place mmsearch's own MMSEARCH_* environment variables are read. The front ends read
them here once (`read_settings`) and pass the values down as explicit parameters (EmbedConfig
fields); the library below never looks at os.environ for its settings.

Typer reads the variables of command-line options itself (`envvar=` on the option, e.g.
MMSEARCH_BACKEND, MMSEARCH_INDEX, MMSEARCH_DEVICE); their names live here too, so one file
lists every variable. The documented exceptions elsewhere (tests/unit/test_layout.py keeps the
list): faults.py reads MMSEARCH_FAULT (a crash-injection hook for the fault harnesses, which set
it in a child process's environment), embedders/open_clip.py reads Hugging Face's own
HF_ENDPOINT/HF_HUB_OFFLINE to word an offline error, and distributed/ray_embed.py forwards the
environment to Ray workers (an edge to another process). A leaf: no other CLI module."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..config import EmbedConfig
from ..errors import InvalidOptionError

BACKEND_ENV = "MMSEARCH_BACKEND"
INDEX_DIR_ENV = "MMSEARCH_INDEX"
DEVICE_ENV = "MMSEARCH_DEVICE"
DECODE_ENV = "MMSEARCH_DECODE"
THREADS_ENV = "MMSEARCH_THREADS"
EXPORT_CACHE_ENV = "MMSEARCH_EXPORT_CACHE"
HASH_CACHE_ENV = "MMSEARCH_HASH_CACHE"


@dataclass(frozen=True)
class Settings:
    """What the environment asks for; None: the library's own default."""

    backend: str | None = None  # auto|torch|<engine> for callers that give none
    threads: int | None = None  # the model's CPU threads (default: every usable core)
    export_cache: Path | None = None  # exported graphs (default ~/.cache/mmsearch/exports)
    hash_cache: Path | None = None  # remembered weight hashes (default ~/.cache/mmsearch/...)

    def embed_config(self, **fields: Any) -> EmbedConfig:
        """An EmbedConfig of `fields`, with these settings where `fields` names none (a
        `backend` of auto is replaced by the environment's too, as --backend's envvar does)."""
        config = EmbedConfig(**fields)
        backend = config.backend
        if backend == "auto" and self.backend:
            backend = self.backend
        return replace(
            config,
            backend=backend,
            threads=config.threads if config.threads is not None else self.threads,
            export_cache=config.export_cache or self.export_cache,
            hash_cache=config.hash_cache or self.hash_cache,
        )


def read_settings(environ: Mapping[str, str] = os.environ) -> Settings:
    """The settings the environment asks for.

    Raises:
        InvalidOptionError: MMSEARCH_THREADS is not a whole number >= 1.
    """
    return Settings(
        backend=environ.get(BACKEND_ENV) or None,
        threads=_threads(environ.get(THREADS_ENV, "").strip()),
        export_cache=_path(environ.get(EXPORT_CACHE_ENV)),
        hash_cache=_path(environ.get(HASH_CACHE_ENV)),
    )


def _threads(raw: str) -> int | None:
    if not raw:
        return None
    if not (raw.isascii() and raw.isdigit()) or int(raw) < 1:  # "²" is a digit to isdigit
        raise InvalidOptionError(
            f"{THREADS_ENV}={raw!r} is not a thread count; set it to a whole number >= 1, "
            "or unset it to use every core"
        )
    return int(raw)


def _path(raw: str | None) -> Path | None:
    return Path(raw).expanduser() if raw else None
