"""`mmsearch index`: sync image folders, a text list and/or a product catalog into an index."""

from __future__ import annotations

import getpass
import json
from pathlib import Path
from typing import Annotated

import typer

from ..config import DEFAULT_INDEX_DIR, DEFAULT_MODEL
from ..errors import InputFileError, InvalidQueryError
from ..types import IMAGES, TEXTS
from .common import (
    BackendOption,
    CaptionModelOption,
    CaptionPretrainedOption,
    DeviceOption,
    FetchAllowOption,
    IndexOption,
    PrecisionOption,
    caption_spec,
    model_spec,
    progress,
    run_guarded,
)
from .environment import DECODE_ENV, read_settings
from .render import caption_summary, catalog_summary, report_dict, report_summary


def _user() -> str:
    """Who runs the CLI, for the audit log."""
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no login name and no passwd entry (some containers)
        return "unknown"


def load_schema(path: Path) -> dict[str, str]:
    """A --schema file: a JSON object {column: type}."""
    from ..storage.schema import CellError, check_schema

    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise InputFileError(f"cannot read --schema {path}: {err}") from err
    if not isinstance(raw, dict):
        raise InputFileError(f"--schema {path} must hold a JSON object {{column: type}}")
    try:
        return check_schema(raw, str(path))
    except CellError as err:
        raise InputFileError(str(err)) from err


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
    sync: Annotated[
        bool,
        typer.Option(
            "--sync",
            help="With --catalog: delete products whose SKU is not in FILE (default: upsert, "
            "products absent from FILE stay)",
        ),
    ] = False,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="With --catalog: print which products would be created, replaced and "
            "deleted, and which rows are bad, without writing anything",
        ),
    ] = False,
    strict: Annotated[
        bool,
        typer.Option(
            "--strict",
            help="With --catalog: fail (writing nothing) when any row is bad, instead of "
            "reporting and skipping it",
        ),
    ] = False,
    schema: Annotated[
        Path | None,
        typer.Option(
            help="With --catalog: JSON file {column: type} overriding inferred column types "
            "(number, boolean, keyword, text, list)",
        ),
    ] = None,
    fetch_allow: FetchAllowOption = None,
    refetch: Annotated[
        bool,
        typer.Option(
            "--refetch",
            help="With --catalog: fetch image URLs again in full (by default a URL fetched "
            "before is only downloaded again when its server says it changed, or after a day "
            "when the server gives no ETag/Last-Modified)",
        ),
    ] = False,
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
    target_recall: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            max=1.0,
            help="Recall@10 against exact search that approximate indexes are tuned to reach "
            "(nprobe/efSearch/refine are picked for the lowest latency that reaches it) "
            "(default: the index's own, 0.95 for a new one)",
            envvar="MMSEARCH_TARGET_RECALL",
            show_default=False,
        ),
    ] = None,
    device: DeviceOption = "auto",
    precision: PrecisionOption = "auto",
    backend: BackendOption = "auto",
    batch_size: Annotated[
        int | None,
        typer.Option(min=1, help="Images per forward pass (default: 8 on CPU, 256 on CUDA)"),
    ] = None,
    workers: Annotated[
        int | None, typer.Option(min=0, help="Decoding processes (default: by CPU count)")
    ] = None,
    ray: Annotated[
        str | None,
        typer.Option(
            "--ray",
            help="Embed on a Ray cluster: its address (HOST:6379, ray://HOST:10001) or auto "
            "(RAY_ADDRESS / a local `ray start`, else a new local one). PATHS may then also be "
            "manifest files (.txt: one path or URL per line) and WebDataset shards (.tar). "
            "Needs pip install 'mmsearch[ray]'",
            envvar="MMSEARCH_RAY",
            show_default=False,
        ),
    ] = None,
    ray_actors: Annotated[
        int | None,
        typer.Option(min=1, help="Model copies on the cluster (default: one per GPU, else CPU)"),
    ] = None,
    ondisk: Annotated[
        bool | None,
        typer.Option(
            "--ondisk/--in-memory",
            help="Build the image index as a sharded IVF whose inverted lists live on disk "
            "and are memory-mapped by queries (for indexes larger than RAM; needs an IVF "
            "--index-type) (default: the index's own choice, in memory for a new one)",
            show_default=False,
        ),
    ] = None,
    decode: Annotated[
        str,
        typer.Option(
            help="auto (batched torchvision JPEG decoding on the GPU with --device cuda, Pillow "
            "workers otherwise), gpu (the torchvision path on any device), cpu (Pillow workers, "
            "large photos decoded at the scale the model needs) or full (Pillow workers, every "
            "pixel decoded)",
            envvar=DECODE_ENV,
        ),
    ] = "auto",
    captions: Annotated[
        bool,
        typer.Option(
            "--captions",
            help="Caption every image that has no caption yet with a CoCa model (slow on a "
            "CPU); captions are searchable by keyword and shown in results",
        ),
    ] = False,
    caption_model: CaptionModelOption = None,
    caption_pretrained: CaptionPretrainedOption = None,
    synonyms: Annotated[
        Path | None,
        typer.Option(
            help="Synonyms for keyword and hybrid search: one group per line, comma-separated "
            "(sofa, couch, settee); stored in the index (replacing earlier ones) and used by "
            "query and serve. May be given alone to update an existing index's synonyms",
            envvar="MMSEARCH_SYNONYMS",
        ),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the run's report as JSON")] = False,
) -> None:
    """Index images (and optionally texts). Re-running embeds only new or changed files and drops
    deleted ones; an interrupted run leaves the previous index usable."""

    def body() -> None:
        from ..compose import load_captioner, open_for_indexing
        from ..indexing import CatalogRequest, IndexRequest, run_index
        from ..ingest.fetch import FetchPolicy
        from ..ingest.products import read_catalog
        from ..ingest.texts import load_texts
        from ..storage.audit import Actor
        from ..storage.store import StoreOptions
        from ..storage.synonyms import install_synonyms, read_synonyms_file

        # Every option is checked before any file is read or the model loads.
        config = read_settings().embed_config(
            device=device,
            precision=precision,
            backend=backend,
            batch_size=batch_size,
            num_workers=workers,
            decode=decode,
        )
        roots = paths or []
        if synonyms is not None:
            read_synonyms_file(synonyms)  # checked now, stored once the run succeeds
        nothing = not roots and catalog is None and texts is None and not captions
        if nothing and synonyms is not None:
            directory = index_dir or DEFAULT_INDEX_DIR
            if not (directory / "manifest.json").is_file():
                raise InputFileError(
                    f"no index at {directory} for --synonyms; index something first or pass "
                    "--index DIR"
                )
            install_synonyms(directory, synonyms)
            typer.echo(f"synonyms of {directory} replaced by {synonyms}")
            return
        if nothing:
            raise InvalidQueryError("give image folders or files to index, or --catalog FILE")
        for path in roots:
            if not path.exists():
                raise InputFileError(f"{path} does not exist")
        if ray is not None and (catalog is not None or texts is not None or not roots):
            raise InvalidQueryError(
                "--ray indexes images only: give image folders, manifests or .tar shards, "
                "and index --texts/--catalog in a separate run without --ray"
            )
        text_list = load_texts(texts) if texts is not None else None
        if catalog is None and (sync or dry_run or strict or schema is not None):
            raise InvalidQueryError("--sync, --dry-run, --strict and --schema need --catalog FILE")
        catalog_request = None
        if catalog is not None:
            rows, errors = read_catalog(catalog)
            catalog_request = CatalogRequest(
                tuple(rows),
                tuple(errors),
                sync=sync,
                dry_run=dry_run,
                strict=strict,
                schema=load_schema(schema) if schema is not None else None,
                actor=Actor(f"cli:{_user()}"),
                fetch=FetchPolicy.from_allow(fetch_allow or ()),
                refetch=refetch,
            )
        directory = index_dir or DEFAULT_INDEX_DIR
        only_captions = captions and not roots and catalog is None and texts is None
        if only_captions and not (directory / "manifest.json").is_file():
            raise InputFileError(
                f"no index at {directory} to caption; index images first (`mmsearch index "
                "PATH --captions`) or pass --index DIR"
            )
        spec = caption_spec(caption_model, caption_pretrained) if captions else None
        ray_options = None
        if ray is not None:
            from ..distributed.ingest import RayOptions

            ray_options = RayOptions(address=ray, actors=ray_actors)
        request = IndexRequest(
            roots=tuple(roots),
            texts=tuple(text_list) if text_list is not None else None,
            catalog=catalog_request,
            ray=ray_options,
            captioner=(lambda: load_captioner(spec, config)) if spec is not None else None,
            index_types={IMAGES: index_type, TEXTS: index_type} if index_type != "auto" else None,
        )
        options = StoreOptions(target_recall=target_recall, ondisk=ondisk)
        store, factory = open_for_indexing(
            directory, model_spec(model, pretrained), config, index_type, options
        )
        with store, progress(quiet) as on_progress:
            reports = run_index(store, factory, request, config, on_progress)
        if synonyms is not None:
            install_synonyms(directory, synonyms)
        for _, report in reports:
            for skip in report.skipped:
                detail = f" ({skip.detail})" if skip.detail else ""
                typer.echo(f"skipped {skip.path}: {skip.reason}{detail}", err=True)
        for kind, report in reports:
            if kind == "catalog":
                typer.echo(catalog_summary(report, directory, as_json=as_json))
            elif kind == "captions":
                typer.echo(caption_summary(report, as_json=as_json))
            elif as_json:
                typer.echo(json.dumps({"kind": kind, **report_dict(report, directory)}))
            else:
                typer.echo(report_summary(report, directory, kind))

    run_guarded(body)
