"""Exported-runtime engines side by side: onnxruntime vs OpenVINO (fp32, and OpenVINO bf16)
against torch eager fp32, on the same exported graphs, model-only, in one run.

    python -m benchmarks.runtime_engines                  # ViT-B-32, batch 8, 2 threads
    python -m benchmarks.runtime_engines --arch ViT-B-32 --batch-size 8 --threads 2 --repeat 20
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.embed import MODEL_CACHE, REPO


def timed(function, repeat: int) -> float:
    """Median seconds per call after one warm-up call."""
    function()
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--arch", default="ViT-B-32")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()

    import open_clip
    import torch

    from benchmarks.make_model import write_random_model
    from retrieval.embedders import export, runtime

    torch.set_num_threads(args.threads)
    folder = MODEL_CACHE / args.arch
    if not (folder / "open_clip_config.json").exists():
        write_random_model(folder, args.arch)
    model, _, _ = open_clip.create_model_and_transforms(f"local-dir:{folder}")
    model.eval()
    size = model.visual.image_size[0]
    cache = Path(tempfile.mkdtemp(prefix="mmsearch-engines-"))
    # One entry per engine, each in the form that engine reads (export.ROUTES): OpenVINO's IR,
    # onnxruntime's ONNX; engines not installed are left out.
    entries, export_times = {}, []
    for engine in runtime.available_engines():
        started = time.perf_counter()
        entries[engine] = export.export_model(
            model,
            image_size=size,
            context_length=model.context_length,
            dim=512,
            key=f"bench-{engine}-" + export.architecture_sha256(model),
            cache_dir=cache,
            engine=engine,
        )
        export_times.append(f"{engine} {time.perf_counter() - started:.1f} s")
    export_s = ", ".join(export_times)
    rng = np.random.default_rng(0)
    pixels = rng.standard_normal((args.batch_size, 3, size, size), dtype=np.float32)
    tokens = open_clip.get_tokenizer(args.arch)(["a photo of a goldfish"]).numpy()
    with torch.no_grad():
        want = torch.nn.functional.normalize(model.encode_image(torch.from_numpy(pixels)), dim=-1)
    want = want.numpy()

    def torch_images():
        with torch.no_grad():
            model.encode_image(torch.from_numpy(pixels))

    def torch_text():
        with torch.no_grad():
            export.text_features(model, torch.from_numpy(tokens[:, : tokens.argmax() + 1]))

    rows = [("torch eager fp32", timed(torch_images, args.repeat), timed(torch_text, 30), 0.0, 1.0)]
    model_bf16 = model.to(torch.bfloat16)
    pixels_bf16 = torch.from_numpy(pixels).to(torch.bfloat16)

    def torch_bf16():
        with torch.no_grad():
            return model_bf16.encode_image(pixels_bf16)

    got = torch.nn.functional.normalize(torch_bf16().float(), dim=-1).numpy()
    rows.append(
        (
            "torch cast bf16",
            timed(torch_bf16, args.repeat),
            float("nan"),
            float(np.abs(got - want).max()),
            float((got * want).sum(-1).min()),
        )
    )
    for engine, precision in (("onnxruntime", "fp32"), ("openvino", "fp32"), ("openvino", "bf16")):
        if engine not in entries:
            continue
        encoder = runtime.open_folder(
            entries[engine], threads=args.threads, precision=precision, engine=engine
        )
        got = encoder.encode_images(pixels)
        image_s = timed(lambda encoder=encoder: encoder.encode_images(pixels), args.repeat)
        text_s = timed(lambda encoder=encoder: encoder.encode_tokens(tokens), 30)
        rows.append(
            (
                f"{engine} {precision}",
                image_s,
                text_s,
                float(np.abs(got - want).max()),
                float((got * want).sum(-1).min()),
            )
        )
    sha = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    print(
        f"{args.arch} random weights, batch {args.batch_size}, {args.threads} threads, "
        f"{platform.processor() or platform.machine()}, git {sha}; export took {export_s}"
    )
    base = rows[0][1]
    print("| what | images/s | vs torch fp32 | text query ms | max abs err | min cosine |")
    print("|---|---|---|---|---|---|")
    for name, image_s, text_s, error, cosine in rows:
        print(
            f"| {name} | {args.batch_size / image_s:.1f} | {base / image_s:.2f}x | "
            f"{text_s * 1e3:.1f} | {error:.1e} | {cosine:.6f} |"
        )


if __name__ == "__main__":
    main()
