"""Load test of `mmsearch serve`: text search requests/s and p50/p99 latency at concurrency 1, 16
and 64, against a hand-rolled reference server (benchmarks/reference_server.py: open_clip torch
fp32 eager, queries padded to the context length, faiss IndexFlatIP, FastAPI), the unbatched
baseline, each runtime (`--backend torch`, the default exported runtime) and mmsearch's
micro-batching with the query cache off and on, over an index of synthetic vectors.

    python -m benchmarks.serve_load                      # 10k vectors, tiny model (~3 min)
    python -m benchmarks.serve_load --vectors 1000000    # 1M vectors (IVF1024,Flat)
    python -m benchmarks.serve_load --arch ViT-B-32      # real text tower (random weights)
    python -m benchmarks.serve_load --arch ViT-B-32 --concurrency 1   # the warm-query target

The index holds N random unit vectors as image items, written through the catalog and store
APIs; the model is real (a tiny open_clip model by default, random weights) so each text query
runs the tokenizer and text tower. The server runs as a separate process on 127.0.0.1 and is
driven from this process by an asyncio httpx loop; on a small machine both share its cores.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import itertools
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

CONCURRENCIES = (1, 16, 64)
# One synthetic chunk of vectors and items per transaction: bounded memory at 1M x 512.
CHUNK = 50_000
# The tiny test model's towers with CLIP ViT-B's 512-d output, so index vectors and search cost
# per vector match a real deployment while a text query stays cheap on a small CPU.
TINY_512 = {
    "model_cfg": {
        "embed_dim": 512,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32,
                       "patch_size": 8},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2,
                     "layers": 2},
    },
    "preprocess_cfg": {},
}  # fmt: skip
REPEATED_TEXTS = 32  # distinct texts in the "repeated" workload: all fit in the cache
WORDS = ("red", "blue", "leather", "summer", "running", "wool", "vintage", "striped")
ITEMS = ("shoes", "hat", "jacket", "bag", "dress", "watch", "scarf", "boots")


@dataclass(frozen=True)
class Setup:
    """One server configuration and the query texts it is driven with."""

    name: str
    server_args: tuple[str, ...]
    repeated: bool
    reference: bool = False  # benchmarks/reference_server.py instead of mmsearch serve


REFERENCE = "reference: open_clip torch eager, padded, + faiss Flat (FastAPI)"
DEFAULT_RUNTIME = "mmsearch (default runtime): batching + cache, distinct texts"
SETUPS = (
    Setup(REFERENCE, (), repeated=False, reference=True),
    Setup("baseline: one pass per query, no cache", ("--max-batch", "1", "--cache-size", "0"),
          repeated=False),
    Setup("mmsearch --backend torch: batching + cache, distinct texts", ("--backend", "torch"),
          repeated=False),
    Setup("mmsearch (default runtime): batching, cache off", ("--cache-size", "0"),
          repeated=False),
    Setup(DEFAULT_RUNTIME, (), repeated=False),
    Setup("mmsearch (default runtime): batching + cache, repeated texts", (), repeated=True),
)  # fmt: skip


@dataclass
class Result:
    """What one (setup, concurrency) run measured."""

    setup: str
    concurrency: int
    requests: int = 0
    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    batch_mean: float | None = None  # texts per forward pass; None when no pass ran

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")


# -- index ----------------------------------------------------------------------------------------
def write_model(folder: Path, arch: str) -> str:
    """A random-weight open_clip model as a local-dir folder; the --model string for it."""
    from benchmarks.make_model import write_random_model

    if not (folder / "open_clip_config.json").is_file():
        write_random_model(folder, TINY_512 if arch == "tiny" else arch, seed=0)
    return f"local-dir:{folder.absolute()}"


def build_index(directory: Path, model: str, count: int, index_type: str) -> None:
    """`count` random unit vectors as image items of a new index built for `model`."""
    from retrieval.cli.environment import read_settings
    from retrieval.compose import load_embedder
    from retrieval.ingest.indexer import Indexer
    from retrieval.storage.store import IndexStore
    from retrieval.types import IMAGES, ModelSpec

    config = read_settings().embed_config(device="cpu")
    identity = load_embedder(ModelSpec(model, None), config).identity
    store = IndexStore.create(directory, identity)
    rng = np.random.default_rng(0)
    try:
        indexer = Indexer(store, index_types={IMAGES: index_type})
        with indexer, indexer.change() as changes:
            for start in range(0, count, CHUNK):
                size = min(CHUNK, count - start)
                vectors = rng.standard_normal((size, identity.dim), dtype=np.float32)
                vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
                keys = [f"synthetic:{start + row}" for row in range(size)]
                store.catalog.put_vectors(keys, vectors)
                for row, key in enumerate(keys):
                    path = f"/synthetic/{start + row:07d}.jpg"
                    changes.add(IMAGES, key, path=path)
    finally:
        store.close()


def index_complete(directory: Path, count: int) -> bool:
    """Whether `directory` holds a finished build of `count` vectors (reused across runs)."""
    from retrieval.storage.store import IndexStore
    from retrieval.types import IMAGES

    if not IndexStore.exists(directory):
        return False
    store = IndexStore.open(directory, readonly=True)
    try:
        return store.catalog.generation > 0 and store.catalog.count(IMAGES) == count
    finally:
        store.close()


# -- server ---------------------------------------------------------------------------------------
# -- load -----------------------------------------------------------------------------------------
async def drive(
    base: str, concurrency: int, next_text: Callable[[], str], seconds: float, cap: int
) -> Result:
    """`concurrency` clients sending GET /search back to back for `seconds` (or `cap` calls)."""
    result = Result("", concurrency)
    # One single-connection client per worker: a shared httpx pool scans its connections under
    # a lock on every request, which at 64 connections cost the client 4x the CPU per request
    # and, on a small machine, starved the server it was measuring.
    clients = [
        httpx.AsyncClient(base_url=base, timeout=30, limits=httpx.Limits(max_connections=1))
        for _ in range(concurrency)
    ]
    stats_before = await server_stats(clients[0])
    deadline = time.perf_counter() + seconds
    started = time.perf_counter()

    async def worker(client: httpx.AsyncClient) -> None:
        while time.perf_counter() < deadline and result.requests < cap:
            result.requests += 1
            sent = time.perf_counter()
            try:
                response = await client.get("/search", params={"q": next_text(), "k": 10})
                status = str(response.status_code)
            except httpx.HTTPError as err:
                status = type(err).__name__
            result.latencies_ms.append((time.perf_counter() - sent) * 1000)
            if status != "200":
                result.errors[status] = result.errors.get(status, 0) + 1

    await asyncio.gather(*(worker(client) for client in clients))
    result.seconds = time.perf_counter() - started
    stats_after = await server_stats(clients[0])
    for client in clients:
        await client.aclose()
    if stats_before and stats_after:
        batches = stats_after["text_batches"] - stats_before["text_batches"]
        texts = stats_after["texts_embedded"] - stats_before["texts_embedded"]
        result.batch_mean = texts / batches if batches else None
    else:  # the reference server: one pass per request
        result.batch_mean = 1.0
    return result


async def server_stats(client: httpx.AsyncClient) -> dict | None:
    """mmsearch serve's batching counters; None for a server without /stats."""
    response = await client.get("/stats")
    return response.json()["server"] if response.status_code == 200 else None


