"""The `mmsearch` Typer app: the callback that configures logging, and one command per module
(index, query, info, serve, eval, check, duplicates, caption). The console script and
`python -m retrieval` run `app`."""

from __future__ import annotations

import logging
import sys
from typing import Annotated

import typer

from ..config import PROGRESS_LOGGER
from .caption import caption
from .check import check
from .duplicates import duplicates
from .eval import eval_command
from .index import index
from .info import info
from .keys import audit, keys_app
from .query import query
from .serve import serve

app = typer.Typer(
    help="Cross-modal image/text search: index a folder of images with CLIP, then search it "
    "by text or by image.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log details to stderr")] = False,
) -> None:
    """Configure logging once for every command."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # The library's progress lines (a first-use export's wait), shown as plain lines.
    progress = logging.getLogger(PROGRESS_LOGGER)
    if not any(isinstance(handler, _StderrHandler) for handler in progress.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        progress.addHandler(handler)
        progress.setLevel(logging.INFO)
        progress.propagate = False


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time (a test runner swaps it per command)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


for command in (index, query, info, serve):
    app.command()(command)
app.command("eval")(eval_command)
app.command()(check)
app.command()(duplicates)
app.command()(caption)
app.command()(audit)
app.add_typer(keys_app, name="keys")
