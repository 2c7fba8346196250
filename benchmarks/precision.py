"""fp32 vs bf16 vs int8 on this CPU, in one run: speed of the exported image tower, and agreement
with fp32 that means something, from a model trained on the sample (benchmarks/train_sample.py).

For each precision the exported runtime embeds the sample images (decoded and preprocessed once,
outside the timing) and their captions; against fp32 it reports the min/mean cosine of image and
of text vectors, and the top-10 overlap of text->image search (each caption as a query over all
images: the share of fp32's top 10 that the precision's top 10 keeps), plus each precision's own
text->image R@1 as a sanity check that the rankings are meaningful. int8 is the image tower
quantised by retrieval/embedders/quantize.py on 128 of the images (as `--precision int8` does
with the user's own); its text tower is fp32. Speed: images/s of the image tower alone, at the
index batch size, best of interleaved rounds (the machine is shared). `--arch ViT-B-32` also
times a random ViT-B-32 (the default model's architecture; speed does not depend on weights).

The bar for `--precision auto` = bf16 on CPUs with native bf16 (issue 23): top-10 overlap
>= 99% and min cosine >= 0.999 with the trained model. int8's target: >= 1.8x fp32 images/s at
min cosine >= 0.99.

    python -m benchmarks.precision                      # trained model, 1,000 images
    python -m benchmarks.precision --arch ViT-B-32      # plus ViT-B-32 speed and cosines
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.harness import cpu_model
from benchmarks.train_sample import DEFAULT_DIR, MARKER, SAMPLE, train

REPO = Path(__file__).resolve().parents[1]
PRECISIONS = ("fp32", "bf16", "int8")
BATCH = 8  # the CPU index batch size (config.BATCH_SIZES)


def read_sample(count: int) -> tuple[list[Path], list[str]]:
    with open(SAMPLE / "captions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))[:count]
    return [SAMPLE / row["image"] for row in rows], [row["caption"] for row in rows]


def load(model_dir: Path, cache: Path) -> Any:
    from retrieval.embedders.open_clip import OpenClipEmbedder
    from retrieval.types import ModelSpec

    spec = ModelSpec(f"local-dir:{model_dir}", None)
    return OpenClipEmbedder.load(
        spec, device="cpu", precision="fp32", backend="openvino", cache_dir=cache
    )


def pixels_of(embedder: Any, paths: list[Path]) -> np.ndarray:
    from retrieval.embedders.loader import decode_source

    return np.stack(
        [decode_source(p, str(p), embedder.preprocess, target=embedder.target).numpy()
         for p in paths]
    )  # fmt: skip


def encoders(embedder: Any, paths: list[Path]) -> dict[str, Any]:
    """One exported encoder per precision over the same cache entry (int8: quantised here on
    the first 128 images, as an index run would)."""
    from retrieval.embedders import quantize, runtime

    folder, threads = embedder.encoder.folder, embedder.encoder.threads
    made = {p: runtime.open_folder(folder, threads=threads, precision=p) for p in PRECISIONS}
    shutil.rmtree(folder / quantize.FOLDER, ignore_errors=True)  # quantise in this run

    def decode(path: Path) -> np.ndarray:
        return pixels_of(embedder, [path])[0]

    start = time.perf_counter()
    graph, meta = quantize.quantize_image_tower(made["int8"], paths, decode)
    made["int8"].image_graph = graph
    print(f"int8: quantised in {time.perf_counter() - start:.1f} s; {meta['agreement']}")
    return made


def embed_all(encoder: Any, pixels: np.ndarray, tokens: np.ndarray) -> tuple[np.ndarray, ...]:
    images = np.concatenate(
        [encoder.encode_images(pixels[i : i + BATCH]) for i in range(0, len(pixels), BATCH)]
    )
    texts = np.concatenate(
        [encoder.encode_tokens(tokens[i : i + 256]) for i in range(0, len(tokens), 256)]
    )
    return images, texts


def speeds(made: dict[str, Any], pixels: np.ndarray, rounds: int) -> dict[str, float]:
    """Images/s of each precision's image tower, best of `rounds` interleaved rounds."""
    best = dict.fromkeys(made, 0.0)
    for encoder in made.values():  # warm-up: compile, first-call allocations
        encoder.encode_images(pixels[:BATCH])
    for _ in range(rounds):
        for name, encoder in made.items():
            start = time.perf_counter()
            for i in range(0, len(pixels), BATCH):
                encoder.encode_images(pixels[i : i + BATCH])
            best[name] = max(best[name], len(pixels) / (time.perf_counter() - start))
    return best


def top_k(texts: np.ndarray, images: np.ndarray, k: int = 10) -> np.ndarray:
    scores = texts @ images.T
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def overlap(a: np.ndarray, b: np.ndarray) -> float:
    """Mean share of each row of `a` found in the same row of `b` (top-k sets)."""
    return float(np.mean([len(set(x) & set(y)) / len(x) for x, y in zip(a, b, strict=True)]))


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def measure(model_dir: Path, paths: list[Path], captions: list[str], args: Any) -> list[str]:
    with tempfile.TemporaryDirectory() as cache:
        embedder = load(model_dir, Path(cache))
        pixels = pixels_of(embedder, paths)
        tokens = embedder.tokenizer(captions).numpy()
        made = encoders(embedder, paths)
        vectors = {name: embed_all(encoder, pixels, tokens) for name, encoder in made.items()}
        rate = speeds(made, pixels[: args.speed_images], args.rounds)
    fp32_images, fp32_texts = vectors["fp32"]
    reference = top_k(fp32_texts, fp32_images)
    truth = np.arange(len(paths))
    rows = []
    for name, (images, texts) in vectors.items():
        image_cos, text_cos = cosines(images, fp32_images), cosines(texts, fp32_texts)
        found = top_k(texts, images)
        rows.append(
            f"| {model_dir.name} | {name} | {rate[name]:.1f} | {rate[name] / rate['fp32']:.2f}x "
            f"| {image_cos.min():.5f} / {image_cos.mean():.5f} "
            f"| {text_cos.min():.5f} / {text_cos.mean():.5f} "
            f"| {100 * overlap(reference, found):.1f}% | {np.mean(found[:, 0] == truth):.3f} |"
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_DIR,
                        help="trained model folder (trained there first when absent)")  # fmt: skip
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--speed-images", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--arch", help="also time a random model of this architecture")
    parser.add_argument("--no-trained", action="store_true", help="only the --arch model")
    args = parser.parse_args()
    paths, captions = read_sample(args.images)
    rows = []
    if not args.no_trained:
        marker = args.model_dir / MARKER  # trained already (any settings): use it as it is
        model_dir = args.model_dir if marker.is_file() else train(args.model_dir)
        print(f"trained model {model_dir}: {marker.read_text()}")
        rows = measure(model_dir, paths, captions, args)
    if args.arch:
        from benchmarks.embed import model_dir_for

        rows += measure(model_dir_for(args.arch), paths, captions, args)
    print("\n| model | precision | img/s (image tower) | vs fp32 | image cosine min / mean "
          "| text cosine min / mean | top-10 overlap vs fp32 | text->image R@1 |")  # fmt: skip
    print("|---|---|---:|---:|---|---|---:|---:|")
    print("\n".join(rows))
    sha = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True, check=False).stdout.strip()  # fmt: skip
    print(f"\ncpu={cpu_model()}, load={os.getloadavg()[0]:.1f} (shared machine), git={sha}")
    print("python -m benchmarks.precision " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
