"""GPU pipeline in one go (issue 8): stage profile, end-to-end img/s and GPU busy %, agreement.

Made for a short GPU loan: installs nothing, makes its own >= 20,000 distinct JPEGs from a few
hundred carried sample photos (benchmarks/make_variants.py), writes random-weight models
(throughput does not depend on weight values) and prints every figure as it goes.

    python -m benchmarks.gpu_pipeline --source .bench/sample --count 20000          # on CUDA
    python -m benchmarks.gpu_pipeline --device cpu --source DIR --no-variants \\
        --sections profile,agreement --agreement-count 1000                         # on a CPU

Sections (--sections, default all):
- profile: per-image cost of each stage on up to --profile-count files: walk+stat, read, sha256,
  JPEG header check, Pillow decode, Pillow resize (the CPU workers' work), torchvision
  decode_jpeg (batched, on --device), tensor resize+normalise, host-to-device copy of a pinned
  pixel batch, forward pass, SQLite commit of the vectors;
- e2e: the hand-rolled loop (benchmarks/embed.py's baseline, on --baseline-limit files), the
  current `mmsearch index` path (--decode cpu: Pillow in worker processes) and the GPU decode
  path (--decode gpu), each into a fresh index over all files, with GPU busy % sampled by
  nvidia-smi, for each --arch;
- agreement: embeddings of the same files through both decode paths (fp32, same model): min
  and mean cosine, and the pixel difference of the preprocessed tensors.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.embed import baseline, environment, model_dir_for

SECTIONS = ("profile", "e2e", "agreement")


class BusySampler:
    """GPU utilisation (%) sampled by `nvidia-smi --loop-ms` while the block runs (n/a on a
    CPU or without nvidia-smi)."""

    def __init__(self, device: str, interval_ms: int = 100) -> None:
        self.samples: list[float] = []
        self._process: subprocess.Popen[str] | None = None
        self._thread: threading.Thread | None = None
        if device.startswith("cuda") and shutil.which("nvidia-smi"):
            index = device.partition(":")[2] or "0"
            self._command = [
                "nvidia-smi",
                f"--id={index}",
                "--query-gpu=utilization.gpu",
                "--format=csv,noheader,nounits",
                f"--loop-ms={interval_ms}",
            ]
        else:
            self._command = []

    def __enter__(self) -> BusySampler:
        if self._command:
            self._process = subprocess.Popen(
                self._command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
            )
            self._thread = threading.Thread(target=self._read, daemon=True)
            self._thread.start()
        return self

    def _read(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        for line in self._process.stdout:
            try:
                self.samples.append(float(line.strip()))
            except ValueError:
                continue

    def __exit__(self, *_: object) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(timeout=5)
        if self._thread is not None:
            self._thread.join(timeout=5)

    @property
    def busy(self) -> str:
        if not self.samples:
            return "n/a"
        return f"{np.mean(self.samples):.0f}%"


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


@contextmanager
def timed(results: dict[str, float], name: str, device: str = "cpu"):
    sync(device)
    started = time.perf_counter()
    yield
    sync(device)
    results[name] = time.perf_counter() - started


def load_embedder(model_dir: Path, args: argparse.Namespace, decode: str, precision: str = ""):
    from retrieval.embedders.open_clip import OpenClipEmbedder
    from retrieval.types import ModelSpec

    return OpenClipEmbedder.load(
        ModelSpec(f"local-dir:{model_dir}", None),
        device=args.device,
        precision=precision or args.precision,
        batch_size=args.batch_size,
        num_workers=args.workers,
        backend="torch",
        threads=args.threads,
        decode=decode,
    )


def profile(paths: Sequence[Path], model_dir: Path, args: argparse.Namespace) -> None:
    """Per-image cost of each stage, one stage at a time over the same files."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    from retrieval.embedders.tensor_decode import READ_THREADS, jpeg_orientation
    from retrieval.images import load_image, walk_images
    from retrieval.storage.catalog import Catalog

    device = args.device
    embedder = load_embedder(model_dir, args, "gpu")
    decoder = embedder.decoder
    assert decoder is not None
    batch = embedder.batch_size
    paths = list(paths)
    n = len(paths)
    t: dict[str, float] = {}
    with timed(t, "walk+stat"):
        found = [path for path in walk_images(paths[0].parent)][:n]
        for path in found:
            path.stat()
    with timed(t, "read (1 thread)"):
        blobs = [path.read_bytes() for path in paths]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(READ_THREADS) as pool, timed(t, f"read ({READ_THREADS} threads)"):
        list(pool.map(Path.read_bytes, paths))
    with timed(t, "sha256"):
        for blob in blobs:
            hashlib.sha256(blob).digest()
    # First calls pay one-off costs (plugin and kernel set-up): warm each stage on one file.
    jpeg_orientation(blobs[0])
    decoder.preprocess(
        [
            decode_jpeg(
                torch.frombuffer(bytearray(blobs[0]), dtype=torch.uint8),
                mode=ImageReadMode.RGB,
                device=device,
            )
        ]
    )
    embedder.preprocess(load_image(blobs[0]))
    with timed(t, "JPEG header check (Pillow)"):
        for blob in blobs:
            jpeg_orientation(blob)
    with timed(t, "Pillow decode (1 core)"):
        images = [load_image(blob) for blob in blobs]
    with timed(t, "Pillow resize+normalise (1 core)"):
        for image in images:
            embedder.preprocess(image)
    del images
    tensors = [torch.frombuffer(bytearray(blob), dtype=torch.uint8) for blob in blobs]
    decode_jpeg(tensors[:batch], mode=ImageReadMode.RGB, device=device)  # warm-up
    decoded = []
    with timed(t, f"decode_jpeg batched on {device}", device):
        for start in range(0, n, batch):
            decoded.extend(
                decode_jpeg(tensors[start : start + batch], mode=ImageReadMode.RGB, device=device)
            )
    with timed(t, f"tensor resize+normalise on {device}", device):
        for start in range(0, n, batch):
            decoder.preprocess(decoded[start : start + batch])
    del decoded
    size = embedder.identity.preprocess["image_size"]
    pinned = torch.randn(batch, 3, size, size)
    if device.startswith("cuda"):
        pinned = pinned.pin_memory()
    # Enough passes for a steady rate; a CPU only needs a few to show it is the bottleneck.
    rounds = max(1, min(n // batch, 32 if device.startswith("cuda") else 4))
    with timed(t, "H2D copy of pinned fp32 pixels", device):
        for _ in range(rounds):
            pinned.to(device, non_blocking=True)
    ready = pinned.to(device)
    embedder.encode_images(ready)  # warm-up
    with timed(t, f"forward ({embedder.precision}, batch {batch})", device):
        for _ in range(rounds):
            embedder.encode_images(ready)
    vectors = np.random.default_rng(0).standard_normal((n, embedder.dim)).astype(np.float32)
    with tempfile.TemporaryDirectory() as folder:
        catalog = Catalog(Path(folder) / "catalog.sqlite")
        with timed(t, "SQLite commit of vectors"):
            for start in range(0, n, batch):
                with catalog.transaction():
                    keys = [f"img:{k}" for k in range(start, min(start + batch, n))]
                    catalog.put_vectors(keys, vectors[start : start + batch])
        catalog.close()
    counts = {name: n for name in t}
    for name in t:
        if name.startswith(("H2D", "forward")):
            counts[name] = rounds * batch
    print(f"\n### Stage profile: {n} files, batch {batch}, {device}")
    print("| stage | us/image | img/s |")
    print("|---|---|---|")
    for name, seconds in t.items():
        per = seconds / counts[name]
        print(f"| {name} | {per * 1e6:.0f} | {1 / per:.0f} |")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    pil = (t["Pillow decode (1 core)"] + t["Pillow resize+normalise (1 core)"]) / n
    print(f"CPU-worker ceiling: {cores} cores x {1 / pil:.0f} img/s = {cores / pil:.0f} img/s")


def run_index(folder: Path, model_dir: Path, args: argparse.Namespace, decode: str):
    """The whole `mmsearch index` path into a fresh index: (seconds, embedded, GPU busy)."""
    from retrieval.compose import open_for_indexing
    from retrieval.config import EmbedConfig
    from retrieval.ingest.sync import sync_images_and_texts
    from retrieval.types import ModelSpec

    work = Path(tempfile.mkdtemp(prefix="mmsearch-gpu-"))
    try:
        config = EmbedConfig(
            device=args.device,
            precision=args.precision,
            batch_size=args.batch_size,
            num_workers=args.workers,
            backend="torch",
            threads=args.threads,
            decode=decode,
            hash_cache=work / "hashes.json",  # every run hashes afresh
        )
        store, factory = open_for_indexing(
            work / "index", ModelSpec(f"local-dir:{model_dir}", None), config
        )
        embedder = factory()
        size = embedder.identity.preprocess["image_size"]
        embedder.encode_images(_zeros(min(8, embedder.batch_size), size))  # warm-up
        with BusySampler(args.device) as sampler:  # sync takes the writer lock itself
            started = time.perf_counter()
            report = sync_images_and_texts(store, [folder], factory)
            seconds = time.perf_counter() - started
        store.close()
        return seconds, report.embedded, len(report.skipped), sampler.busy, embedder
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _zeros(count: int, size: int):
    import torch

    return torch.zeros(count, 3, size, size)


def end_to_end(folder: Path, paths: list[Path], args: argparse.Namespace) -> None:
    for arch in args.arch.split(","):
        model_dir = args.model_dir or model_dir_for(arch)
        n = len(paths)
        rows = []
        if args.baseline_limit:
            subset = paths[: args.baseline_limit]
            with BusySampler(args.device) as sampler:
                seconds, _ = baseline(subset, model_dir, args.device, args.baseline_batch_size)
            rows.append(
                (
                    f"hand-rolled loop (PIL, batch {args.baseline_batch_size}, fp32)",
                    len(subset),
                    seconds,
                    sampler.busy,
                    "",
                )
            )
        for decode in ("cpu", "gpu"):
            seconds, embedded, skipped, busy, embedder = run_index(folder, model_dir, args, decode)
            label = "current path (Pillow workers)" if decode == "cpu" else "GPU decode path"
            settings = (
                f"{embedder.precision}, batch {embedder.batch_size}, "
                f"{embedder.num_workers} workers, skipped {skipped}"
            )
            rows.append(
                (f"mmsearch index --decode {decode}: {label}", embedded, seconds, busy, settings)
            )
            del embedder
        name = args.model_dir.name if args.model_dir else arch
        print(f"\n### End to end: {name} (random weights), {n} distinct JPEGs, {args.device}")
        print("| method | images | wall s | img/s | vs loop | GPU busy | settings |")
        print("|---|---|---|---|---|---|---|")
        loop_rate = rows[0][1] / rows[0][2] if args.baseline_limit else None
        for label, count, seconds, busy, settings in rows:
            rate = count / seconds
            ratio = f"{rate / loop_rate:.2f}x" if loop_rate else "n/a"
            print(
                f"| {label} | {count} | {seconds:.1f} | {rate:.0f} | {ratio} | {busy} | "
                f"{settings} |"
            )


def agreement(paths: list[Path], model_dir: Path, args: argparse.Namespace) -> None:
    """Both decode paths over the same files, fp32, same model: cosine of each pair."""
    import torch

    from retrieval.embedders.tensor_decode import jpeg_orientation
    from retrieval.images import load_image

    results: dict[str, dict[int, np.ndarray]] = {}
    seconds: dict[str, float] = {}
    embedders = {}
    for decode in ("cpu", "gpu"):
        embedder = load_embedder(model_dir, args, decode, precision="fp32")
        embedders[decode] = embedder
        vectors: dict[int, np.ndarray] = {}

        def on_batch(
            positions: list[int], batch: np.ndarray, _skips: Any, into: dict = vectors
        ) -> None:
            into.update(zip(positions, batch, strict=True))

        started = time.perf_counter()
        embedder.embed_image_files(paths, on_batch)
        seconds[decode] = time.perf_counter() - started
        results[decode] = vectors
    common = sorted(set(results["cpu"]) & set(results["gpu"]))
    cosines = np.array([float(results["cpu"][p] @ results["gpu"][p]) for p in common])
    sample = paths[: min(64, len(paths))]
    pil = torch.stack([embedders["cpu"].preprocess(load_image(p)) for p in sample])
    decoder = embedders["gpu"].decoder
    assert decoder is not None
    batches = list(decoder.batches(sample, len(sample)))
    tensor = torch.zeros_like(pil)
    for batch in batches:
        if batch.pixels is not None:
            tensor[batch.positions] = batch.pixels.float().cpu()
    std = torch.tensor(embedders["cpu"].preprocess.transforms[-1].std).view(1, 3, 1, 1)
    taken = [p for batch in batches for p in batch.positions]
    diffs = ((tensor - pil).abs() * std * 255)[taken]
    worst = int(np.argmin(cosines)) if len(cosines) else 0
    print(f"\n### Agreement: {len(common)} files, tensor path on {args.device} vs Pillow, fp32")
    print(
        f"min cosine {cosines.min():.8f} (file {paths[common[worst]].name}), "
        f"mean {cosines.mean():.8f}, files below 0.995: {(cosines < 0.995).sum()}"
    )
    print(
        f"pixels (first {len(taken)} files, in 1/255): max {diffs.max():.2f}, "
        f"mean {diffs.mean():.4f}"
    )
    print(
        f"embed wall s (decode+model, same model): pil {seconds['cpu']:.1f}, "
        f"tensor {seconds['gpu']:.1f}; files the tensor path leaves to the CPU workers: "
        f"{sum(jpeg_orientation(p.read_bytes()) is None for p in paths)}"
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--source", type=Path, required=True, help="a few hundred sample JPEGs")
    parser.add_argument("--work", type=Path, default=None, help="where variants go [temp dir]")
    parser.add_argument("--count", type=int, default=20_000, help="distinct variants to make")
    parser.add_argument("--no-variants", action="store_true", help="use --source files as is")
    parser.add_argument("--device", default="cuda")
    parser.add_argument(
        "--arch", default="ViT-B-32", help="comma-separated, e.g. ViT-B-32,ViT-L-14"
    )
    parser.add_argument("--model-dir", type=Path, default=None, help="a local-dir model instead")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (1 on a contended machine)"
    )
    parser.add_argument("--baseline-limit", type=int, default=3000)
    parser.add_argument("--baseline-batch-size", type=int, default=256)
    parser.add_argument("--profile-count", type=int, default=2048)
    parser.add_argument("--agreement-count", type=int, default=2000)
    parser.add_argument("--sections", default=",".join(SECTIONS))
    args = parser.parse_args(argv)
    unknown = set(args.sections.split(",")) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; use {', '.join(SECTIONS)}")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    sections = args.sections.split(",")
    started = time.perf_counter()
    print(environment(args.device))
    work = args.work or Path(tempfile.mkdtemp(prefix="mmsearch-variants-"))
    try:
        if args.no_variants:
            folder = args.source
        else:
            from benchmarks.make_variants import write_variants

            folder = work / "variants"
            begun = time.perf_counter()
            count = write_variants(args.source, folder, args.count)
            print(f"wrote {count} variants of {args.source} in {time.perf_counter() - begun:.1f} s")
        paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in {".jpg", ".jpeg"})
        first_arch = args.arch.split(",")[0]
        model_dir = args.model_dir or model_dir_for(first_arch)
        steps: dict[str, Callable[[], None]] = {
            "profile": lambda: profile(paths[: args.profile_count], model_dir, args),
            "e2e": lambda: end_to_end(folder, paths, args),
            "agreement": lambda: agreement(paths[: args.agreement_count], model_dir, args),
        }
        for name in SECTIONS:
            if name in sections:
                begun = time.perf_counter()
                steps[name]()
                print(f"({name}: {time.perf_counter() - begun:.1f} s)", flush=True)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    print(f"total {time.perf_counter() - started:.1f} s")
    print("reproduce: python -m benchmarks.gpu_pipeline " + " ".join(argv or []))


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
