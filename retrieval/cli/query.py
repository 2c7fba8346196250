"""`mmsearch query`: one search by text or image, printed as a table or as the service's JSON."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..config import EmbedConfig, default_index_dir
from ..errors import InputFileError, InvalidQueryError
from ..hybrid import MODES
from ..service import DEFAULT_TEXT_WEIGHT, SearchRequest, check_k
from ..types import TARGETS
from .common import BackendOption, DeviceOption, IndexOption, PrecisionOption, run_guarded
from .render import result_table


def parse_filters(raw: list[str]) -> dict[str, str]:
    """`--filter COLUMN=VALUE` options as a filters mapping."""
    parsed = {}
    for item in raw:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise InvalidQueryError(f"--filter takes COLUMN=VALUE, got {item!r}")
        parsed[name.strip()] = value.strip()
    return parsed


def query(
    text: Annotated[
        str | None, typer.Argument(help="Text to search for", show_default=False)
    ] = None,
    image: Annotated[
        Path | None, typer.Option(help="Search by this image instead of text", show_default=False)
    ] = None,
    target: Annotated[
        str | None,
        typer.Option(
            help="images, texts or products (default: products when the index has a catalog, "
            "else images)",
            show_default=False,
        ),
    ] = None,
    k: Annotated[
        int, typer.Option("-k", "--top-k", help="Results to return", envvar="MMSEARCH_TOP_K")
    ] = 10,
    offset: Annotated[int, typer.Option(help="Skip this many results (paging)")] = 0,
    filters: Annotated[
        list[str] | None,
        typer.Option(
            "--filter",
            help="Product filter COLUMN=VALUE, or COLUMN_min=N / COLUMN_max=N (repeatable)",
            show_default=False,
        ),
    ] = None,
    text_weight: Annotated[
        float,
        typer.Option(min=0.0, max=1.0, help="Products: weight of the title match vs the image"),
    ] = DEFAULT_TEXT_WEIGHT,
    mode: Annotated[
        str | None,
        typer.Option(
            help="semantic (CLIP), keyword (BM25 over names, titles, texts, captions) or hybrid "
            "(both, fused by reciprocal rank) (default: hybrid with a catalog, else semantic)",
            envvar="MMSEARCH_MODE",
            show_default=False,
        ),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print JSON on stdout, nothing else")
    ] = False,
    index_dir: IndexOption = None,
    device: DeviceOption = "auto",
    precision: PrecisionOption = "auto",
    backend: BackendOption = "auto",
) -> None:
    """Search by TEXT (text->image by default) or by --image (image->image); --target texts
    gives text->text or image->text, --target products searches a product catalog."""

    def body() -> None:
        from ..compose import open_for_search

        if (text is None) == (image is None):
            raise InvalidQueryError(
                "give either a query TEXT or --image PATH (not both, not neither)"
            )
        if text is not None and not text.strip():
            raise InvalidQueryError("the query text is empty; pass some words to search for")
        if image is not None and not image.is_file():
            raise InputFileError(f"query image {image} does not exist")
        if target not in (None, *TARGETS):
            raise InvalidQueryError(f"--target must be one of {', '.join(TARGETS)}, not {target!r}")
        if mode not in (None, *MODES):
            raise InvalidQueryError(f"--mode must be one of {', '.join(MODES)}, not {mode!r}")
        check_k(k, offset)
        request = SearchRequest(
            text=text,
            image=image,
            target=target,
            k=k,
            offset=offset,
            filters=parse_filters(filters or []),
            text_weight=text_weight,
            mode=mode,
        )
        config = EmbedConfig(device=device, precision=precision, backend=backend)
        with open_for_search(index_dir or default_index_dir(), config) as service:
            result = service.search(request)
        typer.echo(result.to_json() if as_json else result_table(result))

    run_guarded(body)
