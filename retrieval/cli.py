"""The `mmsearch` command line: the composition root. It resolves options into configs, builds
the store, embedder and service, wraps progress in tqdm, and turns MmsearchError into a one-line
message and an exit code (never a traceback)."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from .catalog import IMAGES, TEXTS
from .config import DEFAULT_MODEL, EmbedConfig, default_index_dir
from .errors import (
    IndexBusyError,
    IndexMismatchError,
    InputFileError,
    InvalidQueryError,
    MmsearchError,
    ModelUnavailableError,
)
from .options import DeviceOption, IndexOption, PrecisionOption
from .service import DEFAULT_TEXT_WEIGHT, PRODUCTS, TARGETS
from .types import Hit, ModelSpec

app = typer.Typer(
    help="Cross-modal image/text search: index a folder of images with CLIP, then search it "
    "by text or by image.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
logger = logging.getLogger("retrieval")

# Exit codes: 2 is what typer uses for usage errors, so input problems share it.
EXIT_CODES: dict[type[MmsearchError], int] = {
    InvalidQueryError: 2,
    InputFileError: 2,
    ModelUnavailableError: 2,
    IndexMismatchError: 2,
    IndexBusyError: 75,  # EX_TEMPFAIL: try again later
}
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
        raise typer.Exit(130) from None


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


def _spec(model: str | None, pretrained: str | None) -> ModelSpec | None:
    """The model asked for on the command line, or None to use the index's own."""
    if model is None and pretrained is None:
        return None
    name = model or DEFAULT_MODEL.name
    if model is None or model == DEFAULT_MODEL.name:
        pretrained = pretrained if pretrained is not None else DEFAULT_MODEL.pretrained
    from .embedders.open_clip import normalise_spec

    return normalise_spec(ModelSpec(name, pretrained or None))


@contextmanager
def _progress(quiet: bool) -> Iterator[Callable[[str, int, int], None]]:
    from tqdm import tqdm

    bars: dict[str, Any] = {}
    labels = {"scan": "scanning", "embed": "embedding", "texts": "texts"}
    units = {"scan": "file", "embed": "img", "texts": "text"}

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


@app.command()
def index(
    paths: Annotated[
        list[Path] | None,
        typer.Argument(
            help="Image files or folders to index (searched recursively)", show_default=False
        ),
    ] = None,
    catalog: Annotated[
        Path | None,
        typer.Option(
            help="Product catalog (.csv or .jsonl): id, title, image (several joined by |), "
            "any other columns kept as filterable metadata",
        ),
    ] = None,
    index_dir: IndexOption = None,
    texts: Annotated[
        Path | None,
        typer.Option(
            help="Texts to index for image->text search: CSV (caption/text column), "
            "JSONL (text field) or one text per line"
        ),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            help="open_clip model: a name (ViT-B-32), hf-hub:ORG/REPO or local-dir:PATH "
            f"(default: {DEFAULT_MODEL.name}, or the index's own model)",
            show_default=False,
        ),
    ] = None,
    pretrained: Annotated[
        str | None,
        typer.Option(
            help=f"Pretrained tag or checkpoint file (default: {DEFAULT_MODEL.pretrained})",
            show_default=False,
        ),
    ] = None,
    index_type: Annotated[
        str, typer.Option(help="auto, flat, ivf, hnsw, ivfpq, or a faiss factory string")
    ] = "auto",
    device: DeviceOption = "auto",
    precision: PrecisionOption = "auto",
    batch_size: Annotated[
        int | None,
        typer.Option(min=1, help="Images per forward pass (default: 8 on CPU, 256 on CUDA)"),
    ] = None,
    workers: Annotated[
        int | None, typer.Option(min=0, help="Decoding processes (default: by CPU count)")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the run's report as JSON")] = False,
) -> None:
    """Index images (and optionally texts). Re-running embeds only new or changed files and drops
    deleted ones; an interrupted run leaves the previous index usable."""
    from .app import open_for_indexing
    from .ingest import index_images
    from .products import index_catalog, load_catalog
    from .texts import load_texts

    config = EmbedConfig(
        model=DEFAULT_MODEL,
        device=device,
        precision=precision,
        batch_size=batch_size,
        num_workers=workers,
    )

    def body() -> None:
        roots = paths or []
        if not roots and catalog is None and texts is None:
            raise InvalidQueryError("give image folders or files to index, or --catalog FILE")
        text_list = load_texts(texts) if texts is not None else None
        products = load_catalog(catalog) if catalog is not None else None
        for path in roots:
            if not path.exists():
                raise InputFileError(f"{path} does not exist")
        directory = index_dir or default_index_dir()
        store, factory = open_for_indexing(directory, _spec(model, pretrained), config)
        types = {IMAGES: index_type, TEXTS: index_type} if index_type != "auto" else None
        reports = []
        try:
            with store.writer_lock(), _progress(quiet) as on_progress:
                if roots or text_list is not None:
                    reports.append(
                        (
                            "files",
                            index_images(
                                store,
                                roots,
                                factory,
                                texts=text_list,
                                index_types=types,
                                on_progress=on_progress,
                            ),
                        )
                    )
                if products is not None:
                    reports.append(
                        (
                            "catalog",
                            index_catalog(
                                store,
                                products,
                                factory,
                                index_types=types,
                                on_progress=on_progress,
                            ),
                        )
                    )
        finally:
            store.close()
        for _, report in reports:
            for skip in report.skipped:
                detail = f" ({skip.detail})" if skip.detail else ""
                typer.echo(f"skipped {skip.path}: {skip.reason}{detail}", err=True)
        for kind, report in reports:
            if as_json:
                typer.echo(json.dumps({"kind": kind, **_report_dict(report, directory)}))
            else:
                typer.echo(_summary(report, directory, kind))

    run_guarded(body)