def text_source(repeated: bool, counter: Iterator[int]) -> Callable[[], str]:
    """Query texts: a small fixed set (cache hits once warm) or never the same text twice."""
    pool = [f"{w} {i}" for w, i in itertools.product(WORDS, ITEMS)][:REPEATED_TEXTS]
    if repeated:
        cycle = itertools.cycle(pool)
        return lambda: next(cycle)
    return lambda: f"{WORDS[(n := next(counter)) % 8]} {ITEMS[n // 8 % 8]} number {n}"


def reference_command(directory: Path, model: str, port: int) -> list[str]:
    return [sys.executable, "-m", "benchmarks.reference_server", "--index", str(directory),
            "--model", model, "--port", str(port)]  # fmt: skip


def run_setups(directory: Path, model: str, args: argparse.Namespace, log: Path) -> list[Result]:
    results: list[Result] = []
    from benchmarks.livekit import serve_child  # livekit imports this module

    counter = itertools.count()
    port = args.port
    servers: dict[tuple[bool, tuple[str, ...]], list[Setup]] = {}
    for setup in SETUPS:
        servers.setdefault((setup.reference, setup.server_args), []).append(setup)
    for (reference, server_args), setups in servers.items():
        command = reference_command(directory, model, port) if reference else None
        with serve_child(directory, port, server_args, log, command) as (base, _):
            for setup in setups:
                next_text = text_source(setup.repeated, counter)
                # Warm-up: thread pools and connections; for repeated texts, every one of them
                # into the cache, however long that takes with a slow model.
                warm_s = 120.0 if setup.repeated else 1.0
                asyncio.run(drive(base, 4, next_text, warm_s, REPEATED_TEXTS))
                for concurrency in args.concurrency:
                    result = asyncio.run(
                        drive(base, concurrency, next_text, args.seconds, args.max_requests)
                    )
                    result.setup = setup.name
                    results.append(result)
                    print(f"  {row(result, None)}", file=sys.stderr, flush=True)
    return results


# -- report ---------------------------------------------------------------------------------------
def row(result: Result, baseline: Result | None) -> str:
    errors = ", ".join(f"{k}: {v}" for k, v in sorted(result.errors.items())) or "0"
    ratio = f"{result.rps / baseline.rps:.2f}x" if baseline and baseline.rps else "-"
    faster = (
        f"{baseline.percentile(50) / result.percentile(50):.2f}x"
        if baseline and result.latencies_ms
        else "-"
    )
    return (
        f"| {result.setup} | {result.concurrency} | {result.requests} | {result.rps:.1f} | "
        f"{ratio} | {result.percentile(50):.1f} | {faster} | {result.percentile(99):.1f} | "
        f"{'-' if result.batch_mean is None else f'{result.batch_mean:.1f}'} | {errors} |"
    )


