"""Peak memory of `mmsearch serve` under concurrent maximum-size image uploads (issue 21, item
3), before and after the decode budget, in one run.

    python -m benchmarks.decode_memory [--concurrent 16] [--side 7000] [--baseline-ref main]

The upload is the probe's: a PNG of side x side pixels in one flat colour (7000 x 7000 = 49 Mpx,
~140 KB, under the 50 Mpx cap), in RGB, RGBA and 16-bit grey, the modes whose decoding costs most
per pixel. For each mode, `--concurrent` clients POST it to /search/image at once. "before" is
the server of `--baseline-ref` (a temporary git worktree of that commit), "after" this checkout
at its defaults; each configuration runs in a fresh server child, so the child's peak RSS
(VmHWM) is that burst's. Decode memory is the peak minus the RSS after one small warm-up query.
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
from PIL import Image

from retrieval.config import ServeConfig

from .livekit import environment, mmsearch, rss_mib, serve_child, write_images, write_model

REPO = Path(__file__).resolve().parents[1]
MODES = ("RGB", "RGBA", "I;16")


def flat_png(side: int, mode: str) -> bytes:
    """A side x side PNG of one colour in `mode` (compresses to ~side**2 / 350 bytes)."""
    colour = {"RGB": (10, 120, 200), "RGBA": (10, 120, 200, 128), "I;16": 30000}[mode]
    buffer = io.BytesIO()
    Image.new(mode, (side, side), colour).save(buffer, "PNG")
    return buffer.getvalue()


def peak_mib(pid: int) -> float:
    """Peak resident memory of process `pid` so far, MiB (Linux VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@contextmanager
def baseline_tree(ref: str) -> object:
    """A detached worktree of `ref` in a temporary folder, removed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="mmsearch-baseline-"))
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "-q", str(folder),
                    ref], check=True)  # fmt: skip
    try:
        yield folder
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(folder)],
                       check=False)  # fmt: skip


def burst(base: str, image: bytes, concurrent: int) -> tuple[float, dict[int, int]]:
    """`concurrent` simultaneous uploads of `image`: (wall seconds, count by status)."""

    def upload(_: int) -> int:
        files = {"file": ("max.png", image, "image/png")}
        try:
            return httpx.post(f"{base}/search/image", files=files, timeout=600).status_code
        except httpx.TransportError:
            return 0

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrent) as pool:
        statuses = list(pool.map(upload, range(concurrent)))
    counts = {status: statuses.count(status) for status in sorted(set(statuses))}
    return time.perf_counter() - started, counts


def measure(
    directory: Path, code: Path, image: bytes, concurrent: int, log: Path
) -> dict[str, object]:
    """One fresh server (the code at `code`), warmed with a small upload, then one burst."""
    port = 20000 + os.getpid() % 20000
    # -C: `python -c` puts the working directory first on sys.path, before PYTHONPATH.
    command = ["env", "-C", str(code), f"PYTHONPATH={code}", sys.executable, "-c",
               "from retrieval.cli import app; app()", "serve", "--index", str(directory),
               "--host", "127.0.0.1", "--port", str(port), "--device", "cpu",
               "--no-access-log"]  # fmt: skip
    small = io.BytesIO()
    Image.new("RGB", (64, 64)).save(small, "PNG")
    with serve_child(directory, port, (), log, command=command) as (base, process):
        pid = process.pid  # `env` execs python in its own process
        burst(base, small.getvalue(), 1)
        idle = rss_mib(pid)
        seconds, statuses = burst(base, image, concurrent)
        return {"idle": idle, "peak": peak_mib(pid), "seconds": seconds, "statuses": statuses}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrent", type=int, default=16)
    parser.add_argument("--side", type=int, default=7000)
    parser.add_argument("--baseline-ref", default="main")
    parser.add_argument("--modes", default=",".join(MODES))
    args = parser.parse_args()
    defaults = ServeConfig()
    with tempfile.TemporaryDirectory(prefix="decode-memory-") as tmp:
        work = Path(tmp)
        model = write_model(work / "model")
        photos = write_images(work / "photos", 8, seed=0)
        mmsearch("index", photos[0].parent, "--model", model, "--index", work / "index", "-q")
        log = work / "serve.log"
        rows = []
        with baseline_tree(args.baseline_ref) as before:
            for mode in args.modes.split(","):
                image = flat_png(args.side, mode)
                for label, code in (("before", before), ("after", REPO)):
                    result = measure(work / "index", code, image, args.concurrent, log)
                    rows.append((mode, label, len(image), result))
                    print(mode, label, result, file=sys.stderr, flush=True)
    megapixels = args.side**2 / 1e6
    print(f"\n{args.concurrent} concurrent POST /search/image of a {args.side}x{args.side} PNG "
          f"({megapixels:.0f} Mpx); after: --decode-budget-mpx "
          f"{defaults.decode_budget_megapixels:g}, --max-megapixels "
          f"{defaults.max_megapixels:g}\n")  # fmt: skip
    print("| mode | server | upload KB | idle RSS MiB | peak RSS MiB | decode MiB (peak - idle) "
          "| ratio | burst s | statuses |")  # fmt: skip
    print("|---|---|---:|---:|---:|---:|---:|---:|---|")
    baseline: dict[str, float] = {}
    for mode, label, size, result in rows:
        decode = float(result["peak"]) - float(result["idle"])  # type: ignore[arg-type]
        baseline.setdefault(mode, decode)
        statuses = ", ".join(f"{n}x {s or 'failed'}" for s, n in result["statuses"].items())  # type: ignore[attr-defined]
        print(f"| {mode} | {label} | {size / 1000:.0f} | {result['idle']:.0f} | "
              f"{result['peak']:.0f} | {decode:.0f} | {decode / baseline[mode]:.2f}x | "
              f"{result['seconds']:.1f} | {statuses} |")  # fmt: skip
    lines = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((line.split(":", 1)[1].strip() for line in lines if "model name" in line), "?")
    print("\n" + "\n".join([f"- cpu: {cpu}", *environment()]))
    ref = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", args.baseline_ref],
                         capture_output=True, text=True).stdout.strip()  # fmt: skip
    print(f"- before: {args.baseline_ref} = {ref}")
    print(f"- command: python -m benchmarks.decode_memory {' '.join(sys.argv[1:])}".rstrip())


if __name__ == "__main__":
    main()
