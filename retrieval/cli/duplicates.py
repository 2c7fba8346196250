"""`mmsearch duplicates`: groups of near-identical indexed images, best representative first."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from ..config import DEFAULT_INDEX_DIR
from ..search.queries import DEFAULT_DUPLICATE_THRESHOLD
from .common import IndexOption, run_guarded


def duplicates(
    threshold: Annotated[
        float,
        typer.Option(help="Cosine at or above which two images count as near-duplicates"),
    ] = DEFAULT_DUPLICATE_THRESHOLD,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print JSON on stdout, nothing else")
    ] = False,
    index_dir: IndexOption = None,
) -> None:
    """List groups of near-duplicate images (copies, resized, recompressed, lightly cropped)
    from the stored vectors, no model run. The first image of each group is its best one
    (most pixels, then largest file); each score is the cosine to that first image."""

    def body() -> None:
        from ..search.duplicates import find_duplicates
        from ..storage.store import IndexStore

        with IndexStore.open(index_dir or DEFAULT_INDEX_DIR, readonly=True) as store:
            report = find_duplicates(store, threshold)
        if as_json:
            typer.echo(json.dumps(report.to_dict(), ensure_ascii=False))
            return
        if not report.groups:
            typer.echo(f"no near-duplicates at threshold {threshold}")
        for number, group in enumerate(report.groups, start=1):
            typer.echo(f"group {number} ({len(group.items)} images)")
            for member in group.items:
                typer.echo(f"  {member.score:.4f}  {member.id:>6}  {member.path}")

    run_guarded(body)
