"""Typer option types shared by every command (index, query, info, serve): one definition of
each flag's name, help and environment variable."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .config import INDEX_DIR_ENV

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
