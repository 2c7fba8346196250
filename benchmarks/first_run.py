"""A light first run and a light server (issue 23, items 4 and 6), in one run.

Export routes for the exported CPU runtime, each into an empty cache, same model, same run:
- `onnx` (the route before): torch.onnx's dynamo export of both towers, read by OpenVINO, with
  OpenVINO's compiled-blob cache (CACHE_DIR) beside it as the runtime kept it;
- `openvino-ir` (the route now): `openvino.convert_model` straight from PyTorch, saved as IR
  with fp32 weights, compiled from the IR on each start (no blob);
for each: export seconds, first-use overhead (time to the first image vector with an empty cache
minus the same with the cache warm), cache size against the weights, and the largest difference
from open_clip fp32 eager (normalised vectors). Then the blob question: compiling from the IR
against importing OpenVINO's compiled blob (CACHE_DIR), and the blob's size.

Serve RSS: `mmsearch serve` on an index of the sample JPEGs, after text and image queries and then
after three product PUTs with a new image each (embedded by the server), with
the exported towers (no torch in the process) against `--backend torch`.

    python -m benchmarks.first_run                       # ViT-B-32, 1,000 images
    python -m benchmarks.first_run --images 200 --skip-onnx
"""

from __future__ import annotations

import argparse
import base64
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from benchmarks.embed import DEFAULT_IMAGES, environment, model_dir_for
from benchmarks.harness import cpu_model, rss_mib

TEXTS = ["a photo of a goldfish", "a red sports car", "a dog on the beach", "a church", "a cup"]


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def max_error(encoder, model, pixels, tokens) -> float:
    """Largest |exported - open_clip fp32 eager| over normalised image and text vectors."""
    import torch

    from retrieval.embedders.export import text_features

    with torch.no_grad():
        image = torch.nn.functional.normalize(model.encode_image(torch.from_numpy(pixels)), dim=-1)
        text = torch.nn.functional.normalize(text_features(model, torch.from_numpy(tokens)), dim=-1)
    return max(
        float(np.abs(encoder.encode_images(pixels) - image.numpy()).max()),
        float(np.abs(encoder.encode_tokens(tokens) - text.numpy()).max()),
    )


def first_image(key: str, cache: Path, pixels: np.ndarray, threads: int) -> float:
    """Seconds from opening a cache entry to the first image vector (checksum, compile, run)."""
    from retrieval.embedders import runtime

    started = time.perf_counter()
    encoder = runtime.open_cached(key, threads=threads, cache_dir=cache, towers=("image",))
    if encoder is None:
        raise SystemExit(f"no usable cache entry for {key} in {cache}")
    encoder.encode_images(pixels[:1])
    return time.perf_counter() - started


def compile_seconds(graph: Path, threads: int, cache_dir: Path | None) -> float:
    import openvino

    core = openvino.Core()
    if cache_dir is not None:
        core.set_property({"CACHE_DIR": str(cache_dir)})
    config = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY",
              "INFERENCE_PRECISION_HINT": "f32"}  # fmt: skip
    started = time.perf_counter()
    core.compile_model(str(graph), "CPU", config)
    return time.perf_counter() - started


