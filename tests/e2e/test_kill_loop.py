"""The short kill loop of the default suite: SIGKILL `mmsearch index` while it writes the next
generation's faiss files and just after its COMMIT, on real images that change between trials
(the full loop, 36 trials over every phase: `python -m benchmarks.faults.kill_loop`)."""

from __future__ import annotations

from pathlib import Path

from testdata import shared_images_or_skip

from benchmarks.faults.kill_loop import run_trials, sample_pool


def test_killed_index_runs_leave_one_consistent_generation(tiny_model: str, tmp_path: Path) -> None:
    shared_images_or_skip(1)
    pool, captions = sample_pool(16)
    results = run_trials(
        tmp_path / "loop", tiny_model, pool, captions, 2, seed=1, phases=("faiss", "committed")
    )
    assert results.errors == []
    assert results.kills_by_phase == {"faiss": 1, "committed": 1}
    # A kill while writing faiss files leaves the old generation; one after COMMIT the new one.
    assert results.after_kill == {"old": 1, "new": 1}
    assert results.images_lost == 0