def target_line(results: list[Result]) -> str:
    """Issue 7's warm-query target: p50 at concurrency 1, distinct texts (cache misses), the
    default runtime against the reference, at least 3x faster."""
    cells = {(r.setup, r.concurrency): r for r in results}
    reference, ours = cells.get((REFERENCE, 1)), cells.get((DEFAULT_RUNTIME, 1))
    if not reference or not ours:
        return "- warm-query target: needs concurrency 1 in the run"
    ratio = reference.percentile(50) / ours.percentile(50)
    return (
        f"- warm text query p50 at concurrency 1, distinct texts: reference "
        f"{reference.percentile(50):.1f} ms, mmsearch {ours.percentile(50):.1f} ms: "
        f"**{ratio:.2f}x faster** (target 3x: {'met' if ratio >= 3 else 'not met'})"
    )


def environment(stats: dict[str, object], args: argparse.Namespace) -> list[str]:
    def version(name: str) -> str:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return "?"

    cpu = platform.processor() or "?"
    if Path("/proc/cpuinfo").is_file():
        names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text()
                 .splitlines() if line.startswith("model name")]  # fmt: skip
        cpu = names[0] if names else cpu
    sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True)
    collections = stats.get("collections", {})
    faiss_line = collections.get("images", {}).get("faiss") if isinstance(collections, dict) else ""
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return [
        f"- machine: {cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}; "
        f"load average after the run {load} (anything else running skews every number)",
        f"- python {platform.python_version()}, torch {version('torch')}, faiss-cpu "
        f"{version('faiss-cpu')}, fastapi {version('fastapi')}, uvicorn {version('uvicorn')}, "
        f"httpx {version('httpx')}",
        f"- git {sha.stdout.strip() or '?'}{' (uncommitted changes)' if dirty.stdout else ''}",
        f"- index: {faiss_line}; model: {args.arch} (random weights); GET /search k=10",
        f"- each cell: {args.seconds:g} s or {args.max_requests} requests after a warm-up; "
        "client and server share the machine",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--vectors", type=int, default=10_000)
    parser.add_argument("--arch", default="tiny", help="tiny, or an open_clip name (ViT-B-32)")
    parser.add_argument("--index-type", help="default: auto up to 100k, IVF1024,Flat above")
    parser.add_argument("--seconds", type=float, default=6.0, help="per cell")
    parser.add_argument("--max-requests", type=int, default=5000, help="per cell")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument(
        "--concurrency",
        type=lambda text: tuple(int(part) for part in text.split(",")),
        default=CONCURRENCIES,
        help="comma-separated client counts (default 1,16,64)",
    )
    parser.add_argument("--workdir", type=Path, default=Path(".bench") / "serve_load")
    args = parser.parse_args()
    # auto at 1M is IVF4000 (k-means over 256k points: minutes on 2 cores); IVF1024 trains in
    # seconds and probes a similar number of vectors per query, which is what serving measures.
    index_type = args.index_type or ("auto" if args.vectors <= 100_000 else "IVF1024,Flat")

    args.workdir.mkdir(parents=True, exist_ok=True)
    model = write_model(args.workdir / f"model-{args.arch}", args.arch)
    directory = args.workdir / f"index-{args.arch}-{args.vectors}-{index_type.replace(',', '_')}"
    if not index_complete(directory, args.vectors):
        shutil.rmtree(directory, ignore_errors=True)  # an interrupted earlier build
        started = time.perf_counter()
        build_index(directory, model, args.vectors, index_type)
        print(f"built {directory} in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    log = args.workdir / "server.log"
    results = run_setups(directory, model, args, log)
    from benchmarks.livekit import serve_child  # livekit imports this module

    with serve_child(directory, args.port, (), log) as (base, _):
        stats = httpx.get(f"{base}/stats", timeout=30).json()

    baselines = {r.concurrency: r for r in results if r.setup == REFERENCE}
    print(f"\n## mmsearch serve: text search, {args.vectors:,} vectors\n")
    print("| server | concurrency | requests | req/s | req/s vs reference | p50 ms | "
          "p50 vs reference | p99 ms | texts/pass | errors |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for result in results:
        print(row(result, baselines.get(result.concurrency)))
    print("\n" + target_line(results))
    print("\n".join(environment(stats, args)))
    command = [
        "python -m benchmarks.serve_load",
        f"--vectors {args.vectors}",
        f"--arch {args.arch}",
        f"--index-type '{index_type}'",
        f"--seconds {args.seconds:g}",
        f"--concurrency {','.join(map(str, args.concurrency))}",
    ]
    print(f"- reproduce: `{' '.join(command)}`")


if __name__ == "__main__":
    main()