def export_routes(model_dir: Path, work: Path, threads: int, skip_onnx: bool) -> list[str]:
    import open_clip
    import torch

    from retrieval.embedders import export, runtime
    from retrieval.files import cached_sha256

    torch.set_num_threads(threads)
    model, _, _ = open_clip.create_model_and_transforms(f"local-dir:{model_dir}")
    model.eval()
    weights = model_dir / "open_clip_model.safetensors"
    weights_bytes = weights.stat().st_size
    key = runtime.export_key(cached_sha256(weights), export.architecture_sha256(model))
    size = model.visual.image_size[0]
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randn(4, 3, size, size, generator=generator).numpy()
    tokens = torch.randint(1, 400, (4, 9), generator=generator)
    tokens[:, -1] = 49407
    tokens = tokens.numpy()
    routes = {"openvino-ir": export._write_openvino_ir}
    if not skip_onnx:
        routes = {"onnx": export._write_onnx, **routes}
    rows = []
    ir_entry = None
    for name, route in routes.items():
        cache = work / f"cache-{name}"
        shutil.rmtree(cache, ignore_errors=True)
        saved = export.ROUTES["openvino"]
        export.ROUTES["openvino"] = route
        try:
            started, cpu_started = time.perf_counter(), time.process_time()
            entry = export.export_model(
                model, image_size=size, context_length=77, dim=model.visual.output_dim,
                key=key, cache_dir=cache,
            )  # fmt: skip
            exported_s = time.perf_counter() - started
            exported_cpu_s = time.process_time() - cpu_started  # all threads: what load leaves
        finally:
            export.ROUTES["openvino"] = saved
        blobs = 0
        if name == "onnx":
            # The runtime before: the ONNX graph compiled with OpenVINO's blob cache beside it
            # (first: compile + write the blob; warm: import it). Both sides leave out the
            # checksum pass and the one inference, which the IR row includes.
            blob_dir = entry / "openvino-blobs"
            first_s = compile_seconds(entry / "image.onnx", threads, blob_dir)
            compile_seconds(entry / "text.onnx", threads, blob_dir)
            warm_s = compile_seconds(entry / "image.onnx", threads, blob_dir)
            blobs = folder_bytes(blob_dir)
        else:
            ir_entry = entry
            first_s = first_image(key, cache, pixels, threads)
            warm_s = statistics.median(first_image(key, cache, pixels, threads) for _ in range(3))
        encoder = runtime.open_cached(key, threads=threads, cache_dir=cache)
        error = max_error(encoder, model, pixels, tokens)
        cache_bytes = folder_bytes(cache)
        overhead = exported_s + first_s - warm_s
        rows.append(
            f"| {name} | {exported_s:.1f} ({exported_cpu_s:.1f} CPU) | {overhead:.1f} | "
            f"{warm_s:.2f} | "
            f"{cache_bytes / 2**20:,.0f} ({blobs / 2**20:,.0f} blobs) | "
            f"{cache_bytes / weights_bytes:.2f}x | {error:.1e} |"
        )
    print(f"\n## export routes, {model_dir.name}, weights {weights_bytes / 2**20:,.0f} MiB\n")
    print("| route | export s (incl. check; CPU s, all threads) | first-use overhead s "
          "| warm open + first image s | cache MiB | cache / weights "
          "| max abs err vs open_clip fp32 |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    if ir_entry is not None:
        blob_dir = work / "ir-blobs"
        shutil.rmtree(blob_dir, ignore_errors=True)
        plain = statistics.median(
            compile_seconds(ir_entry / "image.xml", threads, None) for _ in range(3)
        )
        compile_seconds(ir_entry / "image.xml", threads, blob_dir)  # writes the blob
        imported = statistics.median(
            compile_seconds(ir_entry / "image.xml", threads, blob_dir) for _ in range(3)
        )
        print("\n## OpenVINO compiled-blob cache on the IR (image tower)\n")
        print("| compile from IR s | import blob s | blob MiB | image IR MiB |")
        print("|---|---|---|---|")
        ir_bytes = sum(p.stat().st_size for p in ir_entry.glob("image.*"))
        print(f"| {plain:.2f} | {imported:.2f} | {folder_bytes(blob_dir) / 2**20:,.0f} | "
              f"{ir_bytes / 2**20:,.0f} |")  # fmt: skip
    return [str(work / "cache-openvino-ir")]


def serve_rss(
    model_dir: Path,
    work: Path,
    images: int,
    cache: Path,
    baseline: Path | None,
    baseline_same_cache: bool = False,
) -> None:
    from benchmarks.livekit import free_port, serve_child
    from retrieval.images import walk_images

    env = {**os.environ, "MMSEARCH_EXPORT_CACHE": str(cache)}
    env.pop("MMSEARCH_BACKEND", None)  # auto: the exported runtime
    folder = work / "photos"
    if not folder.is_dir():
        folder.mkdir(parents=True)
        for path in sorted(DEFAULT_IMAGES.glob("*.JPEG"))[:images]:
            (folder / path.name).symlink_to(path)
    directory = work / "index"
    if not directory.is_dir():
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "retrieval", "index", str(folder), "--model",
                        f"local-dir:{model_dir}", "--index", str(directory), "-q"],
                       check=True, env=env)  # fmt: skip
        print(f"\nindexed {images} images in {time.perf_counter() - started:.0f} s")
    queries = [p for p, _ in zip(walk_images(folder), range(3), strict=False)]
    print(f"\n## `mmsearch serve`, {images} images, after {len(TEXTS)} text + "
          f"{len(queries)} image queries\n")  # fmt: skip
    print("| server | RSS MiB | peak RSS MiB | torch loaded | RSS MiB after 3 product PUTs "
          "with an image | peak | torch loaded |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    # Product writes embed images the index does not hold: mirrored sample photos.
    spare = [mirrored(path) for path in sorted(DEFAULT_IMAGES.glob("*.JPEG"))[:3]]
    results = {}
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)  # serve_child's server inherits it
    servers = {"light": ("exported towers (light)", (), None),
               "torch": ("--backend torch", ("--backend", "torch"), None)}  # fmt: skip
    if baseline is not None:
        # The code before this change, on the same index: its default (OpenVINO + torch loaded)
        # exports the model again into its own cache, in its own format.
        # `-c` puts the working directory first on sys.path, ahead of PYTHONPATH: put the
        # checkout ahead of it, or this checkout's code would run under the baseline's name.
        code = f"import sys; sys.path.insert(0, {str(baseline.resolve())!r}); "
        command = [sys.executable, "-c", code + "from retrieval.cli import app; app()"]
        servers["baseline"] = (f"default at {baseline.name} (before)", (), baseline)
    try:
        for name, (label, args, checkout) in servers.items():
            log = work / f"serve-{name}.log"
            launch = None
            if checkout is not None:
                os.environ["PYTHONPATH"] = str(checkout.resolve())
                if not baseline_same_cache:
                    os.environ["MMSEARCH_EXPORT_CACHE"] = str(work / "cache-baseline")
                launch = [*command, "serve", "--index", str(directory), "--host", "127.0.0.1",
                          "--port", str(port := free_port()), "--device", "cpu",
                          "--no-access-log"]  # fmt: skip
            else:
                port = free_port()
            # each server its own copy of the index, so its writes embed (never find the
            # products another server, or an earlier run, wrote)
            own = work / f"index-{name}"
            shutil.rmtree(own, ignore_errors=True)
            shutil.copytree(directory, own)
            if launch is not None:
                launch[launch.index(str(directory))] = str(own)
            with serve_child(own, port, args, log, launch) as (base, process):
                for text in TEXTS:
                    answer = httpx.get(f"{base}/search", params={"q": text, "k": 10}, timeout=120)
                    answer.raise_for_status()
                for path in queries:
                    files = {"file": (path.name, path.read_bytes())}
                    answer = httpx.post(f"{base}/search/image", timeout=120, files=files)
                    answer.raise_for_status()
                rss = rss_mib(process.pid)
                peak = _peak(process.pid)
                maps = Path(f"/proc/{process.pid}/maps").read_text()
                results[label] = rss
                for n, photo in enumerate(spare):
                    body = {"title": f"{name} product {n}", "images": [photo]}
                    answer = httpx.put(f"{base}/products/{name}-{n}", json=body, timeout=300)
                    answer.raise_for_status()
                written = rss_mib(process.pid)
                after = Path(f"/proc/{process.pid}/maps").read_text()
                wrote_peak = _peak(process.pid)
                print(f"| {label} | {rss:,.0f} | {peak:,.0f} | {'libtorch' in maps} | "
                      f"{written:,.0f} | {wrote_peak:,.0f} | {'libtorch' in after} |")  # fmt: skip
    finally:
        os.environ.clear()
        os.environ.update(saved)
    light = results.pop("exported towers (light)")
    for label, rss in results.items():
        print(f"light / {label} RSS: {light / rss:.2f}x")


