"""Write N distinct JPEGs derived from a folder of photos (shifted crops), for throughput runs
that need more images than the sample holds: mmsearch embeds identical bytes only once, so
plain copies would measure the dedupe, not the pipeline.

    python -m benchmarks.make_variants SRC DST --count 3000
"""

from __future__ import annotations

import argparse
from multiprocessing import Pool
from pathlib import Path

from PIL import Image


def _write(job: tuple[Path, Path, int]) -> None:
    source, target, shift = job
    with Image.open(source) as image:
        image = image.convert("RGB")
        width, height = image.size
        box = (shift % 7, shift % 5, width - (shift % 3), height - (shift % 4))
        image.crop(box).save(target, quality=90)


def write_variants(source: Path, target: Path, count: int, processes: int | None = None) -> int:
    """Write `count` distinct JPEGs made from the photos in `source` into `target`."""
    sources = sorted(p for p in source.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
    if not sources:
        raise SystemExit(f"no .jpg/.jpeg/.png photos in {source}")
    target.mkdir(parents=True, exist_ok=True)
    jobs = [
        (sources[n % len(sources)], target / f"v{n:05d}.jpg", n // len(sources))
        for n in range(count)
    ]
    with Pool(processes) as pool:
        pool.map(_write, jobs, chunksize=16)
    return len(jobs)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("source", type=Path)
    parser.add_argument("target", type=Path)
    parser.add_argument("--count", type=int, default=3000)
    args = parser.parse_args()
    jobs = write_variants(args.source, args.target, args.count)
    print(f"wrote {jobs} images to {args.target}")


if __name__ == "__main__":
    main()
