"""Latency of composed queries, "more like this", min-score and collapsed searches against a
plain text query, in one process over one index (a random-weight ViT-B-32: speed does not
depend on the weight values).

    python -m benchmarks.composed --images 300 --repeats 15

Each query kind runs `repeats` times after a warm-up; the table shows the median and the ratio
to the plain text query. The service is the one `mmsearch query` uses (no query cache).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.make_model import write_random_model
from retrieval.compose import open_for_search
from retrieval.config import EmbedConfig
from retrieval.search.queries import QueryPart
from retrieval.search.service import SearchRequest, SearchService

SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "imagenet-sample" / "images"


def write_images(folder: Path, count: int) -> list[Path]:
    """The first `count` sample photos (symlinked), or noise JPEGs when the sample is absent."""
    folder.mkdir(parents=True)
    sources = sorted(SAMPLE.glob("*.JPEG"))[:count] if SAMPLE.is_dir() else []
    paths = []
    for source in sources:
        (folder / source.name).symlink_to(source)
        paths.append(folder / source.name)
    rng = np.random.default_rng(0)
    for n in range(len(paths), count):
        path = folder / f"noise_{n:04d}.jpg"
        Image.fromarray(rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def kinds(service: SearchService, image: Path, item: int) -> dict[str, Callable[[], object]]:
    def search(**fields: object) -> Callable[[], object]:
        return lambda: service.search(SearchRequest(k=10, **fields))  # type: ignore[arg-type]

    two_texts = (QueryPart(text="a red dress"), QueryPart(text="stripes", weight=-0.5))
    return {
        "plain text": search(text="a red dress"),
        "text - text": search(parts=two_texts),
        "text + image": search(parts=(QueryPart(text="a red dress"), QueryPart(image=image))),
        "text + item": search(parts=(QueryPart(text="a red dress"), QueryPart(item=item))),
        "like (no model)": search(like=item),
        "like + collapse": search(like=item, collapse=True),
        "text, min_score": search(text="a red dress", min_score=0.0),
        "text, collapse": search(text="a red dress", collapse=True),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = write_random_model(root / "vit-b-32", "ViT-B-32")
        paths = write_images(root / "images", args.images)
        subprocess.run(
            [sys.executable, "-m", "retrieval", "index", str(root / "images"), "--model",
             f"local-dir:{model}", "--index", str(root / "index"), "--quiet", "--device", "cpu",
             "--backend", "torch"],
            check=True,
        )  # fmt: skip
        config = EmbedConfig(device="cpu", backend="torch")
        with open_for_search(root / "index", config) as service:
            item = int(service.store.catalog.get_vectors("images", 512)[0][1])
            timings = {}
            for name, run in kinds(service, paths[0], item).items():
                run()  # warm-up: model load, index load, first-call costs
                times = []
                for _ in range(args.repeats):
                    start = time.perf_counter()
                    run()
                    times.append(time.perf_counter() - start)
                timings[name] = statistics.median(times) * 1000
    plain = timings["plain text"]
    print(f"{args.images} images, ViT-B-32 (random weights), torch CPU, median of {args.repeats}")
    print(f"{'query':<18} {'ms':>8} {'vs plain':>9}")
    for name, ms in timings.items():
        print(f"{name:<18} {ms:8.2f} {ms / plain:8.2f}x")
    sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                         check=False).stdout.strip()  # fmt: skip
    print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; git {sha}")
    print(f"reproduce: python -m benchmarks.composed {' '.join(sys.argv[1:])}".rstrip())


if __name__ == "__main__":
    main()
