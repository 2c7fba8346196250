"""bf16 on the CPU: why `--precision bf16` was slow, and how far bf16 vectors are from fp32.

Times one ViT-B-32 batch four ways in the same run (autocast inside inference_mode, as mmsearch
did; autocast under no_grad; weights cast to bf16 once; OpenVINO's bf16 hint), then embeds the
sample images in fp32 and bf16 and reports min/mean cosine of each bf16 path against fp32.

    python -m benchmarks.bf16 --limit 1000
"""

from __future__ import annotations

import argparse
import copy
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.embed import DEFAULT_IMAGES, model_dir_for
from benchmarks.runtime_engines import timed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES)
    parser.add_argument("--limit", type=int, default=1000)
    parser.add_argument("--arch", default="ViT-B-32")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    import open_clip
    import torch

    from retrieval.embedders.open_clip import OpenClipEmbedder
    from retrieval.images import load_image
    from retrieval.types import ModelSpec

    torch.set_num_threads(args.threads)
    spec = ModelSpec(f"local-dir:{model_dir_for(args.arch)}", None)
    cache = Path(tempfile.mkdtemp(prefix="mmsearch-bf16-"))
    fp32 = OpenClipEmbedder.load(spec, device="cpu", backend="torch", threads=args.threads)
    model = fp32.model
    cast = copy.deepcopy(model).to(torch.bfloat16)
    size = fp32.identity.preprocess["image_size"]
    pixels = torch.randn(args.batch_size, 3, size, size)

    def autocast_inference_mode():
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            model.encode_image(pixels)

    def autocast_no_grad():
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            model.encode_image(pixels)

    def cast_once():
        with torch.inference_mode():
            cast.encode_image(pixels.to(torch.bfloat16))

    def fp32_eager():
        with torch.inference_mode():
            model.encode_image(pixels)

    ov = OpenClipEmbedder.load(
        spec,
        device="cpu",
        backend="openvino",
        precision="bf16",
        threads=args.threads,
        cache_dir=cache,
    )
    ov32 = OpenClipEmbedder.load(
        spec, device="cpu", backend="openvino", threads=args.threads, cache_dir=cache
    )
    rows = [
        ("torch fp32 eager", fp32_eager),
        ("torch autocast bf16 in inference_mode (old mmsearch)", autocast_inference_mode),
        ("torch autocast bf16 under no_grad", autocast_no_grad),
        ("torch weights cast to bf16 once (new torch path)", cast_once),
        ("openvino fp32", lambda: ov32.encode_images(pixels)),
        ("openvino bf16 hint (new default for --precision bf16)", lambda: ov.encode_images(pixels)),
    ]
    print(f"{args.arch} random weights, batch {args.batch_size}, {args.threads} threads")
    print("| variant | images/s | vs fp32 eager |\n|---|---|---|")
    base = None
    for name, function in rows:
        seconds = timed(function, args.repeat)
        base = base or seconds
        print(f"| {name} | {args.batch_size / seconds:.1f} | {base / seconds:.2f}x |")

    paths = sorted(p for p in args.images.iterdir() if p.suffix.lower() in {".jpg", ".jpeg"})
    paths = paths[: args.limit]
    torch_bf16 = OpenClipEmbedder.load(spec, device="cpu", backend="torch", precision="bf16")
    outputs: dict[str, list[np.ndarray]] = {"fp32": [], "torch bf16": [], "openvino bf16": []}
    for start in range(0, len(paths), args.batch_size):
        batch = torch.stack([fp32.preprocess(load_image(p)) for p in paths[start : start + 8]])
        outputs["fp32"].append(fp32.encode_images(batch))
        outputs["torch bf16"].append(torch_bf16.encode_images(batch))
        outputs["openvino bf16"].append(ov.encode_images(batch))
    want = np.concatenate(outputs.pop("fp32"))
    print(f"\nagreement with torch fp32 over {len(paths)} images from {args.images}")
    print("| path | min cosine | mean cosine |\n|---|---|---|")
    for name, chunks in outputs.items():
        cosine = (np.concatenate(chunks) * want).sum(axis=1)
        print(f"| {name} | {cosine.min():.6f} | {cosine.mean():.6f} |")
    del open_clip


if __name__ == "__main__":
    main()
