"""Indexing throughput: mmsearch's pipeline against a hand-rolled CLIP loop, same run, same model.

The baseline is the script people write first: open_clip model, PIL decode + preprocess in the
main thread, one stacked forward pass per batch, fp32. mmsearch runs its whole `index` path
(walk, hash, decode in worker processes, embed, commit to SQLite + faiss). Weights are random
(offline machine); throughput does not depend on weight values.

    python -m benchmarks.embed                       # 1,000 sample JPEGs, ViT-B-32, CPU
    python -m benchmarks.embed --limit 200 --device cuda --batch-size 256
    python -m benchmarks.embed --limit 200 --runs torch:fp32,openvino:fp32,torch:bf16,openvino:bf16

Each run in `--runs` (BACKEND:PRECISION) is the whole `index` path, plus its model-only ceiling
(the same embedder's encode_images on a ready batch, no decoding).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_IMAGES = REPO.parent / "shared" / "datasets" / "imagenet-sample" / "images"
MODEL_CACHE = REPO / ".bench" / "models"


def baseline(
    paths: list[Path], model_dir: Path, device: str, batch_size: int
) -> tuple[float, np.ndarray]:
    """The hand-rolled loop: returns (seconds, vectors)."""
    import open_clip
    import torch
    from PIL import Image

    model, _, preprocess = open_clip.create_model_and_transforms(
        f"local-dir:{model_dir}", device=device
    )
    model.eval()
    size = model.visual.image_size[0]
    with torch.no_grad():  # warm-up outside the timed region, as for mmsearch
        model.encode_image(torch.zeros(batch_size, 3, size, size, device=device))
    out = []
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    started = time.perf_counter()
    with torch.no_grad():
        for start in range(0, len(paths), batch_size):
            batch = []
            for path in paths[start : start + batch_size]:
                with Image.open(path) as image:
                    batch.append(preprocess(image.convert("RGB")))
            features = model.encode_image(torch.stack(batch).to(device))
            out.append(torch.nn.functional.normalize(features, dim=-1).cpu().numpy())
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - started, np.concatenate(out)


def mmsearch(
    paths: list[Path],
    model_dir: Path,
    device: str,
    precision: str,
    batch_size: int,
    workers: int | None,
    backend: str = "auto",
    threads: int | None = None,
    decode: str = "auto",
    throughput: bool = True,
) -> tuple[float, float, np.ndarray, str, float, float]:
    """The full `mmsearch index` path into a fresh index, then again over the unchanged folder:
    returns (seconds, re-run seconds, vectors, settings, model-only images/s, CPU seconds of
    the first run, decode workers included). `throughput=False` runs the exported model as a
    query does (one stream) instead of as `mmsearch index` does."""

    from retrieval.cli.environment import read_settings
    from retrieval.compose import open_for_indexing
    from retrieval.embedders.open_clip import OpenClipEmbedder
    from retrieval.ingest.sync import sync_images_and_texts
    from retrieval.types import ModelSpec

    folder = Path(tempfile.mkdtemp(prefix="mmsearch-bench-"))
    try:
        images = folder / "images"
        images.mkdir()
        for path in paths:
            (images / path.name).symlink_to(path.absolute())
        settings = read_settings()  # MMSEARCH_EXPORT_CACHE etc., as the CLI reads them
        config = settings.embed_config(
            device=device,
            precision=precision,
            batch_size=batch_size,
            num_workers=workers,
            decode=decode,
        )
        spec = ModelSpec(f"local-dir:{model_dir}", None)
        store, _ = open_for_indexing(folder / "index", spec, config)
        # model load, export (first use) and warm-up stay outside the timed region
        embedder = OpenClipEmbedder.load(
            spec,
            device=device,
            precision=precision,
            batch_size=batch_size,
            num_workers=workers,
            backend=backend,
            threads=threads,
            decode=decode,
            cache_dir=settings.export_cache,
            hash_cache=settings.hash_cache,
            throughput=throughput,  # as compose.open_for_indexing loads it
        )

        def factory() -> OpenClipEmbedder:
            return embedder

        ceiling = model_only_images_per_s(embedder)
        started, cpu_started = time.perf_counter(), cpu_seconds()
        report = sync_images_and_texts(store, [images], factory)  # takes the writer lock
        seconds = time.perf_counter() - started
        cpu = cpu_seconds() - cpu_started
        started = time.perf_counter()
        rerun = sync_images_and_texts(store, [images], factory)
        rerun_s = time.perf_counter() - started
        assert report.embedded == len(paths), report
        assert rerun.embedded == 0 and rerun.unchanged == len(paths), rerun
        by_name = {Path(item.path).name: item.id for item in store.catalog.iter_items("images")}
        vectors = store.catalog.get_vectors_by_id(
            [by_name[p.name] for p in paths], store.identity.dim
        )
        store.close()
        settings = (
            f"{embedder.backend} {embedder.precision}, batch {embedder.batch_size}, "
            f"{embedder.num_workers} workers, {threads or 'default'} threads"
        )
        return seconds, rerun_s, vectors, settings, ceiling, cpu
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def cpu_seconds() -> float:
    """CPU time of this process and its reaped children (the decode workers, which exit with
    each pass): on a machine shared with other work it moves far less than wall time."""
    import resource

    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def model_only_images_per_s(embedder: Any, rounds: int = 5) -> float:
    """The embedder's ceiling: images/s of encode_images on a ready batch (after a warm-up)."""
    import torch

    size = embedder.identity.preprocess["image_size"]
    ready = torch.randn(embedder.batch_size, 3, size, size)
    embedder.encode_images(ready)
    started = time.perf_counter()
    for _ in range(rounds):
        embedder.encode_images(ready)
    return rounds * len(ready) / (time.perf_counter() - started)


