"""`mmsearch query`: one search by text or image, printed as a table or as the service's JSON."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ..config import DEFAULT_INDEX_DIR
from ..errors import InputFileError, InvalidQueryError
from ..search.hybrid import MODES
from ..search.merch import filters_from_pairs, parse_boosts, parse_facets, parse_sort
from ..search.queries import DEFAULT_DUPLICATE_THRESHOLD, QueryPart, parse_weight
from ..search.requests import DEFAULT_TEXT_WEIGHT, SearchRequest, check_k
from ..types import PRODUCTS, TARGETS
from .common import BackendOption, DeviceOption, IndexOption, PrecisionOption, run_guarded
from .environment import read_settings
from .render import result_table


def parse_filters(raw: list[str]) -> dict[str, Any]:
    """`--filter COLUMN=VALUE` options as a filters mapping: a repeated column is any of its
    values, `COLUMN!=VALUE` none of them (merch.filters_from_pairs)."""
    pairs = []
    for item in raw:
        name, sep, value = item.partition("=")
        if not sep or not name.strip() or name.strip() == "!":
            raise InvalidQueryError(f"--filter takes COLUMN=VALUE or COLUMN!=VALUE, got {item!r}")
        pairs.append((name, value))
    return filters_from_pairs(pairs)


def composed_parts(
    text: str | None,
    image: Path | None,
    minus: list[str],
    minus_image: list[str],
    items: list[str],
    minus_items: list[str],
) -> tuple[QueryPart, ...]:
    """The command line's query parts, each with its `@W` weight (negated for --minus*)."""
    parts: list[QueryPart] = []
    for raw, sign in [(text, 1.0)] * (text is not None) + [(m, -1.0) for m in minus]:
        body, weight = parse_weight(raw or "", sign=sign)
        parts.append(QueryPart(text=body, weight=weight))
    raw_images = [(str(image), 1.0)] * (image is not None) + [(m, -1.0) for m in minus_image]
    for raw, sign in raw_images:
        body, weight = parse_weight(raw, sign=sign)
        path = Path(body)
        if not path.is_file():
            raise InputFileError(f"query image {path} does not exist")
        parts.append(QueryPart(image=path, weight=weight))
    for raw, sign in [(i, 1.0) for i in items] + [(i, -1.0) for i in minus_items]:
        body, weight = parse_weight(raw, sign=sign)
        try:
            parts.append(QueryPart(item=int(body), weight=weight))
        except ValueError:
            raise InvalidQueryError(f"--item takes an item id (ID or ID@W), got {raw!r}") from None
    return tuple(parts)


PartsOption = Annotated[
    list[str] | None,
    typer.Option(show_default=False, help="Subtract this text (TEXT or TEXT@W; repeatable)"),
]


def query(
    text: Annotated[
        str | None,
        typer.Argument(help="Text to search for (TEXT@W gives it weight W)", show_default=False),
    ] = None,
    image: Annotated[
        str | None,
        typer.Option(
            help="Search by this image (PATH or PATH@W), alone or with TEXT", show_default=False
        ),
    ] = None,
    minus: PartsOption = None,
    minus_image: Annotated[
        list[str] | None,
        typer.Option(show_default=False, help="Subtract this image (PATH or PATH@W; repeatable)"),
    ] = None,
    item: Annotated[
        list[str] | None,
        typer.Option(show_default=False, help="Add an indexed item's stored vector (ID or ID@W)"),
    ] = None,
    minus_item: Annotated[
        list[str] | None,
        typer.Option(show_default=False, help="Subtract an indexed item's vector (ID or ID@W)"),
    ] = None,
    like: Annotated[
        int | None,
        typer.Option(
            help="More like this item id: its stored vector, no model run; the item itself is "
            "left out of the results",
            show_default=False,
        ),
    ] = None,
    min_score: Annotated[
        float | None,
        typer.Option(help="Drop hits with a cosine score below this", show_default=False),
    ] = None,
    collapse_duplicates: Annotated[
        bool,
        typer.Option(
            "--collapse-duplicates",
            help=f"Fold near-duplicates (cosine >= {DEFAULT_DUPLICATE_THRESHOLD}) of a better "
            "hit into it",
        ),
    ] = False,
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
            help="Product filter (repeatable): COLUMN=VALUE (text ignores case and accents; "
            "repeat a column for any of several values), COLUMN!=VALUE, COLUMN_exists=true|false, "
            "COLUMN_min=N / COLUMN_max=N. With no query: browse the products that pass",
            show_default=False,
        ),
    ] = None,
    sort: Annotated[
        list[str] | None,
        typer.Option(
            help="Products: sort keys, e.g. price:asc or price:desc,title:asc", show_default=False
        ),
    ] = None,
    facets: Annotated[
        list[str] | None,
        typer.Option(
            "--facets",
            help="Products: facet counts, e.g. category,brand,price or price:0-50,50-100,100-",
            show_default=False,
        ),
    ] = None,
    boost: Annotated[
        list[str] | None,
        typer.Option(
            help="Products: in_stock:1.2 (multiply when true), popularity:log[:SCALE] (add "
            "SCALE * log1p(value), 0.01 by default) (repeatable)",
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
    gives text->text or image->text, --target products searches a product catalog. Parts
    combine: TEXT, --image, --item add (weight 1, or @W), --minus* subtract; --like ID finds
    items like an indexed one."""

    def body() -> None:
        from ..compose import open_for_search

        parts = composed_parts(
            text, Path(image) if image is not None else None, minus or [],
            minus_image or [], item or [], minus_item or [],
        )  # fmt: skip
        browse = not parts and like is None
        if browse and not (filters or sort or facets or target == PRODUCTS):
            raise InvalidQueryError(
                "give either a query TEXT, --image PATH, --item ID or --like ID (or, for "
                "products, --filter/--sort to browse)"
            )
        if text is not None and not text.strip():
            raise InvalidQueryError("the query text is empty; pass some words to search for")
        if target not in (None, *TARGETS):
            raise InvalidQueryError(f"--target must be one of {', '.join(TARGETS)}, not {target!r}")
        if mode not in (None, *MODES):
            raise InvalidQueryError(f"--mode must be one of {', '.join(MODES)}, not {mode!r}")
        check_k(k, offset)
        # One unweighted text or image keeps the plain query (and its echo); anything else
        # is a composed query.
        single = len(parts) == 1 and like is None and parts[0].item is None
        plain = (
            browse or single and parts[0].weight == 1.0 and (text is None or parts[0].text == text)
        )
        request = SearchRequest(
            text=parts[0].text if plain and parts else None,
            image=parts[0].image if plain and parts else None,
            parts=() if plain else parts,
            like=like,
            min_score=min_score,
            collapse=collapse_duplicates,
            target=target,
            k=k,
            offset=offset,
            filters=parse_filters(filters or []),
            text_weight=text_weight,
            mode=mode,
            facets=parse_facets(facets or []),
            sort=parse_sort(sort or []),
            boosts=parse_boosts(boost or []),
        )
        config = read_settings().embed_config(device=device, precision=precision, backend=backend)
        with open_for_search(index_dir or DEFAULT_INDEX_DIR, config) as service:
            result = service.search(request)
        typer.echo(result.to_json() if as_json else result_table(result))
        if result.has_more and not as_json:  # a hint, so on stderr: stdout stays the table
            typer.echo(f"more results: --offset {offset + k}", err=True)

    run_guarded(body)
