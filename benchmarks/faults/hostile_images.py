"""Peak memory of `mmsearch index` over the hostile image folder of the tests (the image zoo,
deep/unicode/newline/non-UTF-8 names, links out of the folder and at FIFOs and /dev/zero, a PNG
bomb over the pixel cap), with and without a decodable bomb just under the cap.

    python -m benchmarks.faults.hostile_images

Each configuration runs `python -m retrieval index` in a fresh child (decoding in-process,
--workers 0, so the child's peak RSS is the whole run's); the table gives its exit code, the
files skipped by reason, the seconds and the peak RSS, with the plain folder as the baseline.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# Just under the cap of retrieval/images.py (178,956,970 px): decoded, not refused.
UNDER_CAP_SIDE = 13_000
# Prints the peak RSS (KiB on Linux) of the command given as arguments, run as its child.
_MEASURE = (
    "import json, resource, subprocess, sys; "
    "run = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
    "print(json.dumps({'rc': run.returncode, 'stdout': run.stdout, "
    "'stderr': run.stderr[-3000:], "
    "'maxrss_kib': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))"
)


def measure(folder: Path, index: Path, model: str, workdir: Path) -> dict[str, object]:
    env = {
        **os.environ,
        "PYTHONPATH": f"{REPO}:{REPO / 'tests'}",
        "MMSEARCH_BACKEND": "torch",
        "MMSEARCH_DEVICE": "cpu",
        "MMSEARCH_HASH_CACHE": str(workdir / "hashes.json"),
    }
    command = [sys.executable, "-m", "retrieval", "index", str(folder), "--index", str(index),
               "--model", model, "-q", "--json", "--workers", "0"]  # fmt: skip
    started = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", _MEASURE, *command], env=env, capture_output=True, text=True,
        check=True, timeout=1800,
    )  # fmt: skip
    result = json.loads(out.stdout)
    report = json.loads(result["stdout"]) if result["rc"] == 0 else {}
    reasons: dict[str, int] = {}
    for skip in report.get("skipped", []):
        reasons[skip["reason"]] = reasons.get(skip["reason"], 0) + 1
    return {
        "rc": result["rc"],
        "indexed": report.get("indexed"),
        "skipped": dict(sorted(reasons.items())),
        "seconds": round(time.perf_counter() - started, 1),
        "peak_rss_mib": round(result["maxrss_kib"] / 1024, 1),
        "stderr": result["stderr"][-300:] if result["rc"] else "",
    }


def main() -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    sys.path[:0] = [str(REPO), str(REPO / "tests")]
    from hostilefolder import make_hostile_folder, png_bomb
    from testdata import make_images, write_tiny_model

    rows = {}
    with tempfile.TemporaryDirectory(prefix="hostile.") as tmp:
        workdir = Path(tmp)
        model = "local-dir:" + str(write_tiny_model(workdir / "model"))
        plain = workdir / "plain"
        make_images(plain, 30)
        rows["plain: 30 PNGs (baseline)"] = measure(plain, workdir / "i0", model, workdir)
        hostile = workdir / "hostile"
        expected = make_hostile_folder(hostile, workdir / "outside")
        make_images(hostile / "plain", 30)
        rows[f"hostile: 30 PNGs + {len(expected)} hostile entries, 182 Mpx bomb"] = measure(
            hostile, workdir / "i1", model, workdir
        )
        png_bomb(hostile / "bomb_under_cap.png", UNDER_CAP_SIDE, UNDER_CAP_SIDE)
        side = f"{UNDER_CAP_SIDE}x{UNDER_CAP_SIDE}"
        rows[f"hostile + decodable {side} PNG bomb"] = measure(
            hostile, workdir / "i2", model, workdir
        )
    base = rows["plain: 30 PNGs (baseline)"]["peak_rss_mib"]
    print(f"{'folder':<62} {'rc':>3} {'indexed':>7} {'s':>6} {'peak RSS MiB':>12} {'x base':>7}")
    for name, row in rows.items():
        ratio = float(row["peak_rss_mib"]) / float(base)  # type: ignore[arg-type]
        print(f"{name:<62} {row['rc']:>3} {row['indexed']!s:>7} {row['seconds']:>6} "
              f"{row['peak_rss_mib']:>12} {ratio:>7.2f}")  # fmt: skip
        print(f"    skipped: {row['skipped']} {row['stderr']}")
    print("command: python -m benchmarks.faults.hostile_images")


if __name__ == "__main__":
    main()
