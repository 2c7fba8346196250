"""Cold query: a fresh `mmsearch query TEXT` process against the script a user would write.

The reference script imports open_clip and faiss, loads the same model from the same
`local-dir:` folder, tokenizes (padded to the context), encodes, and searches a faiss file holding
the same vectors. Both run as fresh processes, one after the other, `--repeat` times; the table
shows the median wall time and peak RSS of each. A second table times an unchanged re-index with
and without `--model` passed again (the weights must not be re-hashed).

With `--multilingual KIND` it answers the multilingual question instead: a fresh
`mmsearch query "猫在沙发上"` with the exported text tower and tokenizer (no torch, no
transformers) against the same query loading the model with torch (what every multilingual query
did before), on the tiny XLM-R / NLLB / SigLIP-i18n model of tests/multilingual.py (random
weights) with a few images and texts indexed with the default backend. The model is tiny, so the
times are what a cold query costs beyond the model's own forward pass: imports, loading and
tokenizing.

    python -m benchmarks.cold_query                 # ViT-B-32 random weights, 64 sample JPEGs
    python -m benchmarks.cold_query --repeat 7 --limit 200
    python -m benchmarks.cold_query --multilingual xlmr
    python -m benchmarks.cold_query --multilingual nllb --repeat 7
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.embed import DEFAULT_IMAGES, MODEL_CACHE, environment
from benchmarks.harness import cpu_model

QUERY = "a photo of a goldfish"
REPO = Path(__file__).resolve().parents[1]
MULTILINGUAL_QUERY = "猫在沙发上"
MULTILINGUAL_TEXTS = [
    "一只猫在沙发上睡觉",
    "a cat sleeping on a sofa",
    "红色真丝连衣裙",
    "東京タワーの夜景",
]

REFERENCE = r"""
import sys
import faiss, open_clip, torch
model_dir, index_file, query = sys.argv[1:4]
model, _, _ = open_clip.create_model_and_transforms("local-dir:" + model_dir)
model.eval()
tokenizer = open_clip.get_tokenizer("local-dir:" + model_dir)
index = faiss.read_index(index_file)
with torch.no_grad():
    features = model.encode_text(tokenizer([query]))
    features = torch.nn.functional.normalize(features, dim=-1).numpy()
scores, ids = index.search(features, 10)
print(ids[0].tolist())
"""


def run_measured(command: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """Run `command` as a fresh process: (wall seconds, peak RSS MiB, stdout); the peak RSS is
    the child's own, from wait4."""
    with tempfile.TemporaryFile() as errors:  # a file, so a chatty stderr cannot block the pipe
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=errors, env=env)
        stdout = process.stdout.read() if process.stdout else b""
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        if process.returncode != 0:
            errors.seek(0)
            raise SystemExit(
                f"{' '.join(command)} failed ({process.returncode}):\n{errors.read().decode()}"
            )
    return seconds, usage.ru_maxrss / 1024, stdout.decode()


