"""The short product crash loop of the default suite: SIGKILL `mmsearch serve` while a client
sends bulk upserts and deletes, aimed at a change-log append or compaction (`faiss`), before
the COMMIT and after it (the full loop, 30 trials with random kills too:
`python -m benchmarks.faults.product_kill --trials 30`)."""

from __future__ import annotations

from pathlib import Path

from benchmarks.faults.product_kill import run_trials


def test_killed_product_writes_lose_nothing_acknowledged(tiny_model: str, tmp_path: Path) -> None:
    results = run_trials(tmp_path / "loop", tiny_model, 3, seed=2)
    assert results.errors == []
    assert results.trials == 3
    assert results.acknowledged > 0
