"""Running `mmsearch` from tests: in-process through Typer's CliRunner (fast, same process), or
as a real subprocess (`python -m retrieval`, for exit codes, signals and the console script)."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from typer.testing import CliRunner, Result

from retrieval.cli import app

runner = CliRunner()


def invoke(*args: object) -> Result:
    """Run `mmsearch ARGS...` in-process; the Result whatever the exit code."""
    return runner.invoke(app, [str(arg) for arg in args])


def run_ok(*args: object) -> str:
    """Run `mmsearch ARGS...` in-process; its stdout, or fail the test with its output."""
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    return result.stdout


def json_lines(*args: object) -> list[dict[str, Any]]:
    """Run a command that prints JSON lines (`index --json`, `query --json`); each line parsed."""
    return [json.loads(line) for line in run_ok(*args).strip().splitlines()]


def run_subprocess(
    *args: object, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """Run `python -m retrieval ARGS...` as a child process (text output, never raises)."""
    return subprocess.run(
        [sys.executable, "-m", "retrieval", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )
