"""Helpers every benchmark shares, defined once: recall against exact truth, percentiles,
resident memory, and the machine line a figure is recorded with. Standard library and numpy."""

from __future__ import annotations

import os
import platform
import resource
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from retrieval.index.tuning import per_query_recall, recall_at_k

__all__ = [
    "cpu_model",
    "peak_rss_mib",
    "per_query_recall",
    "percentile",
    "recall_at_k",
    "rss_mib",
]


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th quantile (0..1) of `values` by nearest rank (NaN when empty): the value a
    request at that rank saw, never an interpolation between two requests."""
    if not len(values):
        return float("nan")
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, int(q * len(ordered)))])


def rss_mib(pid: int | None = None) -> float:
    """Resident memory of process `pid` (this one by default) now, MiB (Linux /proc)."""
    status = Path(f"/proc/{pid or 'self'}/status")
    for line in status.read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mib(children: bool = False) -> float:
    """Peak resident memory of this process (or of its waited-for children), MiB."""
    who = resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF
    return resource.getrusage(who).ru_maxrss / 1024


def cpu_model() -> str:
    """The CPU's model name, for the machine column of RESULTS.md."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    except OSError:
        pass
    return platform.processor() or platform.machine()


def recall_of_sets(found: np.ndarray, truth: np.ndarray) -> float:
    """recall_at_k for result rows without -1 padding (kept for the callers' names)."""
    return recall_at_k(found, truth)
