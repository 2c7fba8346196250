"""The writer lock belongs to the index run alone: a process it forks (a decode worker) never holds
it, and a `kill -9` of the run takes its decode workers with it, so the next `mmsearch index`
starts at once instead of exiting 75 while an orphaned worker lingers (issue 19, defect 8)."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import time
from multiprocessing.queues import Queue
from pathlib import Path

import pytest
from testdata import make_images

from retrieval.faults import FAULT_ENV
from retrieval.locks import exclusive_lock
from retrieval.storage.integrity import check_index

# Torch's own watchdog ends an orphaned worker at its next poll, up to 5 s later; a worker that
# dies with its parent is gone well within this.
WORKER_GRACE_S = 1.0


def _live_processes(run: str) -> list[int]:
    """Processes, zombies aside, started for `run` (forked workers share their parent's command
    line; /proc/PID/environ is not readable for every process in every sandbox)."""
    marker = f"mmsearch_test_run={run}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rpartition(")")[2].split()[0]
        except OSError:  # gone meanwhile
            continue
        if marker in argv and state not in ("Z", "X"):
            found.append(int(entry.name))
    return found


def _index_command(run: str, folder: Path, directory: Path, model: str) -> list[str]:
    """`python -m retrieval index` with `run` in its command line: `-X` takes any name=value."""
    return [
        sys.executable, "-X", f"mmsearch_test_run={run}", "-m", "retrieval", "index", str(folder),
        "--model", model, "--index", str(directory), "--workers", "2", "--batch-size", "2",
        "--decode", "cpu", "-q",
    ]  # fmt: skip


def _hold_lock_and_fork(lock: Path, children: Queue[int]) -> None:
    """Take the lock, fork a child that outlives this process, and wait to be killed."""
    with exclusive_lock(lock) as taken:
        assert taken
        child = multiprocessing.get_context("fork").Process(target=time.sleep, args=(60,))
        child.start()
        children.put(child.pid or 0)
        time.sleep(60)


def test_lock_is_free_once_its_holder_is_killed_though_its_forked_child_lives(
    tmp_path: Path,
) -> None:
    lock = tmp_path / ".lock"
    fork = multiprocessing.get_context("fork")
    children: Queue[int] = fork.Queue()
    holder = fork.Process(target=_hold_lock_and_fork, args=(lock, children))
    holder.start()
    child = children.get(timeout=60)
    try:
        with exclusive_lock(lock) as taken:
            assert not taken, "the lock must be refused while its holder runs"
        os.kill(holder.pid or 0, signal.SIGKILL)  # no unlock, no cleanup: as `kill -9`
        holder.join()
        assert Path(f"/proc/{child}").exists()
        with exclusive_lock(lock) as taken:
            assert taken, "the forked child kept the lock of its killed parent"
    finally:
        os.kill(child, signal.SIGKILL)


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="needs Linux /proc")
def test_kill_9_mid_embedding_leaves_no_worker_and_the_next_run_starts(
    tiny_model: str, tmp_path: Path
) -> None:
    folder = tmp_path / "photos"
    make_images(folder, 40)
    directory = tmp_path / "index"
    # The run SIGKILLs itself after committing its first batch of 20: that batch came from a
    # decode worker, and torch's workers end only when told by the run or by their watchdog, so
    # both were alive at the kill.
    # Output to a file, not a pipe: reading a pipe to its end would wait for the workers too.
    log = tmp_path / "killed.log"
    with open(log, "w") as output:
        killed = subprocess.Popen(
            _index_command("killed", folder, directory, tiny_model),
            env={**os.environ, FAULT_ENV: "embed:1"}, stdout=output, stderr=output,
        )  # fmt: skip
        returncode = killed.wait(timeout=300)
    died = time.monotonic()
    assert returncode == -signal.SIGKILL, log.read_text()

    # Immediately: a worker of the killed run holding the lock would make this exit 75.
    rerun = subprocess.Popen(
        _index_command("rerun", folder, directory, tiny_model),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    survivors = _live_processes("killed")
    while survivors and time.monotonic() < died + WORKER_GRACE_S:
        time.sleep(0.02)
        survivors = _live_processes("killed")
    _, stderr = rerun.communicate(timeout=300)
    assert survivors == [], f"workers of the killed run still alive: {survivors}"
    assert rerun.returncode == 0, stderr
    assert _live_processes("rerun") == []
    report = check_index(directory)
    assert report.ok and report.counts["images"] == 40, report.problems
