"""What every command shares, and nothing else: `run_guarded` with the exit-code table, and the
Typer option types (one definition of each flag's name, help and environment variable). A leaf:
it imports no other CLI module."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, TypeVar

import typer

from ..config import INDEX_DIR_ENV
from ..errors import (
    IndexBusyError,
    IndexMismatchError,
    InputFileError,
    InvalidQueryError,
    MmsearchError,
    ModelUnavailableError,
)

# Exit codes: 2 is what typer uses for usage errors, so input problems share it.
EXIT_CODES: dict[type[MmsearchError], int] = {
    InvalidQueryError: 2,
    InputFileError: 2,
    ModelUnavailableError: 2,
    IndexMismatchError: 2,
    IndexBusyError: 75,  # EX_TEMPFAIL: try again later
}
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C
T = TypeVar("T")


def run_guarded(action: Callable[[], T]) -> T:
    """Run a command body; MmsearchError becomes `error: ...` on stderr and an exit code."""
    try:
        return action()
    except MmsearchError as err:
        typer.echo(f"error: {err}", err=True)
        code = next((c for kind, c in EXIT_CODES.items() if isinstance(err, kind)), 1)
        raise typer.Exit(code) from None
    except KeyboardInterrupt:
        typer.echo("interrupted; the previous index is unchanged and still usable", err=True)
        raise typer.Exit(EXIT_INTERRUPTED) from None


IndexOption = Annotated[
    Path | None,
    typer.Option(
        "--index",
        help=f"Index directory (default: ./indexes/default, or ${INDEX_DIR_ENV})",
        envvar=INDEX_DIR_ENV,
        show_default=False,
    ),
]
DeviceOption = Annotated[
    str,
    typer.Option(help="auto (CUDA when available), cpu, or cuda[:N]", envvar="MMSEARCH_DEVICE"),
]
PrecisionOption = Annotated[
    str,
    typer.Option(help="auto (fp32 on CPU, bf16/fp16 on CUDA), fp32, fp16 or bf16"),
]
