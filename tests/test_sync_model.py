"""Model-based test of `mmsearch index` re-runs (issue 19): random folder changes, the root spelled
at random, the index compared with an oracle after every run (tests/syncmodel.py). The long run,
with kills, concurrent queries and unreadable files, is `python -m benchmarks.sync_fuzz`."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import run_state_machine_as_test
from syncmodel import SyncMachine

# derandomize: CI runs the same examples every time; a failure found by the benchmark's seeds
# becomes an example test instead.
CI_SETTINGS = settings(
    max_examples=20,
    stateful_step_count=10,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@pytest.mark.slow
def test_index_reruns_match_the_oracle(tiny_model: str) -> None:
    class Machine(SyncMachine):
        model = tiny_model

    run_state_machine_as_test(Machine, settings=CI_SETTINGS)