def _exif_rotated(path: Path) -> bool:
    from PIL import Image

    with Image.open(path) as image:
        return image.getexif().get(0x0112, 1) not in (0, 1)


def model_dir_for(arch: str) -> Path:
    from benchmarks.make_model import write_random_model

    folder = MODEL_CACHE / arch
    if not (folder / "open_clip_model.safetensors").is_file():
        write_random_model(folder, arch, seed=0)
    return folder


def environment(device: str) -> str:
    import faiss
    import open_clip
    import torch

    name = (
        torch.cuda.get_device_name(0)
        if device.startswith("cuda")
        else platform.processor() or "cpu"
    )
    sha = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return (
        f"device={device} ({name}), cores={os.cpu_count()}, torch={torch.__version__} "
        f"threads={torch.get_num_threads()}, open_clip={open_clip.__version__}, "
        f"faiss={faiss.__version__}, python={platform.python_version()}, git={sha or 'n/a'}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES)
    parser.add_argument("--limit", type=int, default=1000)
    parser.add_argument("--arch", default="ViT-B-32")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto")
    parser.add_argument(
        "--batch-size", type=int, default=None, help="mmsearch batch size [by device]"
    )
    parser.add_argument(
        "--baseline-batch-size",
        type=int,
        default=8,
        help="baseline batch (8 was the fastest on a 2-core CPU in the peers' runs)",
    )
    parser.add_argument("--workers", type=int, default=None, help="mmsearch decode workers")
    parser.add_argument("--threads", type=int, default=None, help="mmsearch model threads")
    parser.add_argument(
        "--runs", default=None, help="BACKEND:PRECISION,... [auto:PRECISION from --precision]"
    )
    args = parser.parse_args()

    import torch

    device = (
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    )
    if not args.images.is_dir():
        raise SystemExit(f"{args.images} is not a folder; pass --images DIR (any folder of JPEGs)")
    paths = sorted(
        p for p in args.images.iterdir() if p.suffix.lower() in {".jpeg", ".jpg", ".png"}
    )
    paths = paths[: args.limit]
    if not paths:
        raise SystemExit(f"no images in {args.images}")
    model_dir = model_dir_for(args.arch)
    base_s, base_vectors = baseline(paths, model_dir, device, args.baseline_batch_size)
    runs = [run.split(":") for run in (args.runs or f"auto:{args.precision}").split(",")]
    n = len(paths)
    rotated = [k for k, path in enumerate(paths) if _exif_rotated(path)]
    results = []
    for backend, precision in runs:
        ours_s, rerun_s, vectors, settings, ceiling, _cpu = mmsearch(
            paths,
            model_dir,
            device,
            precision,
            args.batch_size,
            args.workers,
            backend,
            args.threads,
        )
        # mmsearch applies EXIF orientation; the hand-rolled loop does not, so those differ.
        cosine = np.delete((base_vectors * vectors).sum(axis=1), rotated)
        results.append((settings, ours_s, rerun_s, ceiling, float(cosine.min())))
    print(f"\n{n} images from {args.images}, {args.arch} (random weights)")
    print("| method | wall s | img/s | vs loop | model-only img/s | % of ceiling | min cos |")
    print("|---|---|---|---|---|---|---|")
    print(
        f"| hand-rolled loop (main-thread PIL, batch {args.baseline_batch_size}, fp32) "
        f"| {base_s:.1f} | {n / base_s:.1f} | 1.00x | | | 1 |"
    )
    for settings, ours_s, _rerun_s, ceiling, cosine in results:
        print(
            f"| mmsearch index ({settings}) | {ours_s:.1f} | {n / ours_s:.1f} | "
            f"{base_s / ours_s:.2f}x | {ceiling:.1f} | {100 * n / ours_s / ceiling:.0f}% | "
            f"{cosine:.6f} |"
        )
    print(
        f"unchanged re-run of the last: {rerun_s:.2f} s; min cos is against the loop over "
        f"{n - len(rotated)} images without EXIF rotation (float16 storage)"
    )
    print(environment(device))
    print(
        "reproduce: python -m benchmarks.embed "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v is not None)
    )


if __name__ == "__main__":
    main()
