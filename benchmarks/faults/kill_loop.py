"""Kill loop: SIGKILL `mmsearch index` in every phase of a run, on a real folder that changes
between trials, and prove after every kill that nothing was lost or mixed.

    python -m benchmarks.faults.kill_loop            # 36 trials, 4 per phase (~10 min, 2 cores)
    python -m benchmarks.faults.kill_loop --trials 9 --images 24

Each trial: change the folder (adds, deletes, edits, renames across subfolders) and the text
list, start `python -m retrieval index` as a child process, and kill it with SIGKILL, either
aimed at a phase through MMSEARCH_FAULT=PHASE:N (see retrieval/faults.py: the child kills itself
at that point, as `kill -9` from outside would) or after a random delay. Then:
  * `mmsearch check` finds the index sound (stray files of the unfinished run excepted),
    `info` and an image and a text query answer;
  * the images, texts and faiss ids are exactly the previous run's or exactly the new folder's,
    never a mix;
  * a clean run afterwards ends with every image indexed exactly once, every text once, and no
    file in the index directory beyond the current generation's.
Images are copies of the shared sample JPEGs (../shared/datasets/imagenet-sample), the model
is the tiny random-weight open_clip model of the tests.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageOps

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO.parent / "shared" / "datasets" / "imagenet-sample" / "images"
SUBFOLDERS = ("a", "b", "c", "c/deeper")
# How many times each phase is reached in a trial's run (hash and embed are counted from the
# change itself, see _hits): the N of PHASE:N is drawn from 1..this, so kills land early and
# late inside a phase (an N past the end lets the run finish; the trial records "finished").
PHASE_HITS = {
    "walk": len(SUBFOLDERS),
    "hash": 1,
    "embed": 1,
    "texts": 1,
    "faiss": 4,
    "commit": 1,
    "committed": 1,
    "cleanup": 2,
    "random": 1,
}
PHASES = tuple(PHASE_HITS)
BATCH_SIZE = 4  # several embed batches per trial with a handful of changed files


@dataclass
class State:
    """What an index holds, or should hold: image path -> content key, and the texts."""

    images: dict[str, str]
    texts: frozenset[str]


@dataclass
class Results:
    trials: int = 0
    kills_by_phase: Counter[str] = field(default_factory=Counter)
    finished_before_kill: int = 0
    after_kill: Counter[str] = field(default_factory=Counter)  # old / new
    errors: list[str] = field(default_factory=list)
    images_lost: int = 0
    operations: Counter[str] = field(default_factory=Counter)


def _key(path: Path) -> str:
    return "img:" + hashlib.sha256(path.read_bytes()).hexdigest()


def expected_state(folder: Path, texts_file: Path) -> State:
    images = {
        str(path.absolute()): _key(path)
        for path in folder.rglob("*")
        if path.is_file() and path.suffix.lower() == ".jpeg"
    }
    texts = frozenset(line for line in texts_file.read_text().splitlines() if line.strip())
    return State(images, texts)


def index_state(directory: Path) -> State:
    from retrieval.storage.store import IndexStore

    with IndexStore.open(directory, readonly=True) as store:
        images = {item.path: item.key for item in store.catalog.iter_items("images")}
        paths = [item.path for item in store.catalog.iter_items("images")]
        if len(paths) != len(set(paths)):
            raise AssertionError("an image path is indexed more than once")
        texts = [item.text for item in store.catalog.iter_items("texts")]
        if len(texts) != len(set(texts)):
            raise AssertionError("a text is indexed more than once")
    return State(images, frozenset(t for t in texts if t))


class Folder:
    """The changing folder of real images and the text list."""

    def __init__(self, root: Path, pool: list[Path], captions: list[str], rng: random.Random):
        self.root = root / "photos"
        self.texts = root / "texts.txt"
        self.pool = list(pool)
        self.captions = list(captions)
        self.rng = rng
        for sub in SUBFOLDERS:
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self.counter = 0
        for _ in range(len(self.pool) // 2):
            self.add()
        self.texts.write_text("\n".join(self.captions[:5]) + "\n")

    def files(self) -> list[Path]:
        return sorted(p for p in self.root.rglob("*.jpeg") if p.is_file())

    def _new_name(self) -> Path:
        self.counter += 1
        return self.root / self.rng.choice(SUBFOLDERS) / f"img_{self.counter:04d}.jpeg"

    def add(self) -> None:
        if self.pool:
            shutil.copyfile(self.pool.pop(self.rng.randrange(len(self.pool))), self._new_name())

    def change(self, results: Results) -> None:
        """A few random adds, deletes, edits and renames, and a changed text list."""
        for _ in range(self.rng.randint(3, 6)):
            files = self.files()
            operation = self.rng.choice(["add", "add", "delete", "edit", "rename"])
            if operation == "add" or len(files) < 4:
                operation = "add"
                self.add()
            elif operation == "delete":
                self.rng.choice(files).unlink()
            elif operation == "edit":
                path = self.rng.choice(files)
                with Image.open(path) as image:
                    edited = ImageOps.mirror(image.convert("RGB"))
                edited.save(path, "JPEG", quality=self.rng.randint(60, 95))
            else:
                os.replace(self.rng.choice(files), self._new_name())
            results.operations[operation] += 1
        lines = [line for line in self.texts.read_text().splitlines() if line]
        lines = [line for line in lines if self.rng.random() > 0.2]
        lines += self.rng.sample(self.captions, 3)
        self.texts.write_text("\n".join(dict.fromkeys(lines)) + "\n")


def _env(workdir: Path, fault: str | None) -> dict[str, str]:
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "MMSEARCH_BACKEND": "torch",
        "MMSEARCH_DEVICE": "cpu",
        "HF_HUB_OFFLINE": "1",
        "MMSEARCH_HASH_CACHE": str(workdir / "hashes.json"),
        "MMSEARCH_EXPORT_CACHE": str(workdir / "exports"),
    }
    env.pop("MMSEARCH_FAULT", None)
    if fault:
        env["MMSEARCH_FAULT"] = fault
    return env


def _index_command(folder: Folder, directory: Path, model: str) -> list[str]:
    return [
        sys.executable, "-m", "retrieval", "index", str(folder.root), "--texts", str(folder.texts),
        "--index", str(directory), "--model", model, "-q", "--batch-size", str(BATCH_SIZE),
        "--workers", "0",
    ]  # fmt: skip


def run_index(
    folder: Folder,
    directory: Path,
    model: str,
    workdir: Path,
    *,
    fault: str | None = None,
    kill_after: float | None = None,
) -> int:
    """One index run; its return code (-9 when it was killed)."""
    proc = subprocess.Popen(
        _index_command(folder, directory, model),
        env=_env(workdir, fault),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    if kill_after is not None:
        try:
            proc.wait(timeout=kill_after)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
    _, stderr = proc.communicate(timeout=600)
    if proc.returncode not in (0, -signal.SIGKILL):
        raise AssertionError(f"index exited {proc.returncode}: {stderr[-2000:]}")
    return proc.returncode


def verify_after_kill(directory: Path, old: State, new: State, results: Results) -> None:
    """The index opens, checks sound and answers from exactly the old or the new state."""
    from retrieval.storage.integrity import check_index

    report = check_index(directory)
    serious = [p for p in report.problems if p.kind != "stray-file"]
    if serious:
        raise AssertionError(f"check after kill: {serious}")
    state = index_state(directory)
    if state == old:
        results.after_kill["old"] += 1
    elif state == new:
        results.after_kill["new"] += 1
    else:
        raise AssertionError("the index after a kill is neither the old nor the new state")
    _answer_queries(directory, state)


def _answer_queries(directory: Path, state: State) -> None:
    from typer.testing import CliRunner

    from retrieval.cli import app

    runner = CliRunner()
    info = runner.invoke(app, ["info", "--index", str(directory), "--json"])
    if info.exit_code != 0:
        raise AssertionError(f"info failed: {info.output}")
    counts = json.loads(info.stdout)["collections"]
    if counts["images"]["count"] != len(state.images):
        raise AssertionError("info counts disagree with the catalog")
    # Query with an image whose indexed bytes are still on disk: it must find itself first.
    probe = next(
        (
            p
            for p, key in sorted(state.images.items())
            if Path(p).is_file() and _key(Path(p)) == key
        ),
        None,
    )
    if probe is not None:
        hit = runner.invoke(
            app, ["query", "--image", probe, "--index", str(directory), "-k", "3", "--json"]
        )
        if hit.exit_code != 0:
            raise AssertionError(f"image query failed: {hit.output}")
        results = json.loads(hit.stdout)["results"]
        if results[0]["path"] != probe or any(r["path"] not in state.images for r in results):
            raise AssertionError(f"image query answered {results} for {probe}")
    text = runner.invoke(app, ["query", "a photo of a dog", "--index", str(directory), "--json"])
    if text.exit_code != 0:
        raise AssertionError(f"text query failed: {text.output}")
    if any(r["path"] not in state.images for r in json.loads(text.stdout)["results"]):
        raise AssertionError("a text query answered with an item of another generation")


def verify_clean(directory: Path, new: State, results: Results) -> None:
    """After a clean run: exactly the folder's images and texts, and no stray files."""
    from retrieval.storage.integrity import check_index

    report = check_index(directory)
    if not report.ok:
        raise AssertionError(f"check after the clean run: {report.problems}")
    state = index_state(directory)
    results.images_lost += len(set(new.images) - set(state.images))
    if state != new:
        raise AssertionError("after a clean run the index does not equal the folder")
    generation = report.generation
    allowed = {"manifest.json", "catalog.sqlite", "catalog.sqlite-wal", "catalog.sqlite-shm",
               ".lock", f"images.{generation}.faiss", f"texts.{generation}.faiss"}  # fmt: skip
    extra = sorted(p.name for p in directory.iterdir() if p.name not in allowed)
    if extra:
        raise AssertionError(f"orphan files in the index directory: {extra}")


