"""Tokenizer speed: retrieval.embedders.tokenizer against open_clip's SimpleTokenizer, same run.

Rows: a fresh process that imports the tokenizer and tokenizes one query (what a cold
`mmsearch query TEXT` pays), building the tokenizer, the 1,000 sample captions with an empty
word cache and with a warm one, the same captions with HTML entities, accents and emoji mixed
in (these go through ftfy), and one short query on a warm tokenizer. Outputs are checked equal.

    python -m benchmarks.tokenizer
    python -m benchmarks.tokenizer --repeats 5
"""

from __future__ import annotations

import argparse
import csv
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CAPTIONS = REPO.parent / "shared" / "datasets" / "imagenet-sample" / "captions.csv"
QUERY = "a photo of a goldfish"
COLD_OURS = (
    "from retrieval.embedders.tokenizer import load_tokenizer; load_tokenizer('ViT-B-32')([{q!r}])"
)
COLD_OPEN_CLIP = "import open_clip; open_clip.get_tokenizer('ViT-B-32')([{q!r}])"


def captions() -> list[str]:
    if CAPTIONS.is_file():
        with CAPTIONS.open(newline="") as handle:
            return [row["caption"] for row in csv.DictReader(handle)]
    return [f"a photo of a thing number {i}" for i in range(1000)]


def noisy(texts: list[str]) -> list[str]:
    """Captions as scraped alt text tends to look: entities, accents, emoji, odd spacing."""
    extras = [
        "&amp; friends",
        "caf\u00e9",
        "\U0001f600",
        "&lt;b&gt;bold&lt;/b&gt;",
        "na\u00efve\t\n",
    ]
    return [f"{text} {extras[i % len(extras)]}  " for i, text in enumerate(texts)]


def best_of(repeats: int, run: Callable[[], object]) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def cold_process(code: str, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import open_clip

    from retrieval.embedders.tokenizer import ClipTokenizer, _load_vocab, load_tokenizer

    def build_ours() -> ClipTokenizer:
        _load_vocab.cache_clear()  # a fresh process reads the vocabulary file again
        return ClipTokenizer()

    texts, dirty = captions(), noisy(captions())
    rows: list[tuple[str, float, float]] = []
    rows.append(
        (
            "cold process: import + build + 1 query (s)",
            cold_process(COLD_OPEN_CLIP.format(q=QUERY), args.repeats),
            cold_process(COLD_OURS.format(q=QUERY), args.repeats),
        )
    )
    rows.append(
        (
            "build tokenizer, imports done (s)",
            best_of(args.repeats, open_clip.SimpleTokenizer),
            best_of(args.repeats, build_ours),
        )
    )
    for label, batch in [("captions", texts), ("noisy captions", dirty)]:
        theirs, ours = open_clip.SimpleTokenizer(), load_tokenizer("ViT-B-32")
        np.testing.assert_array_equal(ours(batch), theirs(batch).numpy())
        # Each fresh instance starts with an empty word cache, as in a new process.
        fresh = [open_clip.SimpleTokenizer() for _ in range(args.repeats)]
        mine = [ClipTokenizer() for _ in range(args.repeats)]
        rows.append(
            (
                f"{len(batch)} {label}, empty word cache (s)",
                best_of(args.repeats, lambda fresh=fresh, batch=batch: fresh.pop()(batch)),
                best_of(args.repeats, lambda mine=mine, batch=batch: mine.pop()(batch)),
            )
        )
        rows.append(
            (
                f"{len(batch)} {label}, warm cache (s)",
                best_of(args.repeats, lambda theirs=theirs, batch=batch: theirs(batch)),
                best_of(args.repeats, lambda ours=ours, batch=batch: ours(batch)),
            )
        )
    theirs, ours = open_clip.SimpleTokenizer(), load_tokenizer("ViT-B-32")
    rows.append(
        (
            "1 query, warm (ms)",
            1000 * best_of(200, lambda: theirs([QUERY])),
            1000 * best_of(200, lambda: ours([QUERY])),
        )
    )

    print(
        f"| what | open_clip {open_clip.__version__} | retrieval.embedders.tokenizer | speed-up |"
    )
    print("|---|---|---|---|")
    for label, base, mine_t in rows:
        print(f"| {label} | {base:.4f} | {mine_t:.4f} | {base / mine_t:.2f}x |")
    sha = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    print(
        f"\n{platform.processor() or platform.machine()}, python {platform.python_version()}, "
        f"git {sha}; best of {args.repeats} (cold process: median). "
        "Command: python -m benchmarks.tokenizer"
    )


if __name__ == "__main__":
    main()
