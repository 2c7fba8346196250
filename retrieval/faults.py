"""Named points inside an index run where the reliability harnesses inject a crash.

`MMSEARCH_FAULT=PHASE[:N]` makes the process SIGKILL itself the Nth time (default 1st) it reaches
PHASE, exactly as `kill -9` from outside would at that moment, so benchmarks/faults/kill_loop.py
aims at every phase of a run (walk, hash, embed, texts, faiss, commit, cleanup) instead of
hoping a random timer lands there. Unset (always, outside the harnesses) `reached` is one dict
lookup. Standard library only: images.py and ingest.py call it."""

from __future__ import annotations

import os
import signal

FAULT_ENV = "MMSEARCH_FAULT"
PHASES: tuple[str, ...] = (
    "walk",  # a directory entered while listing the folders
    "hash",  # a changed file about to be hashed
    "embed",  # an embedded batch just committed to the vector cache
    "texts",  # a chunk of texts just committed to the vector cache
    "faiss",  # a collection's next-generation faiss file just written (or about to be)
    "commit",  # items and generation written, the SQLite COMMIT not yet done
    "committed",  # COMMIT done, old generation's files not yet deleted
    "cleanup",  # between deletions of stray files
)
_counts: dict[str, int] = {}


def _target() -> tuple[str, int] | None:
    # Read here, not at the front ends (cli/environment.py): a test hook that the fault harnesses
    # set in a child's environment to kill it at a phase deep inside a run; no user setting.
    spec = os.environ.get(FAULT_ENV, "")
    if not spec:
        return None
    phase, _, nth = spec.partition(":")
    return phase, int(nth) if nth.isdigit() else 1


def reached(phase: str) -> None:
    """Mark that the run reached `phase`; SIGKILL this process if MMSEARCH_FAULT aims here."""
    target = _target()
    if target is None or target[0] != phase:
        return
    _counts[phase] = _counts.get(phase, 0) + 1
    if _counts[phase] >= target[1]:
        os.kill(os.getpid(), signal.SIGKILL)