def mirrored(path: Path) -> str:
    """A data URL of the photo at `path` mirrored left to right (new bytes, a new vector)."""
    import io

    from PIL import Image, ImageOps

    buffer = io.BytesIO()
    with Image.open(path) as image:
        ImageOps.mirror(image.convert("RGB")).save(buffer, "JPEG", quality=90)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def _peak(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--arch", default="ViT-B-32")
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--skip-onnx", action="store_true", help="only the route now")
    parser.add_argument("--skip-serve", action="store_true")
    parser.add_argument(
        "--only-serve", action="store_true", help="reuse --workdir's IR cache and index"
    )
    parser.add_argument(
        "--baseline-checkout",
        type=Path,
        default=None,
        help="also serve with this checkout's code (e.g. ../main before this change), its own "
        "export cache, same index",
    )
    parser.add_argument(
        "--baseline-same-cache",
        action="store_true",
        help="the baseline checkout reads this run's export cache (same cache FORMAT)",
    )
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="mmsearch-first-run-"))
    work.mkdir(parents=True, exist_ok=True)
    model_dir = model_dir_for(args.arch)
    print(f"# first run and serve RSS: {environment('cpu')}")
    print(f"# CPU: {cpu_model()}, load average {os.getloadavg()[0]:.1f} at start")
    print(f"# python -m benchmarks.first_run --arch {args.arch} --images {args.images}")
    if args.only_serve:
        cache = str(work / "cache-openvino-ir")
    else:
        (cache,) = export_routes(model_dir, work, args.threads, args.skip_onnx)
    if not args.skip_serve:
        serve_rss(
            model_dir,
            work,
            args.images,
            Path(cache),
            args.baseline_checkout,
            args.baseline_same_cache,
        )
    print(f"\n# load average {os.getloadavg()[0]:.1f} at the end; work folder {work}")


if __name__ == "__main__":
    main()
