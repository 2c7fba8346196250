"""What every command shares, and nothing else: `run_guarded` with the exit-code table, and the
Typer option types (one definition of each flag's name, help and environment variable). It
imports no other CLI module but environment.py (the variables' names)."""

from __future__ import annotations

import sqlite3
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer

from ..config import DEFAULT_MODEL
from ..errors import (
    MmsearchError,
    StorageIOError,
)
from ..sqlite_errors import classify_sqlite_error
from ..types import ModelSpec
from .environment import BACKEND_ENV, DEVICE_ENV, INDEX_DIR_ENV

EXIT_PROBLEMS = 1  # `check` found problems it did not (or could not) repair
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C
T = TypeVar("T")


def run_guarded(action: Callable[[], T]) -> T:
    """Run a command body; MmsearchError becomes `error: ...` on stderr and an exit code, and so
    does an SQLite error that reached here unexplained (retrieval/sqlite_errors.py says which)."""
    try:
        return action()
    except MmsearchError as err:
        _fail(err)
    except sqlite3.DatabaseError as err:
        _fail(classify_sqlite_error(err))
    except OSError as err:
        # A folder it may not write (an --index without write permission, a path through a
        # file): said in one line, never as a traceback.
        where = f"{err.filename}: " if err.filename else ""
        _fail(StorageIOError(f"{where}{err.strerror or err}; check the path and its permissions"))
    except KeyboardInterrupt:
        typer.echo("interrupted; the previous index is unchanged and still usable", err=True)
        raise typer.Exit(EXIT_INTERRUPTED) from None


def _fail(err: MmsearchError) -> NoReturn:
    typer.echo(f"error: {err}", err=True)
    raise typer.Exit(err.exit_code) from None


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
    typer.Option(help="auto (CUDA when available), cpu, or cuda[:N]", envvar=DEVICE_ENV),
]


def _check_backend(value: str) -> str:
    from ..embedders.runtime import check_backend  # torch-free: the engine registry

    try:
        return check_backend(value)
    except MmsearchError as err:
        raise typer.BadParameter(str(err)) from None


FetchAllowOption = Annotated[
    list[str] | None,
    typer.Option(
        "--fetch-allow",
        help="HOST or CIDR whose private addresses image URLs may be fetched from "
        "(repeatable); public addresses need nothing, loopback/private/link-local ones "
        "are refused without it",
        show_default=False,
    ),
]
BackendOption = Annotated[
    str,
    typer.Option(
        help="auto (OpenVINO on a CPU when the model exports, else torch; torch on CUDA), "
        "torch, openvino or onnxruntime",
        envvar=BACKEND_ENV,
        callback=_check_backend,
    ),
]
PrecisionOption = Annotated[
    str,
    typer.Option(help="auto (fp32 on CPU, bf16/fp16 on CUDA), fp32, fp16 or bf16"),
]


def model_spec(model: str | None, pretrained: str | None) -> ModelSpec | None:
    """The model asked for on the command line, or None to use the index's own."""
    if model is None and pretrained is None:
        return None
    name = model or DEFAULT_MODEL.name
    if model is None or model == DEFAULT_MODEL.name:
        pretrained = pretrained if pretrained is not None else DEFAULT_MODEL.pretrained
    from ..embedders.spec import normalise_spec

    return normalise_spec(ModelSpec(name, pretrained or None))


CaptionModelOption = Annotated[
    str | None,
    typer.Option(
        "--caption-model",
        help="open_clip CoCa model for captions: coca_ViT-B-32 (default), coca_ViT-L-14, "
        "hf-hub:ORG/REPO or local-dir:PATH",
        envvar="MMSEARCH_CAPTION_MODEL",
        show_default=False,
    ),
]
CaptionPretrainedOption = Annotated[
    str | None,
    typer.Option(
        "--caption-pretrained",
        help="Pretrained tag or checkpoint of the caption model "
        "(default for coca_ViT-B-32: mscoco_finetuned_laion2b_s13b_b90k)",
        show_default=False,
    ),
]


def caption_spec(model: str | None, pretrained: str | None) -> ModelSpec:
    """The caption model asked for, with the default CoCa model and tag filled in."""
    from ..embedders.spec import normalise_spec
    from ..ingest.captions import DEFAULT_CAPTION_MODEL

    name = model or DEFAULT_CAPTION_MODEL.name
    if name == DEFAULT_CAPTION_MODEL.name and pretrained is None:
        pretrained = DEFAULT_CAPTION_MODEL.pretrained
    return normalise_spec(ModelSpec(name, pretrained or None))


@contextmanager
def progress(quiet: bool) -> Iterator[Callable[[str, int, int], None]]:
    """Progress callbacks for the library, drawn as tqdm bars on stderr (none with --quiet)."""
    from tqdm import tqdm

    bars: dict[str, Any] = {}
    labels = {"scan": "scanning", "embed": "embedding", "texts": "texts", "captions": "captions"}
    units = {"scan": "file", "embed": "img", "texts": "text", "captions": "img"}

    def on_progress(stage: str, advance: int, total: int) -> None:
        bar = bars.get(stage)
        if bar is None:
            bar = bars[stage] = tqdm(
                total=total,
                desc=labels.get(stage, stage),
                unit=units.get(stage, "it"),
                disable=quiet,
                file=sys.stderr,
                leave=False,
                dynamic_ncols=True,
            )
        bar.update(advance)

    try:
        yield on_progress
    finally:
        for bar in bars.values():
            bar.close()
