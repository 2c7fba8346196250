"""`mmsearch check [--repair]`: verify an index against its own records (see integrity.py)."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from ..config import DEFAULT_INDEX_DIR
from .common import EXIT_PROBLEMS, IndexOption, run_guarded


def check(
    index_dir: IndexOption = None,
    repair: Annotated[
        bool,
        typer.Option(
            "--repair",
            help="Rebuild what can be rebuilt from the stored vectors and records (faiss files, "
            "manifest, stray files); never drops items",
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON")] = False,
) -> None:
    """Verify an index: manifest, catalog, vectors and faiss files against their checksums.
    Exits 0 when the index is sound, 1 when problems remain (each printed with its fix)."""

    def body() -> None:
        from ..ingest.repair import repair_index
        from ..storage.integrity import check_index

        directory = index_dir or DEFAULT_INDEX_DIR
        report = repair_index(directory) if repair else check_index(directory)
        if as_json:
            typer.echo(json.dumps(report.to_dict()))
        else:
            for line in report.repaired:
                typer.echo(f"repaired: {line}")
            counts = ", ".join(
                f"{n} {name}" for name, n in report.counts.items() if name != "unused_blobs"
            )
            typer.echo(
                f"{report.directory}: generation {report.generation}"
                + (f", {counts}" if counts else "")
                + (": ok" if report.ok else f": {len(report.problems)} problem(s)")
            )
            for problem in report.problems:
                typer.echo(f"problem {problem.kind}: {problem.where}: {problem.detail}")
                typer.echo(f"  fix: {problem.fix}")
            if unused := report.counts.get("unused_blobs"):
                typer.echo(
                    f"note: {unused} stored image(s) of replaced or deleted products; "
                    f"`mmsearch check --repair --index {directory}` deletes those over an hour "
                    "old"
                )
        if not report.ok:
            raise typer.Exit(EXIT_PROBLEMS)

    run_guarded(body)
