"""Hybrid (keyword + CLIP) query latency against semantic-only, in the same run and process.

Indexes the sample JPEGs (file names such as n01440764_tench.JPEG) and their captions.csv texts
with a random-weight model, then times warm `SearchService.search` calls for each query in each
mode, interleaved (semantic, keyword, hybrid, then rotated) so that load on a shared machine hits
every mode alike. The query texts are the captions ("a photo of a tench"), over the images.

    python -m benchmarks.hybrid                        # tiny model, 1,000 sample JPEGs
    python -m benchmarks.hybrid --arch ViT-B-32 --limit 200
"""

from __future__ import annotations

import argparse
import csv
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.embed import DEFAULT_IMAGES, environment, model_dir_for
from benchmarks.harness import percentile

MODES = ("semantic", "keyword", "hybrid")


def tiny_model_dir(folder: Path) -> Path:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from testdata import write_tiny_model

    return write_tiny_model(folder)


def build_index(images: list[Path], texts: list[str], model: Path, work: Path) -> Path:
    folder = work / "images"
    folder.mkdir()
    for image in images:
        (folder / image.name).symlink_to(image)
    (work / "texts.txt").write_text("\n".join(texts) + "\n")
    directory = work / "index"
    command = [sys.executable, "-m", "retrieval", "index", str(folder), "--texts",
               str(work / "texts.txt"), "--model", f"local-dir:{model}", "--index",
               str(directory), "--quiet", "--device", "cpu"]  # fmt: skip
    subprocess.run(command, check=True)
    return directory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES)
    parser.add_argument("--limit", type=int, default=1000)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--arch", default="tiny", help="tiny, or an open_clip architecture")
    args = parser.parse_args()

    from retrieval.compose import open_for_search
    from retrieval.config import EmbedConfig
    from retrieval.search.service import SearchRequest

    rows = list(csv.DictReader((args.images.parent / "captions.csv").open()))[: args.limit]
    images = [args.images.parent / row["image"] for row in rows]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = tiny_model_dir(work / "model") if args.arch == "tiny" else model_dir_for(args.arch)
        directory = build_index(images, [row["caption"] for row in rows], model, work)
        queries = [(row["caption"], row["label"]) for row in rows[: args.queries]]
        times: dict[str, list[float]] = {mode: [] for mode in MODES}
        found = dict.fromkeys(MODES, 0)
        config = EmbedConfig(device="cpu", backend="torch")
        with open_for_search(directory, config) as service:
            service.warm()
            for repeat in range(args.repeat):
                for number, (text, label) in enumerate(queries):
                    turn = (number + repeat) % len(MODES)
                    for mode in MODES[turn:] + MODES[:turn]:
                        started = time.perf_counter()
                        hits = service.search(SearchRequest(text=text, k=10, mode=mode)).hits
                        times[mode].append((time.perf_counter() - started) * 1000)
                        if repeat == 0 and hits and label.replace(" ", "_") in (hits[0].path or ""):
                            found[mode] += 1
    base = statistics.median(times["semantic"])
    print(f"{len(images)} images + {len(rows)} texts, {len(queries)} queries x {args.repeat}, "
          f"model {args.arch} (random weights), k=10, warm, one process")  # fmt: skip
    print("| mode | median ms | p95 ms | vs semantic | top-1 is the query's image |")
    print("|---|---:|---:|---:|---:|")
    for mode in MODES:
        median = statistics.median(times[mode])
        print(f"| {mode} | {median:.2f} | {percentile(times[mode], 0.95):.2f} | "
              f"{median / base:.2f}x | {found[mode]}/{len(queries)} |")  # fmt: skip
    print(environment("cpu"))
    print(f"python -m benchmarks.hybrid --arch {args.arch} --limit {args.limit} "
          f"--queries {args.queries} --repeat {args.repeat}")  # fmt: skip


if __name__ == "__main__":
    main()
