"""A phone/camera photo folder, built from the sample, indexed at model speed (issue 23).

Builds, deterministically and in a temporary folder, a library like a person's: 12 MP
(4032x3024) and 24 MP (6000x4000) JPEGs upscaled from the sample photos with a little grain
(q92, ~1.7 MB at 12 MP, like a phone's), every third one stored sideways with an EXIF
orientation, HEIC and AVIF photos, PNG screenshots, DNG raw files (tifffile), broken files and
files that are not images.
Then, in the same run and with the same model (ViT-B-32, random weights, in-process index path
of benchmarks/embed.py, model load and export outside the timing):

- `mmsearch index` on the small sample JPEGs, on the 12 MP JPEGs with the default (scaled)
  decoding, and on the 12 MP JPEGs with `--decode full`: images/s and the ratio to the sample
  (target: 12 MP >= 80% of the sample's images/s); the hand-rolled loop on the 12 MP JPEGs;
- the whole library indexed by `python -m retrieval index` in a subprocess: every file must be
  indexed or reported with its reason;
- the agreement of scaled with full decoding: min/mean cosine of the stored embeddings (with
  `--model DIR`, e.g. the model benchmarks/train_sample.py trains on the sample, whose rankings
  mean something; `--precision fp32` keeps bf16 rounding out of that figure);
- with `--clip-retrieval-python PATH`: clip-retrieval's `inference` on the 12 MP folder against
  `mmsearch index` in a fresh process, both timed as a user times them (start-up included; the
  export cache is warm, as on any run after the first);
- `--margins`: the sweep that chose images.SCALED_DECODE_MARGIN (per-pixel difference of the
  preprocessed input and embedding cosine against the full decode, per short side and margin).

    python -m benchmarks.photo_library                   # 32 photos of each kind
    python -m benchmarks.photo_library --count 8 --margins
    python -m benchmarks.photo_library --keep /tmp/library   # build and keep the library
    python -m benchmarks.photo_library --model /tmp/mmsearch-trained-vit --precision fp32 \
        --agreement-only                                     # scaled vs full, trained model
    python -m benchmarks.photo_library --clip-retrieval-python /tmp/cr-venv/bin/python --peer-only
    python -m benchmarks.photo_library --count 96 --sample-count 96 --compare-streams --rounds 3
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageOps

from benchmarks.embed import DEFAULT_IMAGES, baseline, environment, mmsearch, model_dir_for

# Phone photos are 4:3, 12 MP (most phones' default) or 24 MP (current flagships' default).
SIZE_12MP = (4032, 3024)
SIZE_24MP = (6000, 4000)
# Std-dev of the grey grain added to the upscaled photos, in 8-bit steps: upscaling leaves no
# fine detail, so the JPEGs would be a third of a real photo's size and decode too fast; 1.5
# brings a 12 MP q92 file to ~1.7 MB (phones: 1.2-3 MB).
GRAIN = 1.5
JPEG_QUALITY = 92
# iPhone screenshot size (portrait).
SCREENSHOT_SIZE = (1170, 2532)
# EXIF orientations used for the sideways photos: 6 (turn right), 8 (turn left), 3 (upside down).
ORIENTATIONS = (6, 8, 3)
_TRANSPOSE_FOR = {
    6: Image.Transpose.ROTATE_90,
    8: Image.Transpose.ROTATE_270,
    3: Image.Transpose.ROTATE_180,
}
EXIF_ORIENTATION = 0x0112


def upscale_photo(
    source: Path, size: tuple[int, int], seed: int, grain: float = GRAIN
) -> Image.Image:
    """The sample photo `source` cropped to 4:3, upscaled to `size` with bicubic, plus grain."""
    with Image.open(source) as opened:
        image = ImageOps.fit(opened.convert("RGB"), size, Image.Resampling.BICUBIC)
    if grain <= 0:
        return image
    noise = np.random.default_rng(seed).normal(0.0, grain, (size[1], size[0], 1))
    pixels = np.asarray(image, dtype=np.float32) + noise.astype(np.float32)
    return Image.fromarray(np.clip(pixels + 0.5, 0, 255).astype(np.uint8))


def jpeg_bytes(image: Image.Image, orientation: int = 1, quality: int = JPEG_QUALITY) -> bytes:
    """`image` as a JPEG that displays upright: stored turned so `orientation` undoes it."""
    buffer = io.BytesIO()
    if orientation == 1:
        image.save(buffer, "JPEG", quality=quality)
        return buffer.getvalue()
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    stored = image.transpose(_TRANSPOSE_FOR[orientation])
    stored.save(buffer, "JPEG", quality=quality, exif=exif.tobytes())
    return buffer.getvalue()


def write_photos(
    folder: Path, sources: Sequence[Path], size: tuple[int, int], *, rotate_every: int = 3
) -> list[Path]:
    """One JPEG of `size` per source photo; every `rotate_every`-th stored with an EXIF turn."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for number, source in enumerate(sources):
        image = upscale_photo(source, size, seed=number)
        turn = number // rotate_every % len(ORIENTATIONS)
        orientation = ORIENTATIONS[turn] if rotate_every and number % rotate_every == 0 else 1
        path = folder / f"IMG_{number:04d}.jpg"
        path.write_bytes(jpeg_bytes(image, orientation))
        paths.append(path)
    return paths


