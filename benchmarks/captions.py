"""Captions per second on a CPU: the real coca_ViT-B-32 architecture with random weights.

Random weights almost never emit the end token, so every caption runs the full MAX_TOKENS
decoding steps: a worst case (trained weights stop after ~10-15 tokens of a COCO caption).
Baseline, in the same run and process: the same model embedding the same batches
(`encode_image`, what `mmsearch index` does per image), so the ratio says what captions cost on
top of indexing.

    python -m benchmarks.captions                 # 16 sample JPEGs, batch 8
    python -m benchmarks.captions --limit 32 --arch coca_ViT-L-14
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from benchmarks.embed import DEFAULT_IMAGES, environment, model_dir_for


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES)
    parser.add_argument("--limit", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--arch", default="coca_ViT-B-32")
    args = parser.parse_args()

    import torch

    from retrieval.embedders import captions as captions_module
    from retrieval.embedders.captions import CocaCaptioner
    from retrieval.images import load_image
    from retrieval.types import ModelSpec

    folder = model_dir_for(args.arch)
    captioner = CocaCaptioner.load(
        ModelSpec(f"local-dir:{folder}", None), device="cpu", batch_size=args.batch_size
    )
    paths = sorted(args.images.glob("*.JPEG"))[: args.limit]
    batches = [
        torch.stack([captioner.preprocess(load_image(p)) for p in paths[i : i + args.batch_size]])
        for i in range(0, len(paths), args.batch_size)
    ]
    with torch.inference_mode():
        captioner.model.encode_image(batches[0][:2])  # warm up
        started = time.perf_counter()
        for batch in batches:
            captioner.model.encode_image(batch)
        embed_s = time.perf_counter() - started
    started = time.perf_counter()
    texts = [text for batch in batches for text in captioner.caption_pixels(batch)]
    caption_s = time.perf_counter() - started
    decoder = "open_clip generate (beam search)" if captions_module.use_generate() else "greedy"
    n = len(paths)
    limit = captions_module.MAX_TOKENS
    print(f"{args.arch}, random weights, {n} sample JPEGs (preprocessed beforehand), batch "
          f"{args.batch_size}, {decoder} decoding, {limit} tokens max")  # fmt: skip
    print("| step | s | images/s | s per image | ratio |")
    print("|---|---:|---:|---:|---:|")
    print(
        f"| embed (encode_image) | {embed_s:.2f} | {n / embed_s:.2f} | {embed_s / n:.3f} | 1.00x |"
    )
    print(f"| caption | {caption_s:.2f} | {n / caption_s:.3f} | {caption_s / n:.2f} | "
          f"{caption_s / embed_s:.1f}x slower |")  # fmt: skip
    print(f"first caption: {texts[0][:80]!r}")
    print(environment("cpu"))
    print(f"python -m benchmarks.captions --arch {args.arch} --limit {args.limit} "
          f"--batch-size {args.batch_size}")  # fmt: skip


if __name__ == "__main__":
    main()