def _summary(report: Any, directory: Path, kind: str = "files") -> str:
    reasons = ", ".join(f"{reason}: {n}" for reason, n in report.skipped_by_reason().items())
    skipped = f"skipped {len(report.skipped)}" + (f" ({reasons})" if reasons else "")
    texts = ""
    if report.texts_indexed or report.texts_removed:
        texts = f", texts +{report.texts_indexed}/-{report.texts_removed}"
    what = "products " if kind == "catalog" else ""
    return (
        f"{what}indexed {report.indexed} (embedded {report.embedded}, reused {report.reused}), "
        f"unchanged {report.unchanged}, removed {report.removed}, {skipped}{texts}, "
        f"{report.elapsed_s:.1f}s, {report.images_per_s:.1f} img/s -> {directory}"
    )


def _report_dict(report: Any, directory: Path) -> dict[str, Any]:
    return {
        "index": str(directory),
        "indexed": report.indexed,
        "embedded": report.embedded,
        "reused": report.reused,
        "unchanged": report.unchanged,
        "removed": report.removed,
        "skipped": [
            {"path": s.path, "reason": s.reason, "detail": s.detail} for s in report.skipped
        ],
        "texts_indexed": report.texts_indexed,
        "texts_removed": report.texts_removed,
        "elapsed_s": round(report.elapsed_s, 3),
        "images_per_s": round(report.images_per_s, 2),
    }


@app.command()
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
    as_json: Annotated[
        bool, typer.Option("--json", help="Print JSON on stdout, nothing else")
    ] = False,
    index_dir: IndexOption = None,
    device: DeviceOption = "auto",
    precision: PrecisionOption = "auto",
) -> None:
    """Search by TEXT (text->image by default) or by --image (image->image); --target texts
    gives text->text or image->text, --target products searches a product catalog."""
    from .app import open_for_search
    from .service import SearchRequest, check_k

    def body() -> None:
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
        check_k(k, offset)
        parsed = _parse_filters(filters or [])
        directory = index_dir or default_index_dir()
        service = open_for_search(directory, EmbedConfig(device=device, precision=precision))
        try:
            request = SearchRequest(
                text=text,
                image=image,
                target=target,
                k=k,
                offset=offset,
                filters=parsed,
                text_weight=text_weight,
            )
            resolved = target or (PRODUCTS if service.has_catalog else IMAGES)
            hits = service.search(request)
        finally:
            service.close()
        query_info: dict[str, Any] = {"target": resolved, "k": k, "offset": offset}
        query_info.update({"text": text} if text is not None else {"image": str(image.absolute())})
        if parsed:
            query_info["filters"] = parsed
        if as_json:
            typer.echo(json.dumps({"query": query_info, "results": [hit_dict(h) for h in hits]}))
        else:
            typer.echo(_table(hits, resolved))

    run_guarded(body)


def _parse_filters(raw: list[str]) -> dict[str, str]:
    parsed = {}
    for item in raw:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise InvalidQueryError(f"--filter takes COLUMN=VALUE, got {item!r}")
        parsed[name.strip()] = value.strip()
    return parsed


def hit_dict(hit: Hit) -> dict[str, Any]:
    """The JSON shape of one hit, shared by `query --json` and the HTTP API."""
    return hit.to_dict()


def _table(hits: list[Hit], target: str) -> str:
    if not hits:
        return f"no results: the {target} index is empty"
    column = {IMAGES: "path", TEXTS: "text", PRODUCTS: "product"}[target]
    lines = [f"{'rank':>4}  {'score':>7}  {column}"]
    for hit in hits:
        shown = hit.path if hit.path is not None else hit.text
        if target == PRODUCTS:
            shown = f"{hit.metadata.get('product_id')}  {hit.metadata.get('title')}  {shown or ''}"
        lines.append(f"{hit.rank:>4}  {hit.score:>7.4f}  {shown}")
    return "\n".join(lines)


@app.command()
def info(
    index_dir: IndexOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
) -> None:
    """Show an index's model, counts, index types, size on disk and times."""
    from .store import IndexStore

    def body() -> None:
        directory = index_dir or default_index_dir()
        store = IndexStore.open(directory, readonly=True)
        try:
            details = store.info()
        finally:
            store.close()
        if as_json:
            typer.echo(json.dumps(details))
            return
        typer.echo(_info_text(details))

    run_guarded(body)


def _info_text(details: dict[str, Any]) -> str:
    import datetime as dt

    def when(stamp: float | None) -> str:
        if stamp is None:
            return "never"
        return dt.datetime.fromtimestamp(stamp).isoformat(sep=" ", timespec="seconds")

    model = details["model"]
    lines = [
        f"index:     {details['directory']}",
        f"model:     {model['name']}"
        + (f" (pretrained={model['pretrained']})" if model["pretrained"] else ""),
        f"dim:       {model['dim']}",
    ]
    for name, stats in details["collections"].items():
        faiss = stats["faiss"] or "empty"
        lines.append(f"{name + ':':<10} {stats['count']} ({faiss}; type {stats['index_type']})")
    if details["products"]:
        lines.append(f"products:  {details['products']}")
    lines += [
        f"size:      {details['size_bytes'] / 1e6:.1f} MB",
        f"created:   {when(details['created'])}",
        f"updated:   {when(details['updated'])}",
    ]
    return "\n".join(lines)


from .serve import serve as _serve  # noqa: E402 (registered last: serve.py imports this module)

app.command("serve")(_serve)
app.command("eval")(__import__("retrieval.eval_command").eval_command.eval_command)  # EVAL-REGISTER