def write_screenshot(path: Path, source: Path, seed: int) -> Path:
    """A phone screenshot: flat UI bars and text around a photo, as a PNG."""
    rng = np.random.default_rng(seed)
    width, height = SCREENSHOT_SIZE
    shot = Image.new("RGB", SCREENSHOT_SIZE, (248, 248, 248))
    draw = ImageDraw.Draw(shot)
    draw.rectangle((0, 0, width, 140), fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
    photo = upscale_photo(source, (width, width * 3 // 4), seed=seed, grain=0)
    shot.paste(photo, (0, 300))
    for line in range(12):
        draw.text((40, 300 + photo.height + 40 + line * 60), f"message {seed}-{line}", fill=0)
    shot.save(path, "PNG")
    return path


def build_library(folder: Path, sources: Sequence[Path], count: int) -> dict[str, str]:
    """Write the realistic library under `folder`; returns relative path -> what must happen
    to it (`indexed`, or the reason it must be reported with)."""
    expected: dict[str, str] = {}
    for path in write_photos(folder / "camera-12mp", sources[:count], SIZE_12MP):
        expected[str(path.relative_to(folder))] = "indexed"
    for path in write_photos(
        folder / "camera-24mp", sources[count : count + count // 2], SIZE_24MP
    ):
        expected[str(path.relative_to(folder))] = "indexed"
    expected.update(_write_other_formats(folder, sources))
    expected.update(_write_raw(folder, sources))
    broken = folder / "broken"
    broken.mkdir()
    whole = jpeg_bytes(upscale_photo(sources[0], (1600, 1200), seed=1))
    (broken / "cut-off.jpg").write_bytes(whole[: len(whole) // 2])
    (broken / "empty.jpg").write_bytes(b"")
    (broken / "notes.jpg").write_bytes(b"not a photo\n" * 20)
    expected.update({"broken/cut-off.jpg": "truncated", "broken/empty.jpg": "empty"})
    expected["broken/notes.jpg"] = "not-an-image"
    for name, data in (("clip.mov", b"\x00\x00\x00\x18ftypqt  " + bytes(2000)), ("todo.txt", b"x")):
        (folder / name).write_bytes(data)
        expected[name] = "ignored"
    return expected


def _write_other_formats(folder: Path, sources: Sequence[Path]) -> dict[str, str]:
    expected = {}
    shots = folder / "screenshots"
    shots.mkdir(parents=True)
    for number in range(3):
        write_screenshot(shots / f"Screenshot_{number}.png", sources[-1 - number], seed=number)
        expected[f"screenshots/Screenshot_{number}.png"] = "indexed"
    phone = folder / "phone"
    phone.mkdir()
    for number in range(3):
        image = upscale_photo(sources[-4 - number], SIZE_12MP, seed=100 + number)
        heic, avif = phone / f"IMG_{number:04d}.HEIC", phone / f"IMG_{number:04d}.avif"
        if _save_heic(image, heic):
            expected[str(heic.relative_to(folder))] = "indexed"
        image.save(avif, "AVIF", quality=70, speed=10)
        expected[str(avif.relative_to(folder))] = "indexed"
    return expected


def write_dng(path: Path, image: Image.Image) -> Path:
    """A minimal valid DNG of `image` (RGGB Bayer mosaic, 12 bits, no preview) written by
    tifffile: what LibRaw reads as a camera's raw sensor data."""
    import tifffile

    rgb = np.asarray(image.convert("RGB"))
    mosaic = np.zeros(rgb.shape[:2], np.uint16)
    for (row, col), channel in {(0, 0): 0, (0, 1): 1, (1, 0): 1, (1, 1): 2}.items():
        mosaic[row::2, col::2] = rgb[row::2, col::2, channel].astype(np.uint16) * 16
    identity = (1, 1, 0, 1, 0, 1, 0, 1, 1, 1, 0, 1, 0, 1, 0, 1, 1, 1)
    tags = [
        (33421, "H", 2, (2, 2)),  # CFARepeatPatternDim
        (33422, "B", 4, (0, 1, 1, 2)),  # CFAPattern: R G / G B
        (50706, "B", 4, (1, 4, 0, 0)),  # DNGVersion
        (50708, "s", 0, "mmsearch test"),  # UniqueCameraModel
        (50717, "I", 1, 4095),  # WhiteLevel
        (50721, "2i", 9, identity),  # ColorMatrix1
        (50778, "H", 1, 21),  # CalibrationIlluminant1: D65
    ]
    tifffile.imwrite(path, mosaic, photometric=32803, bitspersample=16, extratags=tags)
    return path


def _write_raw(folder: Path, sources: Sequence[Path]) -> dict[str, str]:
    """Two 12 MP DNGs: indexed with the raw extra, reported with its pip command without."""
    try:
        import tifffile  # noqa: F401
    except ImportError:
        return {}
    import importlib.util

    outcome = "indexed" if importlib.util.find_spec("rawpy") else "unsupported-format"
    camera = folder / "camera-raw"
    camera.mkdir(parents=True)
    expected = {}
    for number in range(2):
        image = upscale_photo(sources[-7 - number], SIZE_12MP, seed=200 + number)
        path = write_dng(camera / f"DSC_{number:04d}.DNG", image)
        expected[str(path.relative_to(folder))] = outcome
    return expected


def _save_heic(image: Image.Image, path: Path) -> bool:
    try:
        import pillow_heif
    except ImportError:
        return False
    heif = pillow_heif.from_pillow(image)
    # x265's default preset takes ~15 s per 12 MP photo here; ultrafast ~3 s.
    heif.save(path, quality=80, enc_params={"preset": "ultrafast"})
    return True


# --- timings -------------------------------------------------------------------------------


def time_index(
    paths: list[Path],
    model_dir: Path,
    decode: str,
    workers: int | None,
    precision: str,
    throughput: bool = True,
) -> tuple[float, float, np.ndarray]:
    """Seconds and CPU seconds of the whole in-process `mmsearch index` path over `paths`, and
    the vectors."""
    seconds, _rerun, vectors, _settings, _ceiling, cpu = mmsearch(
        paths, model_dir, "cpu", precision, None, workers, decode=decode, throughput=throughput
    )
    return seconds, cpu, vectors


def compare_streams(args: argparse.Namespace, sources: list[Path], work: Path) -> None:
    """The exported model as `mmsearch index` runs it (the engine's throughput mode: streams of
    fewer threads, runtime._openvino_session) against one stream of every thread (as before
    and as queries run), on the sample and on the 12 MP JPEGs, interleaved rounds, best of."""
    model_dir = model_of(args)
    small = sources[: args.sample_count]
    large = write_12mp(args, sources, work)
    time_index(small[:8], model_dir, "auto", args.workers, args.precision)  # warm the caches
    wall: dict[tuple[str, bool], float] = {}
    cpu: dict[tuple[str, bool], float] = {}
    folders = (("sample JPEGs", small), ("12 MP JPEGs", large))
    for _ in range(args.rounds):
        for throughput in (False, True):
            for label, paths in folders:
                seconds, cpu_s, _ = time_index(
                    paths, model_dir, "auto", args.workers, args.precision, throughput
                )
                key = (label, throughput)
                wall[key] = min(seconds, wall.get(key, seconds))
                cpu[key] = min(cpu_s, cpu.get(key, cpu_s))
    print(
        f"\n`mmsearch index`, model {model_dir.name}, precision {args.precision}, best of "
        f"{args.rounds} interleaved rounds: one stream vs the throughput mode"
    )
    print("| folder | mode | img/s | CPU ms/img | vs one stream | 12 MP vs sample |")
    print("|---|---|---:|---:|---:|---:|")
    for throughput in (False, True):
        mode = "throughput (index)" if throughput else "one stream (query)"
        sample_rate = len(small) / wall[("sample JPEGs", throughput)]
        for label, paths in folders:
            rate = len(paths) / wall[(label, throughput)]
            before = len(paths) / wall[(label, False)]
            per_image = cpu[(label, throughput)] / len(paths) * 1e3
            print(f"| {label} | {mode} | {rate:.1f} | {per_image:.0f} | {rate / before:.2f} "
                  f"| {rate / sample_rate:.2f} |")  # fmt: skip


def model_of(args: argparse.Namespace) -> Path:
    """--model DIR, or a random ViT-B-32 (the default model's architecture and speed)."""
    return args.model or model_dir_for("ViT-B-32")


def write_12mp(args: argparse.Namespace, sources: list[Path], work: Path) -> list[Path]:
    started = time.perf_counter()
    large = write_photos(work / "camera-12mp", sources[: args.count], SIZE_12MP)
    mb = np.mean([p.stat().st_size for p in large]) / 1e6
    print(
        f"built {len(large)} 12 MP JPEGs ({mb:.2f} MB each) "
        f"in {time.perf_counter() - started:.0f} s"
    )
    return large


def decode_agreement(args: argparse.Namespace, large: list[Path]) -> None:
    """Scaled vs full decoding of the 12 MP JPEGs: cosine of the stored embeddings."""
    model_dir = model_of(args)
    _, _, scaled = time_index(large, model_dir, "auto", args.workers, args.precision)
    _, _, full = time_index(large, model_dir, "full", args.workers, args.precision)
    cosine = (scaled * full).sum(axis=1)
    print(
        f"scaled vs full decode on {len(large)} 12 MP JPEGs, model {model_dir.name}, precision "
        f"{args.precision}: min cosine {cosine.min():.5f}, mean {cosine.mean():.6f} "
        "(float16 storage; target min >= 0.995, mean >= 0.999)"
    )


def peer_comparison(args: argparse.Namespace, large: list[Path], work: Path) -> None:
    """clip-retrieval vs `mmsearch index` on the 12 MP folder, fresh processes, wall clock."""
    from benchmarks.cpu_targets import clip_retrieval, mmsearch_index

    folder = large[0].parent
    model_dir = model_of(args)
    extra = ("--precision", args.precision)
    mmsearch_index(folder, work / "peer-warm", model_dir, *extra)  # export cache, page cache
    peer_s = clip_retrieval(args.clip_retrieval_python, folder, work / "cr", os.cpu_count() or 2)
    ours_s, report = mmsearch_index(folder, work / "peer-ours", model_dir, *extra)
    n = len(large)
    print(f"\n{n} 12 MP JPEGs, fresh processes, wall clock with start-up")
    print("| run | wall s | img/s (wall) | vs clip-retrieval |")
    print("|---|---:|---:|---:|")
    print(f"| clip-retrieval 2.45.0 inference (ViT-B-32, batch 64, 2 workers) | {peer_s:.1f} "
          f"| {n / peer_s:.2f} | 1.00x |")  # fmt: skip
    print(f"| mmsearch index --precision {args.precision} ({model_dir.name}) | {ours_s:.1f} "
          f"| {n / ours_s:.2f} | {peer_s / ours_s:.2f}x |")  # fmt: skip


def run_timings(args: argparse.Namespace, sources: list[Path], work: Path) -> None:
    model_dir = model_of(args)
    small = sources[: args.sample_count]
    large = write_12mp(args, sources, work)
    # Warm the export cache and the page cache outside the timed runs.
    time_index(small[:8], model_dir, "auto", args.workers, args.precision)
    runs = (
        ("sample JPEGs (~500x375)", small, "auto"),
        ("12 MP JPEGs, scaled decode (default)", large, "auto"),
        ("12 MP JPEGs, --decode full", large, "full"),
    )
    # Interleaved rounds, best of each: on a shared machine the load drifts between runs.
    wall: dict[str, float] = {}
    cpu: dict[str, float] = {}
    vectors: dict[str, np.ndarray] = {}
    for _ in range(args.rounds):
        for label, paths, decode in runs:
            seconds, cpu_s, vectors[label] = time_index(
                paths, model_dir, decode, args.workers, args.precision
            )
            wall[label] = min(seconds, wall.get(label, seconds))
            cpu[label] = min(cpu_s, cpu.get(label, cpu_s))
    # The hand-rolled loop people write first: PIL full decode + preprocess in the main thread.
    loop_s, _loop_vectors = baseline(large, model_dir, "cpu", 8)
    sample_rate = len(small) / wall[runs[0][0]]
    sample_cpu = cpu[runs[0][0]] / len(small)
    print(
        f"\n`mmsearch index`, model {model_dir.name}, precision {args.precision}, "
        f"best of {args.rounds} interleaved rounds; CPU ms/img counts this process and its "
        "decode workers, and moves far less with the machine's load than img/s"
    )
    print("| folder | images | s | img/s | vs sample | CPU ms/img | vs sample |")
    print("|---|---|---|---|---|---|---|")
    for label, paths, _ in runs:
        seconds = wall[label]
        rate, per_image = len(paths) / seconds, cpu[label] / len(paths)
        print(
            f"| {label} | {len(paths)} | {seconds:.1f} | {rate:.1f} | {rate / sample_rate:.2f} "
            f"| {per_image * 1e3:.0f} | {sample_cpu / per_image:.2f} |"
        )
    loop_rate = len(large) / loop_s
    print(
        f"| 12 MP JPEGs, hand-rolled loop (PIL full decode, main thread, batch 8, fp32) "
        f"| {len(large)} | {loop_s:.1f} | {loop_rate:.1f} | {loop_rate / sample_rate:.2f} | | |"
    )
    cosine = (vectors[runs[1][0]] * vectors[runs[2][0]]).sum(axis=1)
    print(
        f"scaled vs full decode on the 12 MP JPEGs: min cosine {cosine.min():.5f}, "
        f"mean {cosine.mean():.6f} (float16 storage)"
    )


def check_library(args: argparse.Namespace, sources: list[Path], work: Path) -> None:
    """Index the whole realistic library once; every file must be indexed or reported."""
    import json
    import os
    import subprocess
    import sys

    folder = work / "library"
    started = time.perf_counter()
    expected = build_library(folder, sources, args.count // 2)
    print(f"\nbuilt the library ({len(expected)} files) in {time.perf_counter() - started:.0f} s")
    model = f"local-dir:{model_of(args)}"
    command = [sys.executable, "-m", "retrieval", "index", str(folder), "--model", model,
               "--index", str(work / "library-index"), "--json"]  # fmt: skip
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False, env=os.environ)
    wall = time.perf_counter() - started
    report = json.loads(done.stdout.strip().splitlines()[-1])
    got = {os.path.relpath(s["path"], folder): s["reason"] for s in report["skipped"]}
    indexed = [name for name, what in expected.items() if what == "indexed"]
    wrong = {
        name: (what, got.get(name, "indexed"))
        for name, what in expected.items()
        if what not in ("ignored", got.get(name, "indexed"))
    }
    ignored = sum(1 for what in expected.values() if what == "ignored")
    print(
        f"`mmsearch index` of the library: {report['indexed']} indexed (of {len(indexed)} "
        f"photos), skipped {len(got)} {sorted(set(got.values()))}, ignored {report['ignored']} "
        f"(of {ignored}); wall {wall:.1f} s with start-up; "
        + ("every file as expected" if not wrong else f"UNEXPECTED: {wrong}")
    )


def margin_sweep(sources: list[Path], margins: Sequence[float]) -> None:
    """Per short side and margin: mean/p99 pixel difference of the preprocessed input (in
    8-bit steps) and min/mean embedding cosine, scaled against full decoding."""
    import open_clip
    import torch

    from retrieval.images import load_image
    from retrieval.scaling import DecodeTarget

    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms(
        f"local-dir:{model_dir_for('ViT-B-32')}"
    )
    model.eval()
    std = torch.tensor(preprocess.transforms[-1].std).view(1, 3, 1, 1)

    def embed(pixels: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return torch.nn.functional.normalize(model.encode_image(pixels), dim=-1)

    print(
        "\n| short side | margin | decoded short side | mean px diff | p99 px diff "
        "| min cos | mean cos |"
    )
    print("|---|---|---|---|---|---|---|")
    for short in (900, 1350, 2250, 3024):
        size = (short * 4 // 3, short)
        data = [jpeg_bytes(upscale_photo(p, size, seed=n)) for n, p in enumerate(sources)]
        full = torch.stack([preprocess(load_image(d)) for d in data])
        reference = embed(full)
        for margin in margins:
            target = DecodeTarget(224, margin=margin)
            images = [load_image(d, target=target) for d in data]
            pixels = torch.stack([preprocess(image) for image in images])
            diff = ((pixels - full) * std * 255).abs().flatten()
            cosine = (embed(pixels) * reference).sum(-1)
            print(
                f"| {short} | {margin} | {min(images[0].size)} | {diff.mean():.2f} | "
                f"{diff.quantile(0.99):.1f} | {cosine.min():.5f} | {cosine.mean():.6f} |"
            )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES)
    parser.add_argument("--count", type=int, default=32, help="12 MP photos (24 MP: half)")
    # The same photos as the 12 MP ones, at their own size: equal counts, so the fixed cost of
    # a run (start of the workers, commit, faiss build) weighs the same on both.
    parser.add_argument("--sample-count", type=int, default=32, help="small sample JPEGs timed")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--workers", type=int, default=None, help="decode workers [measured]")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved timing rounds")
    parser.add_argument("--margins", action="store_true", help="run the margin sweep instead")
    parser.add_argument("--keep", type=Path, default=None, help="build the library here, keep it")
    parser.add_argument("--model", type=Path, default=None,
                        help="local-dir model folder [random ViT-B-32]")  # fmt: skip
    parser.add_argument("--agreement-only", action="store_true",
                        help="only scaled vs full decoding of the 12 MP JPEGs")  # fmt: skip
    parser.add_argument("--compare-streams", action="store_true",
                        help="only throughput mode vs one stream, sample and 12 MP")  # fmt: skip
    parser.add_argument("--peer-only", action="store_true",
                        help="only the clip-retrieval comparison")  # fmt: skip
    parser.add_argument("--clip-retrieval-python", default=None,
                        help="clip-retrieval's python: compare on the 12 MP folder")  # fmt: skip
    args = parser.parse_args()
    if not args.images.is_dir():
        raise SystemExit(f"{args.images} is missing; pass --images DIR (a folder of JPEGs)")
    every = sorted(args.images.glob("*.JPEG"))
    # Spread over the classes, the same photos every run.
    sources = every[:: max(1, len(every) // max(args.count * 2, args.sample_count))]
    print(environment("cpu"), f"cpu={platform.processor() or _cpu_name()}")
    if args.margins:
        margin_sweep(sources[: args.count], (1.0, 1.5, 2.0))
        return
    if args.keep:
        expected = build_library(args.keep, sources, args.count)
        print(f"wrote {len(expected)} files under {args.keep}")
        return
    work = Path(tempfile.mkdtemp(prefix="mmsearch-photos-"))
    try:
        if args.compare_streams:
            compare_streams(args, sources, work)
        elif args.agreement_only:
            decode_agreement(args, write_12mp(args, sources, work))
        elif not args.peer_only:
            run_timings(args, sources, work)
            check_library(args, sources, work)
        if args.clip_retrieval_python:
            large = sorted((work / "camera-12mp").glob("*.jpg"))
            peer_comparison(args, large or write_12mp(args, sources, work), work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("command: python -m benchmarks.photo_library " + " ".join(_argv()))


def _argv() -> list[str]:
    import sys

    return sys.argv[1:]


def _cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


if __name__ == "__main__":
    main()
