"""`mmsearch eval PAIRS`: retrieval quality, index cost, latency and robustness on the user's own
image,caption pairs. Registered by the CLI with `app.command("eval")(eval_command)`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from ..config import DEFAULT_INDEX_DIR, DEFAULT_MODEL
from ..types import ModelSpec
from .common import (
    BackendOption,
    DeviceOption,
    IndexOption,
    PrecisionOption,
    model_spec,
    progress,
    run_guarded,
)
from .environment import read_settings


def eval_command(
    pairs_file: Annotated[
        Path,
        typer.Argument(
            metavar="PAIRS",
            help="CSV (image,caption columns) or JSONL ({image, caption|captions}); image paths "
            "relative to the file or absolute; several rows may share an image",
        ),
    ],
    index_dir: IndexOption = None,
    ks: Annotated[str, typer.Option("-k", help="Recall@K cut-offs, comma separated")] = "1,5,10",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object")] = False,
    report: Annotated[
        Path | None,
        typer.Option(help="Write a self-contained HTML report here", show_default=False),
    ] = None,
    robustness: Annotated[
        bool, typer.Option("--robustness", help="Image->image Recall@1 under 6 perturbations")
    ] = False,
    robustness_images: Annotated[
        int, typer.Option(min=0, help="Images perturbed for --robustness (0: all)")
    ] = 0,
    index_type: Annotated[
        str | None,
        typer.Option(
            help="Approximate index to measure (default: the index's own type, else auto)",
            show_default=False,
        ),
    ] = None,
    latency_queries: Annotated[int, typer.Option(min=1, help="Queries timed per kind")] = 100,
    model: Annotated[
        str | None,
        typer.Option(
            help="Model when there is no index yet (default: the index's own model)",
            show_default=False,
        ),
    ] = None,
    pretrained: Annotated[str | None, typer.Option(show_default=False)] = None,
    device: DeviceOption = "auto",
    precision: PrecisionOption = "auto",
    backend: BackendOption = "auto",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar")] = False,
) -> None:
    """Measure search quality on PAIRS: text->image and image->text Recall@K and ranks (exact),
    the same through the approximate index, query latency, and optionally robustness. Images
    not in the index are embedded in memory; the index is only read, never written."""

    def body() -> None:
        from ..compose import load_embedder
        from ..eval.pairs import load_pairs, parse_ks
        from ..eval.runner import EvalConfig, collect_vectors, evaluate
        from ..storage.store import IndexStore

        config = EvalConfig(
            ks=tuple(parse_ks(ks)),
            index_type=index_type,
            latency_queries=latency_queries,
            robustness=robustness,
            robustness_images=robustness_images,
        )
        pairs = load_pairs(pairs_file)
        if report is not None:
            from ..eval.report import check_report_dependencies

            check_report_dependencies()
        directory = index_dir or DEFAULT_INDEX_DIR
        store = IndexStore.open(directory, readonly=True) if IndexStore.exists(directory) else None
        embed = read_settings().embed_config(device=device, precision=precision, backend=backend)
        spec = _evalmodel_spec(store, model_spec(model, pretrained), embed.hash_cache)
        loaded: list[Any] = []

        def embedder() -> Any:
            if not loaded:
                expected = store.identity if store is not None else None
                loaded.append(load_embedder(spec, embed, expected=expected))
            return loaded[0]

        try:
            with progress(quiet) as on_progress:
                vectors = collect_vectors(pairs, embedder, store, on_progress)
                result = evaluate(vectors, embedder, config, store=store, on_progress=on_progress)
        finally:
            if store is not None:
                store.close()
        result["pairs_file"] = str(pairs_file.absolute())
        result["index_dir"] = str(directory.absolute()) if store is not None else None
        for skip in vectors.skipped:
            typer.echo(f"skipped {skip.path}: {skip.reason}", err=True)
        if report is not None:
            from ..eval.report import write_report

            write_report(result, report)
        if as_json:
            typer.echo(json.dumps(result))
        else:
            from ..eval.report import text_table

            typer.echo(text_table(result))
            if report is not None:
                typer.echo(f"report: {report}")

    run_guarded(body)


def _evalmodel_spec(store: Any, asked: ModelSpec | None, hash_cache: Path | None) -> ModelSpec:
    """The index's own model; --model only when there is no index (or it names the same)."""
    if store is None:
        return asked or DEFAULT_MODEL
    identity = store.identity
    if asked is not None:
        from ..embedders.spec import spec_matches
        from ..errors import IndexMismatchError

        if not spec_matches(asked, identity, hash_cache):
            raise IndexMismatchError(
                f"index {store.directory} was built with {identity.describe()}, not "
                f"{asked.name}; drop --model to evaluate with the index's own model, or pass "
                "--index DIR of an index built with that model"
            )
    return ModelSpec(identity.name, identity.pretrained)
