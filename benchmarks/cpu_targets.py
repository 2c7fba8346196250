"""Issue 7's CPU targets in one run: `mmsearch index` (default and bf16) against clip-retrieval's
`inference` on the same folder, the runtime's model-only ceiling, bf16 agreement with fp32, and
text->image top-10 agreement of the default path with an open_clip fp32 eager reference.

Every figure comes from fresh processes timed by wall clock, like a user would time them; the
export cache is warmed first (the first use of a model exports it once, tens of seconds).

    python -m benchmarks.cpu_targets --clip-retrieval-python /path/to/venv/bin/python
    python -m benchmarks.cpu_targets --limit 100          # without clip-retrieval, quick

clip-retrieval needs its own virtualenv (../shared/peers/README.md); offline it runs the real
architecture with random weights through benchmarks/clip_retrieval_offline.py.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.embed import DEFAULT_IMAGES, environment, model_dir_for, model_only_images_per_s

REPO = Path(__file__).resolve().parents[1]


def run_wall(command: list[str], env: dict[str, str] | None = None) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(
        command, capture_output=True, text=True, env={**os.environ, **(env or {})}, check=False
    )
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return seconds, done.stdout


def mmsearch_index(images: Path, index: Path, model: Path, *extra: str) -> tuple[float, dict]:
    command = [sys.executable, "-m", "retrieval", "index", str(images), "--index", str(index)]
    seconds, out = run_wall([*command, "--model", f"local-dir:{model}", "--json", *extra])
    return seconds, json.loads(out.strip().splitlines()[-1])


def stored_vectors(index: Path, names: list[str]) -> np.ndarray:
    from retrieval.storage.store import IndexStore

    with IndexStore.open(index) as store:
        by_name = {Path(item.path).name: item.id for item in store.catalog.iter_items("images")}
        return store.catalog.get_vectors_by_id([by_name[n] for n in names], store.identity.dim)


def clip_retrieval(python: str, images: Path, out: Path, threads: int) -> float:
    wrapper = REPO / "benchmarks" / "clip_retrieval_offline.py"
    command = [python, str(wrapper), "inference", "--input_dataset", str(images)]
    command += ["--output_folder", str(out), "--input_format", "files"]
    command += ["--clip_model", "open_clip:ViT-B-32", "--batch_size", "64"]
    command += ["--num_prepro_workers", "2", "--enable_text", "False"]
    seconds, _ = run_wall(command, env={"OMP_NUM_THREADS": str(threads)})
    return seconds


def eager_reference(model: Path, paths: list[Path], captions: list[str]) -> tuple:
    """open_clip fp32 eager, as a careful user writes it (EXIF orientation applied)."""
    import open_clip
    import torch
    from PIL import Image, ImageOps

    net, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{model}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{model}")
    net.eval()
    images, texts = [], []
    with torch.no_grad():
        for start in range(0, len(paths), 8):
            batch = []
            for path in paths[start : start + 8]:
                with Image.open(path) as image:
                    batch.append(preprocess(ImageOps.exif_transpose(image).convert("RGB")))
            images.append(
                torch.nn.functional.normalize(net.encode_image(torch.stack(batch)), dim=-1)
            )
        for start in range(0, len(captions), 64):
            tokens = tokenizer(captions[start : start + 64])
            texts.append(torch.nn.functional.normalize(net.encode_text(tokens), dim=-1))
    return torch.cat(images).numpy(), torch.cat(texts).numpy()


def _cpu_settings() -> dict:
    """OpenClipEmbedder.load arguments on the CPU from MMSEARCH_* as the CLI reads them."""
    from retrieval.cli.environment import read_settings

    settings = read_settings()
    return {
        "device": "cpu",
        "backend": settings.backend or "auto",
        "threads": settings.threads,
        "cache_dir": settings.export_cache,
        "hash_cache": settings.hash_cache,
    }


def default_text_vectors(model: Path, captions: list[str]) -> np.ndarray:
    from retrieval.embedders.open_clip import OpenClipEmbedder
    from retrieval.types import ModelSpec

    embedder = OpenClipEmbedder.load(ModelSpec(f"local-dir:{model}", None), **_cpu_settings())
    return np.asarray(embedder.encode_texts(captions), dtype=np.float32)


def top10_overlap(queries_a, images_a, queries_b, images_b) -> float:
    top_a = np.argsort(-(queries_a @ images_a.T), axis=1)[:, :10]
    top_b = np.argsort(-(queries_b @ images_b.astype(np.float32).T), axis=1)[:, :10]
    k = top_a.shape[1]
    return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(top_a, top_b, strict=True)]))


def model_only_ceiling(model: Path, precision: str = "fp32") -> float:
    from retrieval.embedders.open_clip import OpenClipEmbedder
    from retrieval.types import ModelSpec

    embedder = OpenClipEmbedder.load(
        ModelSpec(f"local-dir:{model}", None), precision=precision, **_cpu_settings()
    )
    return model_only_images_per_s(embedder)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES)
    parser.add_argument("--limit", type=int, default=1000)
    parser.add_argument("--clip-retrieval-python", default=None)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args()

    paths = sorted(p for p in args.images.iterdir() if p.suffix.lower() in {".jpeg", ".jpg"})
    paths = paths[: args.limit]
    names = [p.name for p in paths]
    captions_file = args.images.parent / "captions.csv"
    captions = []
    if captions_file.is_file():
        with captions_file.open(newline="") as handle:
            wanted = set(names)
            captions = [
                r["caption"] for r in csv.DictReader(handle) if Path(r["image"]).name in wanted
            ]
    model = model_dir_for("ViT-B-32")
    work = Path(tempfile.mkdtemp(prefix="mmsearch-cpu-targets-"))
    try:
        folder = work / "images"
        folder.mkdir()
        for path in paths:
            (folder / path.name).symlink_to(path.absolute())
        warm = work / "warm"
        warm.mkdir()
        for path in paths[:2]:
            (warm / path.name).symlink_to(path.absolute())
        for extra in ((), ("--precision", "bf16")):  # export + compile once, untimed
            mmsearch_index(warm, work / f"warm-index{len(extra)}", model, *extra)

        rows = []
        peer_s = None
        if args.clip_retrieval_python:
            peer_s = clip_retrieval(args.clip_retrieval_python, folder, work / "cr", args.threads)
            rows.append(("clip-retrieval 2.45.0 inference (batch 64, 2 workers)", peer_s, None))
        fp32_s, fp32_report = mmsearch_index(folder, work / "fp32", model)
        rows.append(("mmsearch index (default: auto -> openvino fp32)", fp32_s, fp32_report))
        bf16_s, bf16_report = mmsearch_index(folder, work / "bf16", model, "--precision", "bf16")
        rows.append(("mmsearch index --precision bf16", bf16_s, bf16_report))
        ceiling = model_only_ceiling(model)
        ceiling_bf16 = model_only_ceiling(model, precision="bf16")

        n = len(paths)
        print(f"\n{n} sample JPEGs, ViT-B-32 (random weights), fresh processes, wall clock")
        print("| run | wall s | img/s (wall) | vs clip-retrieval | embed img/s (run's own) |")
        print("|---|---:|---:|---:|---:|")
        for label, seconds, report in rows:
            ratio = f"{peer_s / seconds:.2f}x" if peer_s else "n/a"
            own = f"{report['images_per_s']:.1f}" if report else ""
            print(f"| {label} | {seconds:.1f} | {n / seconds:.1f} | {ratio} | {own} |")
        print(
            f"model-only ceiling (same runtime, batch of ready pixels): fp32 {ceiling:.1f} img/s, "
            f"bf16 {ceiling_bf16:.1f} img/s; the runs reach "
            f"{100 * fp32_report['images_per_s'] / ceiling:.0f}% and "
            f"{100 * bf16_report['images_per_s'] / ceiling_bf16:.0f}% of them"
        )
        fp32 = stored_vectors(work / "fp32", names).astype(np.float32)
        bf16 = stored_vectors(work / "bf16", names).astype(np.float32)
        cosine = (fp32 * bf16).sum(axis=1) / (
            np.linalg.norm(fp32, axis=1) * np.linalg.norm(bf16, axis=1)
        )
        print(
            f"bf16 vs fp32 over {n} images: min cosine {cosine.min():.5f}, mean {cosine.mean():.5f}"
        )
        if captions and len(captions) == n:
            ref_images, ref_texts = eager_reference(model, paths, captions)
            ours_texts = default_text_vectors(model, captions)
            overlap = top10_overlap(ref_texts, ref_images, ours_texts, fp32)
            print(
                f"text->image top-10 over {n} captions: default path vs open_clip fp32 eager "
                f"share {100 * overlap:.1f}% of hits"
            )
        print(environment("cpu"))
        print("reproduce: python -m benchmarks.cpu_targets " + " ".join(sys.argv[1:]))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
