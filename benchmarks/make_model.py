"""Write an open_clip model with random (seeded) weights as a `local-dir:` folder.

For offline machines, tests and throughput benchmarks: speed does not depend on weight values,
so a random ViT-B-32 measures the real architecture. Search results from it are meaningless.

    python -m benchmarks.make_model /tmp/vit-b-32 --arch ViT-B-32
    mmsearch index ./images --model local-dir:/tmp/vit-b-32
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def write_random_model(folder: Path, config: str | dict[str, Any], *, seed: int = 0) -> Path:
    """Write open_clip_config.json + seeded random safetensors weights for a built-in
    architecture name or an explicit {"model_cfg": ..., "preprocess_cfg": ...} dict."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    if isinstance(config, str):
        model_cfg = open_clip.get_model_config(config)
        if model_cfg is None:
            raise SystemExit(f"unknown architecture {config!r}; see open_clip.list_models()")
        config = {"model_cfg": model_cfg, "preprocess_cfg": {}}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "open_clip_config.json").write_text(json.dumps(config, indent=2))
    torch.manual_seed(seed)
    model, _, _ = open_clip.create_model_and_transforms(
        "local-dir:" + str(folder), load_weights=False
    )
    if isinstance(model, open_clip.CoCa):
        _init_text_decoder_projection(model)
    state = {name: tensor.contiguous() for name, tensor in model.state_dict().items()}
    save_file(state, str(folder / "open_clip_model.safetensors"))
    return folder


def _init_text_decoder_projection(model: Any) -> None:
    """CoCa's decoder projection to the vocabulary is left at zero when built without weights
    (open_clip fills it from the checkpoint), so every token would tie and a random model
    would caption everything as the same padding; give it the scale open_clip uses for
    the text projection (width ** -0.5)."""
    import torch

    projection = model.text_decoder.text_projection
    with torch.no_grad():
        projection.normal_(std=projection.shape[0] ** -0.5)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("folder", type=Path)
    parser.add_argument("--arch", default="ViT-B-32", help="open_clip architecture name")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    write_random_model(args.folder, args.arch, seed=args.seed)
    print(f"wrote random-weight {args.arch} to {args.folder}; use --model local-dir:{args.folder}")


if __name__ == "__main__":
    main()
