"""`mmsearch caption`: print a generated caption for each image file (a CoCa model)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from ..errors import InputFileError
from .common import DeviceOption, caption_spec, run_guarded
from .environment import read_settings


def caption(
    images: Annotated[
        list[Path], typer.Argument(help="Image files to caption", show_default=False)
    ],
    model: Annotated[
        str | None,
        typer.Option(
            help="open_clip CoCa model: coca_ViT-B-32 (default), coca_ViT-L-14, hf-hub:ORG/REPO "
            "or local-dir:PATH",
            envvar="MMSEARCH_CAPTION_MODEL",
            show_default=False,
        ),
    ] = None,
    pretrained: Annotated[
        str | None,
        typer.Option(
            help="Pretrained tag or checkpoint file (default for coca_ViT-B-32: "
            "mscoco_finetuned_laion2b_s13b_b90k)",
            show_default=False,
        ),
    ] = None,
    device: DeviceOption = "auto",
    batch_size: Annotated[
        int | None, typer.Option(min=1, help="Images per batch (default: 8 on CPU, 64 on CUDA)")
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help='One JSON object per image: {"path", "caption"}')
    ] = False,
) -> None:
    """Caption images with an open_clip CoCa model: one `PATH<TAB>CAPTION` line per image, in
    order; files that cannot be decoded are reported on stderr (exit code 1)."""

    def body() -> None:
        from ..compose import load_captioner

        for image in images:
            if not image.is_file():
                raise InputFileError(f"{image} does not exist or is not a file")
        spec = caption_spec(model, pretrained)
        config = read_settings().embed_config(device=device, batch_size=batch_size, num_workers=0)
        captioner = load_captioner(spec, config)
        found: dict[int, str] = {}
        skipped = []

        def on_batch(positions: list[int], captions: list[str], skips: list) -> None:
            found.update(zip(positions, captions, strict=True))
            skipped.extend(skip for _, skip in skips)

        captioner.caption_files(images, on_batch)
        for position, image in enumerate(images):
            if position not in found:
                continue
            if as_json:
                typer.echo(json.dumps({"path": str(image), "caption": found[position]}))
            else:
                typer.echo(f"{image}\t{found[position]}")
        for skip in skipped:
            typer.echo(f"skipped {skip.path}: {skip.reason} ({skip.detail})", err=True)
        if skipped:
            raise typer.Exit(1)

    run_guarded(body)
