"""Long run of the sync model-based test (issue 19): many seeded examples of the state machine in
tests/syncmodel.py, plus what is too slow or too privileged for CI.

    python -m benchmarks.faults.sync_fuzz --seed 1 --runs 500
    python -m benchmarks.faults.sync_fuzz --seed 7 --runs 40 --kill-rate 0.5 --minutes 5

Each run is one example of the state machine (random folder changes, `index` with the root
spelled at random, the index compared with the oracle after every run), and here also:
  * every index run, check and query runs as the unprivileged user `nobody` (this process drops
    its effective uid around them when it runs as root; a killed run is a child process started
    as nobody), and a rule makes files and folders unreadable (chmod 000) or readable again,
    so the oracle's rule 7 (an unreadable folder keeps its items) is exercised;
  * some index runs are killed with SIGKILL, after a random delay or at a phase aimed with
    MMSEARCH_FAULT, and resumed at once: the resumed run must converge to the oracle;
  * a query loop in another process (as nobody) queries the current run's index all along:
    every query must succeed and return no path twice.
Prints the runs (state machines, replays while shrinking included), operations, index runs,
kills, queries and failures, the time, the environment and this command; a failing sequence is
shrunk by Hypothesis and printed with the steps that led to it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import pwd
import random
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))

from hypothesis import HealthCheck, seed, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.internal.conjecture import engine as conjecture_engine  # noqa: E402
from hypothesis.stateful import rule, run_state_machine_as_test  # noqa: E402
from syncmodel import SPELLINGS, SyncMachine, run_in  # noqa: E402
from synctree import Dir, File, image_bytes  # noqa: E402

from benchmarks.harness import cpu_model  # noqa: E402
from retrieval.faults import FAULT_ENV, PHASES  # noqa: E402

NOBODY = pwd.getpwnam("nobody")
AS_ROOT = os.geteuid() == 0
BATCH = 10  # examples per Hypothesis call: a failure is shrunk, then the next batch goes on
QUERY_K = 1000  # more than any run's items, so a query returns them all


@contextlib.contextmanager
def as_nobody() -> Iterator[None]:
    """Run the body with the effective uid and gid of `nobody` (no-op unless root)."""
    if not AS_ROOT:
        yield
        return
    groups = os.getgroups()
    os.setgroups([NOBODY.pw_gid])
    os.setegid(NOBODY.pw_gid)
    os.seteuid(NOBODY.pw_uid)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)
        os.setgroups(groups)


class NobodyPython:
    """A python that `nobody` can run, with this one's packages. Root's interpreter often lives
    where nobody cannot reach it (pyenv under a 0700 /root): then its standard library is linked
    (hard links, no copy on the same disk) under `folder`, beside a venv whose site-packages is
    this venv's."""

    def __init__(self, folder: Path) -> None:
        self.executable, self.env = sys.executable, {}
        if not AS_ROOT:
            return
        base, lib = Path(sys.base_prefix), f"python{sys.version_info[0]}.{sys.version_info[1]}"
        home, venv = folder / "python", folder / "venv"
        link = _hard_link_or_copy
        (home / "bin").mkdir(parents=True)
        link(os.path.realpath(sys.executable), home / "bin" / lib)
        for shared in (base / "lib").glob("libpython*"):
            if shared.is_file():
                link(shared, home / "lib" / shared.name)
        ignore = shutil.ignore_patterns("site-packages", "__pycache__", "test", "idlelib")
        shutil.copytree(base / "lib" / lib, home / "lib" / lib, copy_function=link, ignore=ignore)
        (venv / "bin").mkdir(parents=True)
        (venv / "bin" / lib).symlink_to(home / "bin" / lib)
        (venv / "lib" / lib).mkdir(parents=True)
        (venv / "lib" / lib / "site-packages").symlink_to(sysconfig.get_paths()["purelib"])
        (venv / "pyvenv.cfg").write_text(f"home = {home / 'bin'}\n")
        self.executable = str(venv / "bin" / lib)
        self.env = {"LD_LIBRARY_PATH": str(home / "lib")}  # its RUNPATH names root's copy
        # The links share root's files and modes (world-readable): never chmod them.

    def popen(self, args: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        """Start `python ARGS` as nobody (the subprocess module's user/group arguments: the
        fork-safe form of a preexec_fn calling setgid/setuid)."""
        if AS_ROOT:
            kwargs |= {"user": NOBODY.pw_uid, "group": NOBODY.pw_gid, "extra_groups": []}
        env = {**kwargs.pop("env", os.environ), **self.env}
        return subprocess.Popen([self.executable, *args], env=env, **kwargs)


def _hard_link_or_copy(source: str | Path, target: str | Path) -> None:
    Path(target).parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


class QueryLoop:
    """`mmsearch query` over and over in another process, on the index the parent names in a
    control file; failures and duplicate paths are logged there. pause() returns once no query
    is running, so the parent may delete the index."""

    def __init__(self, folder: Path, python: NobodyPython) -> None:
        self.folder = folder
        self.seq = 0
        self.write("ctl", "0\t")
        command = ["-m", "benchmarks.faults.sync_fuzz", "--query-loop", str(folder)]
        self.process = python.popen(command, cwd=REPO, stdout=subprocess.DEVNULL)

    def write(self, name: str, text: str) -> None:
        (self.folder / f".{name}").write_text(text)
        os.replace(self.folder / f".{name}", self.folder / name)

    def watch(self, index_dir: str) -> None:
        self.seq += 1
        self.write("ctl", f"{self.seq}\t{index_dir}")

    def pause(self) -> None:
        self.seq += 1
        self.write("ctl", f"{self.seq}\t")
        while _read_int(self.folder / "ack") < self.seq:
            if self.process.poll() is not None:
                raise RuntimeError(f"the query loop exited {self.process.returncode}")
            time.sleep(0.02)

    def stop(self) -> tuple[int, list[dict[str, Any]]]:
        """Stop the loop: (queries run, failures)."""
        (self.folder / "stop").touch()
        self.process.wait(timeout=120)
        log = self.folder / "failures.jsonl"
        failures = (
            [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
        )
        return _read_int(self.folder / "count"), failures


def query_loop(folder: Path) -> None:
    """The query process (run as nobody): query the index named in `ctl` until `stop` exists."""
    count = 0
    while not (folder / "stop").exists():
        seq, _, index_dir = (folder / "ctl").read_text().partition("\t")
        if index_dir:
            args = ["query", "photo", "--index", index_dir, "--json", "-k", QUERY_K]
            code, out = run_in(str(folder), args)
            count += 1
            failure = _query_failure(code, out)
            if failure:
                with open(folder / "failures.jsonl", "a") as log:
                    log.write(json.dumps({"index": index_dir, "failure": failure}) + "\n")
        else:
            time.sleep(0.02)
        for name, value in (("count", count), ("ack", seq)):
            (folder / f".{name}").write_text(str(value))
            os.replace(folder / f".{name}", folder / name)


def _query_failure(code: int, out: str) -> str | None:
    if code != 0:
        return f"exit {code}: {out[-2000:]}"
    paths = [hit["path"] for hit in json.loads(out)["results"]]
    repeated = sorted({p for p in paths if paths.count(p) > 1})
    return f"duplicate paths: {repeated}" if repeated else None


def _read_int(path: Path) -> int:
    try:
        return int(path.read_text() or 0)
    except (OSError, ValueError):
        return 0


class FuzzMachine(SyncMachine):
    """The CI machine, run as nobody, with unreadable files, kills and concurrent queries."""

    kill_rate: ClassVar[float] = 0.3
    run_seconds: ClassVar[float] = 5.0  # how long a child index run takes, to aim kills
    queries: ClassVar[QueryLoop | None] = None
    python: ClassVar[NobodyPython]
    deadline: ClassVar[float] = float("inf")  # time.monotonic() after which no batch starts
    index_runs: ClassVar[int] = 0
    kills: ClassVar[int] = 0

    def __init__(self) -> None:
        super().__init__()
        os.mkdir(self.index_dir)
        if AS_ROOT:
            os.chown(self.index_dir, NOBODY.pw_uid, NOBODY.pw_gid)
        self.kill: float | str | None = None
        self.watched = False

    def teardown(self) -> None:
        if self.queries and self.watched:
            self.queries.pause()
        super().teardown()

    def as_indexer(self) -> contextlib.AbstractContextManager[None]:
        return as_nobody()

    @rule(data=st.data(), readable=st.booleans())
    def chmod(self, data: st.DataObject, readable: bool) -> None:
        paths = self.under(self.root, (Dir, File))[1:] + self.under(self.outside, (Dir, File))[1:]
        path = self.pick(data, paths)
        if path:
            self.note(f"chmod {'644/755' if readable else '000'} {self.show(path)}")
            self.tree.set_readable(path, readable)

    @rule(
        spelling=st.sampled_from(sorted(SPELLINGS)),
        texts=st.booleans(),
        phase=st.one_of(st.none(), st.sampled_from(PHASES)),
        chance=st.randoms(use_true_random=False),
    )
    def index_killed(
        self, spelling: str, texts: bool, phase: str | None, chance: random.Random
    ) -> None:
        """An index run killed (at a phase, or at a random fraction of a run's time) and
        resumed; or, beyond the kill rate, a plain run. The fraction and the rate are drawn
        uniformly (Hypothesis's own floats favour 0.0 and 1.0)."""
        if chance.random() < self.kill_rate:
            self.kill = phase or chance.random()
        try:
            self.sync(spelling, [b""], texts)
        finally:
            self.kill = None

    def run_index(self, args: list[str], cwd: str) -> tuple[int, str]:
        type(self).index_runs += 1
        if self.kill is not None:
            self.run_killed(args, cwd, self.kill)
        code, out = super().run_index(args, cwd)
        if code == 0 and self.queries and not self.watched:
            self.queries.watch(self.index_dir)
            self.watched = True
        return code, out

    def run_killed(self, args: list[str], cwd: str, moment: float | str) -> None:
        """A child `index` run killed with SIGKILL after a delay or at a phase."""
        type(self).kills += 1
        env = dict(os.environ)
        if isinstance(moment, str):
            env[FAULT_ENV] = f"{moment}:1"
        errors = os.fsdecode(self.base) + "/killed.err"
        with open(errors, "wb") as stderr:
            child = self.python.popen(
                ["-m", "retrieval", *args],
                cwd=cwd,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        delay = moment * self.run_seconds if isinstance(moment, float) else None
        try:
            code = child.wait(timeout=delay if delay is not None else 300)
        except subprocess.TimeoutExpired:
            child.kill()  # kill -9 of the run's own process; its workers are left to the code
            code = child.wait()
        how = f"{moment:.2f} of a run" if isinstance(moment, float) else f"phase {moment}"
        self.log.append(f"  (killed at {how}: exit {code}; resumed)")
        message = Path(errors).read_text(errors="replace")[-3000:]
        self.expect(code in (0, -9), f"the run to kill exited {code} by itself:\n{message}")


def calibrate(model: str, work: Path, python: NobodyPython) -> float:
    """Warm this process up, then time one child `index` run (kills are aimed inside it)."""
    folder, texts, index = work / "calibrate", work / "calibrate.txt", work / "calibrate-index"
    folder.mkdir()
    texts.write_text("red car\n")
    for number in range(2):
        (folder / f"{number}.png").write_bytes(image_bytes(number))
    # In-process runs as nobody must import nothing new: root's python may be unreadable to
    # nobody (see NobodyPython). One run of each command as root imports what they need.
    index_args = ["--model", model, "--index", index, "--quiet", "--workers", "0"]
    for args in (
        ["index", folder, "--texts", texts, *index_args],
        ["check", "--index", index, "--json"],
        ["query", "--like", "1", "--index", index, "--json"],
        ["query", "--like", "3", "--target", "texts", "--index", index, "--json"],
    ):
        code, out = run_in(str(work), args)
        if code != 0:
            raise RuntimeError(f"warm-up {args[0]} exited {code}: {out}")
    started = time.monotonic()
    index_args[3] = work / "home" / "calibrate-index"  # a folder nobody may write in
    command = ["-m", "retrieval", "index", str(folder), *map(str, index_args)]
    child = python.popen(command, cwd=work, stdout=subprocess.DEVNULL)
    if child.wait() != 0:
        raise RuntimeError(f"a child index run as nobody exited {child.returncode}")
    return time.monotonic() - started


def run_batches(args: argparse.Namespace) -> list[str]:
    """Run the examples in batches of BATCH seeded examples; the failures' reports."""
    failures: list[str] = []
    config = settings(
        max_examples=BATCH,
        stateful_step_count=args.steps,
        deadline=None,
        database=None,
        report_multiple_bugs=True,
        suppress_health_check=list(HealthCheck),
    )
    batch = 0
    while FuzzMachine.runs < args.runs and time.monotonic() < FuzzMachine.deadline:
        factory = seed(args.seed * 100_000 + batch)(lambda: FuzzMachine())
        batch += 1
        try:
            run_state_machine_as_test(factory, settings=config)
        except BaseException as err:  # noqa: BLE001 (every failure is reported, then we go on)
            if isinstance(err, KeyboardInterrupt):
                raise
            group = list(getattr(err, "exceptions", [err]))  # an ExceptionGroup, or one
            for failure in group:
                notes = "\n".join(getattr(failure, "__notes__", []))
                failures.append(f"{type(failure).__name__}: {failure}\n{notes}")
                print(f"FAILURE {len(failures)} (batch {batch}):\n{failures[-1]}\n", flush=True)
    return failures


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--runs", type=int, default=500, help="state machine runs")
    parser.add_argument("--steps", type=int, default=10, help="steps per run")
    parser.add_argument(
        "--minutes", type=float, default=None, help="start no batch of runs after this"
    )
    parser.add_argument("--kill-rate", type=float, default=0.3, help="of index_killed steps")
    parser.add_argument(
        "--shrink-seconds", type=int, default=120, help="time to shrink each failing run"
    )
    parser.add_argument("--query-loop", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    # Hypothesis shrinks a failure for up to 5 minutes; runs with kills are slow to replay.
    if hasattr(conjecture_engine, "MAX_SHRINKING_SECONDS"):
        conjecture_engine.MAX_SHRINKING_SECONDS = args.shrink_seconds
    os.environ.update(MMSEARCH_BACKEND="torch", MMSEARCH_DEVICE="cpu", HF_HUB_OFFLINE="1")
    if args.query_loop:
        query_loop(args.query_loop)
        return
    work = Path(os.path.realpath(tempfile.mkdtemp(prefix="sync-fuzz-")))
    try:
        report(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def report(args: argparse.Namespace, work: Path) -> None:
    from testdata import write_tiny_model

    for name in ("home", "queries"):
        (work / name).mkdir(mode=0o777)
        os.chmod(work / name, 0o777)
    os.chmod(work, 0o755)
    os.environ.update(HOME=str(work / "home"), MMSEARCH_HASH_CACHE=str(work / "home/hashes.json"))
    # Child processes import this checkout's retrieval and benchmarks, whatever their cwd.
    os.environ["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(REPO), os.environ.get("PYTHONPATH")])
    )
    model_dir = write_tiny_model(work / "model")
    for path in [model_dir, *model_dir.rglob("*")]:
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
    FuzzMachine.model = f"local-dir:{model_dir}"
    FuzzMachine.kill_rate = args.kill_rate
    FuzzMachine.python = NobodyPython(work / "nobody-python")
    FuzzMachine.run_seconds = calibrate(FuzzMachine.model, work, FuzzMachine.python)
    started = time.monotonic()
    if args.minutes is not None:
        FuzzMachine.deadline = started + 60 * args.minutes
    FuzzMachine.queries = QueryLoop(work / "queries", FuzzMachine.python)
    try:
        failures = run_batches(args)
    finally:
        queries, query_failures = FuzzMachine.queries.stop()
    elapsed = time.monotonic() - started
    for failure in query_failures[:5]:
        print(f"QUERY FAILURE: {failure}")
    print(
        f"runs {FuzzMachine.runs}, operations {FuzzMachine.ops}, index runs "
        f"{FuzzMachine.index_runs}, kills {FuzzMachine.kills}, queries {queries}; failures "
        f"{len(failures)} (shrunk sequences above), query failures {len(query_failures)}; "
        f"{elapsed:.0f} s"
    )
    print(f"environment: {environment()}")
    print("command: python -m benchmarks.faults.sync_fuzz " + " ".join(sys.argv[1:]))


def environment() -> str:
    sha = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    user = "nobody (from root)" if AS_ROOT else pwd.getpwuid(os.geteuid()).pw_name
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    return f"{cpu_model()}, load {load}, python {platform.python_version()}, git {sha}, as {user}"


if __name__ == "__main__":
    main()