# Exports the index's stored image vectors into a plain faiss file for the reference script.
EXPORT = r"""
import sys
import faiss, numpy as np
from retrieval.storage.store import IndexStore
store = IndexStore.open(sys.argv[1], readonly=True)
ids = [item.id for item in store.catalog.iter_items("images")]
vectors = store.catalog.get_vectors_by_id(ids, store.identity.dim).astype(np.float32)
store.close()
index = faiss.IndexFlatIP(vectors.shape[1])
index.add(vectors)
faiss.write_index(index, sys.argv[2])
"""


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES)
    parser.add_argument("--limit", type=int, default=64)
    parser.add_argument("--arch", default="ViT-B-32")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument(
        "--multilingual",
        choices=["xlmr", "nllb", "siglip"],
        help="time a cold Chinese query on this tiny multilingual model instead (see above)",
    )
    args = parser.parse_args()
    if args.multilingual:
        multilingual(args.multilingual, args.repeat)
        return
    if not args.images.is_dir():
        raise SystemExit(f"{args.images} is not a folder; pass --images DIR (any folder of JPEGs)")
    paths = sorted(p for p in args.images.iterdir() if p.suffix.lower() in {".jpg", ".jpeg"})
    paths = paths[: args.limit]
    # Linux carries a parent's peak RSS into the children it forks, so this process stays small:
    # everything heavy (torch, open_clip, faiss) runs in child processes.
    model_dir = MODEL_CACHE / args.arch
    if not (model_dir / "open_clip_model.safetensors").is_file():
        subprocess.run(
            [sys.executable, "-m", "benchmarks.make_model", str(model_dir), "--arch", args.arch],
            check=True,
        )
    mmsearch = [sys.executable, "-m", "retrieval"]
    work = Path(tempfile.mkdtemp(prefix="mmsearch-coldq-"))
    env = {**os.environ, "MMSEARCH_INDEX": str(work / "index")}
    try:
        images = work / "images"
        images.mkdir()
        for path in paths:
            (images / path.name).symlink_to(path.absolute())
        model = f"local-dir:{model_dir}"
        build_s, _, _ = run_measured(
            [*mmsearch, "index", str(images), "--model", model, "--quiet"], env
        )
        reference_index = work / "reference.faiss"
        run_measured([sys.executable, "-c", EXPORT, str(work / "index"), str(reference_index)], env)
        # One query first so that any one-off export or cache fill is outside the timed runs.
        run_measured([*mmsearch, "query", QUERY, "--json"], env)

        ours, theirs = [], []
        for _ in range(args.repeat):  # interleaved, so background load hits both alike
            ours.append(run_measured([*mmsearch, "query", QUERY, "--json", "-k", "10"], env))
            theirs.append(
                run_measured(
                    [sys.executable, "-c", REFERENCE, str(model_dir), str(reference_index), QUERY],
                    env,
                )
            )
        ours_ids = [hit["id"] for hit in json.loads(ours[-1][2])["results"]]
        reindex = {
            "without --model": [*mmsearch, "index", str(images), "--quiet"],
            "with --model again": [*mmsearch, "index", str(images), "--model", model, "--quiet"],
        }
        rerun = {
            label: [run_measured(command, env) for _ in range(args.repeat)]
            for label, command in reindex.items()
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def median(runs: list[tuple[float, float, str]], field: int) -> float:
        return statistics.median(run[field] for run in runs)

    base = median(theirs, 0)
    print(f"\n{len(paths)} images indexed in {build_s:.1f}s, {args.arch} (random weights)")
    print(f"{'cold text query, fresh process':<52} {'median s':>9} {'peak MiB':>9} {'ratio':>6}")
    for label, runs in [
        ("reference script (open_clip + faiss, padded)", theirs),
        ("mmsearch query TEXT --json", ours),
    ]:
        print(
            f"{label:<52} {median(runs, 0):>9.2f} {median(runs, 1):>9.0f} "
            f"{base / median(runs, 0):>5.2f}x"
        )
    print(f"mmsearch top-10 ids: {ours_ids}")
    print(f"\n{'unchanged re-index, fresh process':<52} {'median s':>9} {'peak MiB':>9}")
    for label, runs in rerun.items():
        print(f"{label:<52} {median(runs, 0):>9.2f} {median(runs, 1):>9.0f}")
    print(environment("cpu"))
    print(
        "reproduce: python -m benchmarks.cold_query "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items())
    )


def write_multilingual_model(kind: str, folder: Path) -> Path:
    sys.path.insert(0, str(REPO / "tests"))
    import multilingual

    writers = {
        "xlmr": multilingual.write_tiny_xlmr_model,
        "nllb": multilingual.write_tiny_nllb_model,
        "siglip": multilingual.write_tiny_siglip_i18n_model,
    }
    return writers[kind](folder)


def run_mmsearch(*args: str, env: dict[str, str]) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "retrieval", *args],
        capture_output=True, text=True, env=env, check=True,
    )  # fmt: skip
    return time.perf_counter() - start, done.stdout


def multilingual(kind: str, repeat: int) -> None:
    """Cold Chinese text query: exported tower + tokenizer vs torch + transformers, one run."""
    with tempfile.TemporaryDirectory() as work:
        root = Path(work)
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "MMSEARCH_EXPORT_CACHE": str(root / "x")}
        env.pop("MMSEARCH_BACKEND", None)
        env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
        model = f"local-dir:{write_multilingual_model(kind, root / 'model')}"
        sys.path.insert(0, str(REPO / "tests"))
        from testdata import make_images

        make_images(root / "photos", 8)
        (root / "texts.txt").write_text("\n".join(MULTILINGUAL_TEXTS) + "\n", encoding="utf-8")
        index = ("--index", str(root / "index"))
        run_mmsearch("index", str(root / "photos"), "--texts", str(root / "texts.txt"),
                     "--model", model, "-q", *index, env=env)  # fmt: skip
        info = json.loads(run_mmsearch("info", "--json", *index, env=env)[1])
        variants = {
            "cold: exported tower + tokenizer (no torch)": ("--backend", "auto"),
            "torch + transformers (before)": ("--backend", "torch"),
        }
        times: dict[str, list[float]] = {name: [] for name in variants}
        answers = {}
        for _ in range(repeat):
            for name, backend in variants.items():
                query = ("query", MULTILINGUAL_QUERY, "--target", "texts", "-k", "3", "--json")
                seconds, out = run_mmsearch(*query, *backend, *index, env=env)
                times[name].append(seconds)
                answers[name] = [hit["id"] for hit in json.loads(out)["results"]]
    base = statistics.median(times["torch + transformers (before)"])
    print(f"\n{kind} (tiny, random weights), index backend {info['embedder']['backend']}")
    print("\n| fresh `mmsearch query` | median s | speed-up |\n|---|---:|---:|")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"| {name} | {median:.2f} | {base / median:.1f}x |")
    print(f"\nsame top 3: {len({tuple(ids) for ids in answers.values()}) == 1}")
    sha = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True, check=False).stdout.strip()  # fmt: skip
    print(f"cpu={cpu_model()}, load={os.getloadavg()[0]:.1f}, git={sha}")
    print(f"python -m benchmarks.cold_query --multilingual {kind} --repeat {repeat}")


if __name__ == "__main__":
    main()
