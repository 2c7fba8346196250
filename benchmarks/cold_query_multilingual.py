"""Cold Chinese text query with a multilingual model: a fresh `mmsearch query "猫在沙发上"`
with the exported text tower and tokenizer (no torch, no transformers) against the same query
loading the model with torch (what every multilingual query did before), in one run.

Builds the tiny XLM-R-style model of tests/multilingual.py (random weights) as a local-dir
folder, indexes a few images and texts with the default backend (exports the towers and the
tokenizer once), then runs each variant as a fresh process `--repeat` times, interleaved, and
prints the median wall time. The model is tiny, so the times are what a cold query costs
beyond the model's own forward pass: imports, loading and tokenizing.

    python -m benchmarks.cold_query_multilingual
    python -m benchmarks.cold_query_multilingual --repeat 7 --kind nllb
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.harness import cpu_model

REPO = Path(__file__).resolve().parents[1]
QUERY = "猫在沙发上"
TEXTS = ["一只猫在沙发上睡觉", "a cat sleeping on a sofa", "红色真丝连衣裙", "東京タワーの夜景"]


def write_model(kind: str, folder: Path) -> Path:
    sys.path.insert(0, str(REPO / "tests"))
    import multilingual

    writers = {
        "xlmr": multilingual.write_tiny_xlmr_model,
        "nllb": multilingual.write_tiny_nllb_model,
        "siglip": multilingual.write_tiny_siglip_i18n_model,
    }
    return writers[kind](folder)


def mmsearch(*args: str, env: dict[str, str]) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "retrieval", *args],
        capture_output=True, text=True, env=env, check=True,
    )  # fmt: skip
    return time.perf_counter() - start, done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--kind", default="xlmr", choices=["xlmr", "nllb", "siglip"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        root = Path(work)
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "MMSEARCH_EXPORT_CACHE": str(root / "x")}
        env.pop("MMSEARCH_BACKEND", None)
        env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
        model = f"local-dir:{write_model(args.kind, root / 'model')}"
        sys.path.insert(0, str(REPO / "tests"))
        from testdata import make_images

        make_images(root / "photos", 8)
        (root / "texts.txt").write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
        index = ("--index", str(root / "index"))
        mmsearch("index", str(root / "photos"), "--texts", str(root / "texts.txt"),
                 "--model", model, "-q", *index, env=env)  # fmt: skip
        info = json.loads(mmsearch("info", "--json", *index, env=env)[1])
        variants = {
            "cold: exported tower + tokenizer (no torch)": ("--backend", "auto"),
            "torch + transformers (before)": ("--backend", "torch"),
        }
        times: dict[str, list[float]] = {name: [] for name in variants}
        answers = {}
        for _ in range(args.repeat):
            for name, backend in variants.items():
                query = ("query", QUERY, "--target", "texts", "-k", "3", "--json", *backend)
                seconds, out = mmsearch(*query, *index, env=env)
                times[name].append(seconds)
                answers[name] = [hit["id"] for hit in json.loads(out)["results"]]
    base = statistics.median(times["torch + transformers (before)"])
    print(f"\n{args.kind} (tiny, random weights), index backend {info['embedder']['backend']}")
    print("\n| fresh `mmsearch query` | median s | speed-up |\n|---|---:|---:|")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"| {name} | {median:.2f} | {base / median:.1f}x |")
    print(f"\nsame top 3: {len({tuple(ids) for ids in answers.values()}) == 1}")
    sha = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True, check=False).stdout.strip()  # fmt: skip
    print(f"cpu={cpu_model()}, load={os.getloadavg()[0]:.1f}, git={sha}")
    print(f"python -m benchmarks.cold_query_multilingual --repeat {args.repeat} --kind {args.kind}")


if __name__ == "__main__":
    main()