def _hits(phase: str, old: State, new: State) -> int:
    """How many times the next run reaches `phase` (at least 1), so PHASE:N lands inside it."""
    if phase == "hash":  # new paths and edited files are hashed; unchanged ones are not read
        return max(1, sum(old.images.get(path) != key for path, key in new.images.items()))
    if phase == "embed":
        fresh = set(new.images.values()) - set(old.images.values())
        return max(1, -(-len(fresh) // BATCH_SIZE))
    return PHASE_HITS[phase]


def run_trials(
    workdir: Path,
    model: str,
    pool: list[Path],
    captions: list[str],
    trials: int,
    *,
    seed: int = 0,
    phases: tuple[str, ...] = PHASES,
) -> Results:
    """Run the kill loop, cycling through `phases`; every inconsistency lands in `errors`."""
    rng = random.Random(seed)
    folder = Folder(workdir, pool, captions, rng)
    directory = workdir / "index"
    results = Results()
    started = time.perf_counter()
    run_index(folder, directory, model, workdir)
    clean_s = time.perf_counter() - started
    for trial in range(trials):
        phase = phases[trial % len(phases)]
        old = expected_state(folder.root, folder.texts)
        folder.change(results)
        new = expected_state(folder.root, folder.texts)
        if phase == "random":
            code = run_index(folder, directory, model, workdir, kill_after=rng.uniform(0, clean_s))
        else:
            fault = f"{phase}:{rng.randint(1, _hits(phase, old, new))}"
            code = run_index(folder, directory, model, workdir, fault=fault)
        results.trials += 1
        if code == 0:
            results.finished_before_kill += 1
        else:
            results.kills_by_phase[phase] += 1
        errors = len(results.errors)
        try:
            verify_after_kill(directory, old, new, results)
        except AssertionError as err:
            results.errors.append(f"trial {trial + 1} ({phase}) after the kill: {err}")
        started = time.perf_counter()
        try:
            run_index(folder, directory, model, workdir)
            verify_clean(directory, new, results)
        except AssertionError as err:
            results.errors.append(f"trial {trial + 1} ({phase}) next run: {err}")
        clean_s = time.perf_counter() - started
        outcome = "ok" if len(results.errors) == errors else "ERROR " + str(results.errors[-1])
        print(f"trial {trial + 1}/{trials}: {phase}: {'killed' if code else 'finished'}; "
              f"{outcome}", file=sys.stderr, flush=True)  # fmt: skip
    return results


def sample_pool(count: int) -> tuple[list[Path], list[str]]:
    """`count` sample JPEGs and all the sample captions."""
    import csv

    images = sorted(SAMPLE.glob("*.JPEG"))[:count]
    with open(SAMPLE.parent / "captions.csv", newline="") as handle:
        captions = [row["caption"] for row in csv.DictReader(handle)]
    return images, captions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=4 * len(PHASES))
    parser.add_argument("--images", type=int, default=60, help="sample JPEGs in the pool")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not SAMPLE.is_dir():
        sys.exit(f"the sample images are missing: {SAMPLE}")
    from benchmarks.make_model import write_random_model
    from tests.testdata import TINY_MODEL_CONFIG

    with tempfile.TemporaryDirectory(prefix="kill_loop.") as tmp:
        workdir = Path(tmp)
        model = "local-dir:" + str(write_random_model(workdir / "model", TINY_MODEL_CONFIG))
        pool, captions = sample_pool(args.images)
        started = time.perf_counter()
        results = run_trials(workdir, model, pool, captions, args.trials, seed=args.seed)
        elapsed = time.perf_counter() - started
    print(json.dumps({
        "trials": results.trials,
        "kills_by_phase": dict(results.kills_by_phase),
        "finished_before_kill": results.finished_before_kill,
        "state_after_kill": dict(results.after_kill),
        "folder_operations": dict(results.operations),
        "errors": results.errors,
        "images_lost": results.images_lost,
        "elapsed_s": round(elapsed, 1),
        "command": "python -m benchmarks.faults.kill_loop " + " ".join(sys.argv[1:]),
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
