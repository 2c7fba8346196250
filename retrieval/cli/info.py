"""`mmsearch info`: what an index holds, read without loading the model."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from ..config import DEFAULT_INDEX_DIR
from .common import IndexOption, run_guarded
from .render import info_text


def info(
    index_dir: IndexOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
) -> None:
    """Show an index's model, counts, index types, size on disk and times."""

    def body() -> None:
        from ..storage.store import IndexStore

        with IndexStore.open(index_dir or DEFAULT_INDEX_DIR, readonly=True) as store:
            details = store.info()
        typer.echo(json.dumps(details) if as_json else info_text(details))

    run_guarded(body)
