"""Does the recall `mmsearch info` claims hold for short user queries? Tuned with the
collection's own vectors (before) and with text-span probes (now), against held-out short
queries, in one run.

Indexes N synthetic texts (`a photo of a striped ceramic teapot on a kitchen shelf, number 17`)
as an IVF index through the real write path (`mmsearch index --texts ... --index-type ivf`),
which tunes nprobe with the stored vectors and with 2-4 word spans of the texts embedded by the
model's text tower (storage/probes.py). Then it embeds held-out short queries written another
way (`a striped teapot`, `ceramic teapot shelf`: templates, not spans of the stored texts) and
measures their recall@10 against exact search at the chosen nprobe; and does the same for the
nprobe a stored-vectors-only tuning (what mmsearch did before) picks on the same index.
Target: the claimed recall within 0.01 of the held-out measurement.

    python -m benchmarks.tuning_probes                              # 60,000 texts, tiny model
    python -m benchmarks.tuning_probes --model-dir models/vitb32    # a random ViT-B-32
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.harness import cpu_model
from retrieval.compose import open_for_search
from retrieval.config import EmbedConfig
from retrieval.index.exact import exact_search
from retrieval.index.tuning import K, lower_bound, per_query_recall, tune
from retrieval.types import TEXTS

REPO = Path(__file__).resolve().parents[1]
COLORS = ["red", "blue", "green", "black", "white", "yellow", "pink", "grey", "orange", "purple",
          "brown", "navy", "olive", "golden", "silver"]  # fmt: skip
STYLES = ["striped", "wooden", "ceramic", "leather", "vintage", "tiny", "large", "woolen",
          "glass", "metal", "plastic", "velvet", "spotted", "round", "square", "folding",
          "antique", "modern", "handmade", "shiny"]  # fmt: skip
THINGS = ["teapot", "goldfish", "armchair", "lamp", "bicycle", "umbrella", "sneaker", "backpack",
          "guitar", "clock", "vase", "kettle", "sofa", "mirror", "basket", "candle", "jacket",
          "scarf", "hat", "camera", "radio", "kite", "bowl", "mug", "blanket", "pillow", "rug",
          "desk", "bookshelf", "stool", "bench", "puppy", "kitten", "parrot", "rabbit", "horse",
          "boat", "car", "tractor", "train"]  # fmt: skip
PLACES = ["on a kitchen shelf", "in a garden", "by the window", "on a beach", "in a shop window",
          "on a wooden table", "in the snow", "at night", "in a living room", "on a street",
          "in a forest", "under a tree", "on a bed", "in a box", "at a market"]  # fmt: skip


def make_texts(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [
        f"a photo of a {rng.choice(COLORS)} {rng.choice(STYLES)} {rng.choice(THINGS)} "
        f"{rng.choice(PLACES)}, number {n}"
        for n in range(count)
    ]


def make_queries(count: int, seed: int) -> list[str]:
    """Short queries as shoppers type them: templates, not cut from the stored texts."""
    rng = random.Random(seed)
    forms = [
        lambda: f"a {rng.choice(COLORS)} {rng.choice(THINGS)}",
        lambda: f"{rng.choice(STYLES)} {rng.choice(THINGS)}",
        lambda: f"{rng.choice(COLORS)} {rng.choice(STYLES)} {rng.choice(THINGS)}",
        lambda: f"{rng.choice(THINGS)} {rng.choice(PLACES).split()[-1]}",
        lambda: rng.choice(THINGS),
    ]
    return [rng.choice(forms)() for _ in range(count)]


def tiny_model_dir(folder: Path) -> Path:
    sys.path.insert(0, str(REPO / "tests"))
    from testdata import write_tiny_model

    return write_tiny_model(folder)


def held_out(index, xb, ids, queries: np.ndarray, nprobe: int) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    """(recall@10, its standard error) of `queries` at `nprobe` against exact search."""
    from retrieval.types import SearchParams

    index.set_search_params(SearchParams(nprobe=nprobe))
    _, found = index.search(queries, K)
    _, truth = exact_search(xb, ids, queries, K)
    hits = per_query_recall(found, truth)
    return float(hits.mean()), float(hits.std(ddof=1) / np.sqrt(len(hits)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--texts", type=int, default=60_000)
    parser.add_argument("--queries", type=int, default=1000, help="held-out short queries")
    parser.add_argument("--model-dir", type=Path, help="a local-dir model (default: tiny)")
    parser.add_argument("--target", type=float, default=0.95)
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = args.model_dir or tiny_model_dir(work / "tiny")
        (work / "texts.txt").write_text("\n".join(make_texts(args.texts, 0)) + "\n")
        directory = work / "index"
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "retrieval", "index", "--texts", str(work / "texts.txt"),
             "--index-type", "ivf", "--target-recall", str(args.target), "--model",
             f"local-dir:{model}", "--index", str(directory), "--device", "cpu", "--quiet"],
            check=True, env=env, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        build_s = time.perf_counter() - start
        info = json.loads(
            subprocess.run(
                [sys.executable, "-m", "retrieval", "info", "--index", str(directory), "--json"],
                check=True, env=env, capture_output=True, text=True,
            ).stdout
        )["collections"][TEXTS]  # fmt: skip
        with open_for_search(directory, EmbedConfig(device="cpu")) as service:
            store = service.store
            ids, xb = store.catalog.get_vectors(TEXTS, store.identity.dim)
            xb = np.ascontiguousarray(xb, dtype=np.float32)
            index = store.get_index(TEXTS)
            queries = np.asarray(service.embed_texts(make_queries(args.queries, 99)), np.float32)
            tuning = store.tuning(TEXTS)
            assert index is not None and tuning is not None
            now = tuning.params.nprobe or 1
            before = tune(index, xb, ids, target_recall=args.target)  # stored vectors only
            rows = [
                ("before: stored vectors", before.params.nprobe or 1, before.recall_at_10),
                ("now: text spans", now, tuning.recall_at_10),
            ]
            measured = [held_out(index, xb, ids, queries, nprobe) for _, nprobe, _ in rows]
            bound = lower_bound(per_query_recall(*_search(index, xb, ids, queries, now)))
    sha = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True).stdout.strip()  # fmt: skip
    print(f"# claimed vs held-out recall@10, {args.texts:,} texts, {info['faiss']}, "
          f"model {model.name}, {args.queries} held-out short queries")  # fmt: skip
    print(f"cpu: {cpu_model()} | git {sha} | index build (embed + train + tune) {build_s:.0f} s")
    print(f"recall by probe kind (info --json): {json.dumps(info['recall'])}")
    print("\n| tuned with | nprobe | claimed recall@10 | held-out recall@10 (± s.e.) | gap |")
    print("|---|---:|---:|---:|---:|")
    for (name, nprobe, claimed), (recall, error) in zip(rows, measured, strict=True):
        print(f"| {name} | {nprobe} | {claimed:.4f} | {recall:.4f} (± {error:.4f}) |"
              f" {claimed - recall:+.4f} |")  # fmt: skip
    print(f"\nheld-out lower bound at nprobe {now}: {bound:.4f} (target {args.target})")
    print(f"reproduce: python -m benchmarks.tuning_probes --texts {args.texts}"
          + (f" --model-dir {args.model_dir}" if args.model_dir else ""))  # fmt: skip


def _search(index, xb, ids, queries, nprobe):  # type: ignore[no-untyped-def]
    from retrieval.types import SearchParams

    index.set_search_params(SearchParams(nprobe=nprobe))
    _, found = index.search(queries, K)
    _, truth = exact_search(xb, ids, queries, K)
    return found, truth


if __name__ == "__main__":
    main()
