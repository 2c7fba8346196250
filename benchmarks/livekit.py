"""Shared by the live-server harnesses (fuzz_http, soak): a small random-weight model, a product
catalog of generated images, `mmsearch serve` as a child process on 127.0.0.1 and its RSS."""

from __future__ import annotations

import csv
import importlib.metadata
import os
import platform
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from .make_model import write_random_model
from .serve_load import TINY_512

CATEGORIES = ("shoes", "shirts", "hats", "bags")


def write_model(folder: Path) -> str:
    """The tiny 512-d model of serve_load (random weights) as a `local-dir:` spec."""
    if not (folder / "open_clip_model.safetensors").is_file():
        write_random_model(folder, TINY_512)
    return f"local-dir:{folder}"


def write_images(folder: Path, count: int, *, seed: int, start: int = 0) -> list[Path]:
    """`count` distinct noise PNGs named img_NNNNN.png from number `start` (deterministic)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for number in range(start, start + count):
        path = folder / f"img_{number:05d}.png"
        Image.fromarray(rng.integers(0, 256, size=(40, 48, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def write_catalog(folder: Path, count: int, *, skip: int = 0) -> Path:
    """Products `skip`..`count`-1 with two images each, a category, a price and a brand; the
    same number is always the same product with the same images."""
    images = write_images(folder / "img", count * 2, seed=3)
    path = folder / "products.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "title", "image", "category", "price", "brand"])
        for n in range(skip, count):
            category = CATEGORIES[n % len(CATEGORIES)]
            pair = f"img/{images[2 * n].name}|img/{images[2 * n + 1].name}"
            brand = "acme" if n % 2 else "zenith"
            writer.writerow([f"SKU-{n:04d}", f"{category} model {n}", pair, category,
                             f"{10 + n % 90}.5", brand])  # fmt: skip
    return path


def mmsearch(*args: object, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run `mmsearch ARGS` as a child process of this checkout's code."""
    command = [sys.executable, "-c", "from retrieval.cli import app; app()", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, check=check)


def environment() -> list[str]:
    """Machine, versions and git state, as RESULTS.md lines."""

    def version(name: str) -> str:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return "?"

    sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True)
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return [
        f"- machine: {os.cpu_count()} cores, {platform.system()} {platform.release()}, shared "
        f"with other jobs (load average at the end {load})",
        f"- python {platform.python_version()}, fastapi {version('fastapi')}, uvicorn "
        f"{version('uvicorn')}, schemathesis {version('schemathesis')}, hypothesis "
        f"{version('hypothesis')}",
        f"- git {sha.stdout.strip() or '?'}{' (uncommitted changes)' if dirty.stdout else ''}",
    ]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (the OS picks it)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_serve(
    directory: Path,
    *args: str,
    env: dict[str, str] | None = None,
    log: Path | None = None,
    timeout_s: float = 300,
    entry: tuple[str, ...] = ("-m", "retrieval"),
) -> tuple[subprocess.Popen[bytes], str]:
    """Start `mmsearch serve --index DIRECTORY ARGS` on a free 127.0.0.1 port in a child process
    (this checkout's code, `env` or this environment) and wait for /health; (process, base URL).
    The caller stops it (or kills it: the fault harnesses do). Output goes to `log`, or nowhere.
    `entry`: how the interpreter reaches the CLI (a test passes `-c` with an import hook).

    Raises:
        RuntimeError: the server exited, or did not answer within `timeout_s`.
    """
    port = free_port()
    environment = dict(env if env is not None else os.environ)
    environment["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    command = [sys.executable, *entry, "serve", "--index", str(directory),
               "--host", "127.0.0.1", "--port", str(port), "--no-access-log", *args]  # fmt: skip
    output = open(log, "ab") if log is not None else subprocess.DEVNULL  # noqa: SIM115
    try:
        process = subprocess.Popen(
            command, stdout=output, stderr=subprocess.STDOUT, env=environment
        )
    finally:
        if log is not None:
            output.close()  # type: ignore[union-attr]
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"serve exited with {process.returncode} while starting")
        try:
            if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                return process, base
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            process.kill()
            process.wait()
            raise RuntimeError(f"serve did not answer /health within {timeout_s:.0f} s")
        time.sleep(0.2)


@contextmanager
def serve_child(
    directory: Path,
    port: int,
    args: tuple[str, ...],
    log: Path,
    command: list[str] | None = None,
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`mmsearch serve` (or another server `command` that answers /health) on 127.0.0.1:PORT in
    a child process; yields (base URL, process) once /health answers (runner.py warms the model
    before binding, so it is ready then)."""
    command = command or [sys.executable, "-c", "from retrieval.cli import app; app()", "serve",
               "--index", str(directory), "--host", "127.0.0.1", "--port", str(port),
               "--device", "cpu", "--no-access-log", *args]  # fmt: skip
    with open(log, "ab") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            if process.poll() is not None:
                raise SystemExit(f"the server exited with {process.returncode}; see {log}")
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"the server is not up after 300 s; see {log}")
            time.sleep(0.2)
        yield base, process
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
