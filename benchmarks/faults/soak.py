"""Soak and overload test of `mmsearch serve` on 127.0.0.1.

Soak: `--concurrency` clients (32) send mixed queries back to back for `--seconds` (300): text
searches over images, texts and products, image uploads, filtered product searches and pages
further down the ranking. Twice during the run an incremental `mmsearch index --catalog` adds
products (and the second drops some); after each, the server's answers to fixed probe queries
must equal `mmsearch query --json`'s. Every `--sample` seconds (5) p50/p99 latency, throughput,
errors and the server's RSS are recorded. Any answer but 200 (or a deliberate 429) is an error.

Overload: an open loop (requests sent on a clock, not when the last one returns) at 4x the
throughput the soak sustained, then at half of it: the server must answer 429 with Retry-After
quickly instead of queueing, keep its in-flight count under max_concurrency + max_queue, and
answer 200s again as soon as the load drops.

    python -m benchmarks.faults.soak                        # 5 min soak + ~40 s overload
    python -m benchmarks.faults.soak --seconds 60           # a quick look
    python -m benchmarks.faults.soak --plot soak.png        # also plot latency and RSS
    python -m benchmarks.faults.soak --seconds 30 --baseline --rounds 2   # overload vs the old path

`--baseline` also starts a second server on the same index without the early 429
(EarlyRefusalMiddleware removed, i.e. refusals only from the admission limiter after FastAPI's
routing and validation, as before it existed) and runs the overload phases against both,
alternating, `--rounds` times, so the comparison shares the machine's load.

Every loop is bounded in time and in count (`--max-requests`); the client and the server share
the machine, so the figures are for this machine under whatever else it runs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from ..harness import percentile, rss_mib
from ..livekit import (
    CATEGORIES,
    environment,
    mmsearch,
    serve_child,
    write_catalog,
    write_model,
)

WORDS = ("red", "blue", "leather", "summer", "running", "wool", "vintage", "striped")
# The server's admission limits for this run: 8 searches at once and 32 waiting, so the
# 32-client soak fits (no 429s expected) while 4x overload must spill into 429s.
SERVER_ARGS = ("--max-concurrency", "8", "--max-queue", "32")
QUEUE_BOUND = 8 + 32
CLIENT_TIMEOUT_S = 30
OUTSTANDING_CAP = 4000  # the open loop never has more requests in the air than this


@dataclass
class Sample:
    """One window of the soak."""

    at_s: float
    requests: int
    p50_ms: float
    p99_ms: float
    overloaded: int
    errors: int
    rss_mib: float
    note: str = ""


@dataclass
class Soak:
    latencies: list[tuple[float, float, str]] = field(default_factory=list)  # (end, ms, kind)
    statuses: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)  # "kind status" -> count
    samples: list[Sample] = field(default_factory=list)
    updates: list[dict[str, Any]] = field(default_factory=list)
    requests: int = 0


class Queries:
    """The mixed workload: a seeded stream of (kind, method, path, kwargs)."""

    def __init__(self, images: list[Path], seed: int) -> None:
        self.rng = random.Random(seed)
        self.uploads = [path.read_bytes() for path in images[:16]]

    def next(self) -> tuple[str, str, str, dict[str, Any]]:
        rng = self.rng
        words = f"{rng.choice(WORDS)} {rng.choice(CATEGORIES)} {rng.randrange(200)}"
        roll = rng.random()
        if roll < 0.35:
            target = rng.choice(("images", "texts", "products"))
            return "text", "GET", "/search", {"params": {"q": words, "target": target}}
        if roll < 0.55:
            upload = rng.choice(self.uploads)
            files = {"file": ("q.png", upload, "image/png")}
            return "image", "POST", "/search/image", {"files": files, "params": {"k": 5}}
        if roll < 0.80:
            params = {"q": words, "target": "products", "category": rng.choice(CATEGORIES),
                      "price_max": rng.randrange(20, 100)}  # fmt: skip
            return "filtered", "GET", "/search", {"params": params}
        params = {"q": words, "k": 10, "offset": rng.choice((10, 20, 50))}
        return "paged", "GET", "/search", {"params": params}


async def soak(base: str, pid: int, args: argparse.Namespace, update: Any) -> Soak:
    """The closed-loop soak with `update(n)` run in a thread at 1/3 and 2/3 of the time."""
    result = Soak()
    queries = Queries(args.upload_images, seed=1)
    started = time.perf_counter()
    deadline = started + args.seconds
    # One single-connection client per worker, as in serve_load (a shared pool costs the client
    # CPU that the server on the same machine needs).
    one = httpx.Limits(max_connections=1)
    clients = [
        httpx.AsyncClient(base_url=base, timeout=CLIENT_TIMEOUT_S, limits=one)
        for _ in range(args.concurrency)
    ]

    async def worker(client: httpx.AsyncClient) -> None:
        while time.perf_counter() < deadline and result.requests < args.max_requests:
            result.requests += 1
            kind, method, path, kwargs = queries.next()
            sent = time.perf_counter()
            try:
                status = str((await client.request(method, path, **kwargs)).status_code)
            except httpx.HTTPError as err:
                status = type(err).__name__
            now = time.perf_counter()
            result.latencies.append((now - started, (now - sent) * 1000, kind))
            result.statuses[status] += 1
            if status not in ("200", "429"):
                result.errors[f"{kind} {status}"] += 1

    async def sampler() -> None:
        seen, noted = 0, 0
        while time.perf_counter() < deadline:
            await asyncio.sleep(min(args.sample, max(deadline - time.perf_counter(), 0.01)))
            window = [latency for _, latency, _ in result.latencies[seen:]]
            seen = len(result.latencies)
            note = ", ".join(update["note"] for update in result.updates[noted:])
            noted = len(result.updates)
            result.samples.append(Sample(
                time.perf_counter() - started, len(window), percentile(window, 0.5),
                percentile(window, 0.99), result.statuses["429"], sum(result.errors.values()),
                rss_mib(pid), note,
            ))  # fmt: skip

    async def updater() -> None:
        for number in (1, 2):
            at = started + args.seconds * number / 3
            await asyncio.sleep(max(at - time.perf_counter(), 0))
            begun = time.perf_counter() - started
            outcome = await asyncio.to_thread(update, number)
            outcome.update(start_s=begun, end_s=time.perf_counter() - started)
            outcome["note"] = f"update {number} done"
            result.updates.append(outcome)

    await asyncio.gather(sampler(), updater(), *(worker(client) for client in clients))
    for client in clients:
        await client.aclose()
    return result


@dataclass
class Overload:
    server: str
    phase: str
    rate: float
    sent: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    latency_ms: dict[str, list[float]] = field(default_factory=dict)
    retry_after: Counter[str] = field(default_factory=Counter)
    max_in_flight: int = 0
    first_ok_ms: float | None = None
    offered: float = 0.0  # the rate actually sent, per second


async def raw_get(host: str, port: int, target: str) -> tuple[str, str | None]:
    """(status, Retry-After) of one GET on a fresh connection. Raw asyncio streams rather than
    httpx: the open loop must offer hundreds of requests a second from one Python process that
    shares two cores with the server, and httpx's per-request cost would cap the offered rate
    below what is being tested."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(f"GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        await reader.read()  # the body, up to the server's close
    finally:
        writer.close()
    status = head.split(" ", 2)[1]
    retry = next((line.split(":", 1)[1].strip() for line in head.split("\r\n")
                  if line.lower().startswith("retry-after:")), None)  # fmt: skip
    return status, retry


async def open_loop(base: str, server: str, phase: str, rate: float, seconds: float) -> Overload:
    """Text searches sent at `rate` per second for `seconds`, whatever the answers take (at
    most OUTSTANDING_CAP in the air, each given CLIENT_TIMEOUT_S)."""
    result = Overload(server, phase, rate)
    host, port = base.removeprefix("http://").split(":")
    counter = iter(range(10**9))
    started = time.perf_counter()
    tasks: set[asyncio.Task[None]] = set()

    async def one() -> None:
        sent = time.perf_counter()
        target = f"/search?q={random.choice(WORDS)}+overload+{next(counter)}&k=10"
        try:
            status, retry = await asyncio.wait_for(
                raw_get(host, int(port), target), CLIENT_TIMEOUT_S
            )
            if status == "429":
                result.retry_after[retry or "missing"] += 1
        except (OSError, asyncio.IncompleteReadError, TimeoutError) as err:
            status = type(err).__name__
        result.statuses[status] += 1
        result.latency_ms.setdefault(status, []).append((time.perf_counter() - sent) * 1000)
        if status == "200" and result.first_ok_ms is None:
            result.first_ok_ms = (time.perf_counter() - started) * 1000

    async def watch() -> None:
        async with httpx.AsyncClient(base_url=base, timeout=CLIENT_TIMEOUT_S) as stats:
            while time.perf_counter() - started < seconds:
                server = (await stats.get("/stats")).json()["server"]
                result.max_in_flight = max(result.max_in_flight, server["in_flight"])
                await asyncio.sleep(0.25)

    watcher = asyncio.create_task(watch())
    interval = 1 / rate
    while (now := time.perf_counter() - started) < seconds:
        if len(tasks) < OUTSTANDING_CAP:
            task = asyncio.create_task(one())
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            result.sent += 1
        await asyncio.sleep(max(result.sent * interval - now, 0))
    result.offered = result.sent / (time.perf_counter() - started)
    await asyncio.gather(*tasks, watcher)
    return result


def probes() -> list[tuple[str, ...]]:
    """Queries whose HTTP answers must equal the CLI's after each update (CLI options)."""
    return [
        ("red shoes 1", "--target", "products"),
        ("wool hats", "--target", "products", "--filter", "category=hats",
         "--filter", "price_max=60"),
        ("blue bags", "--target", "images", "-k", "10", "--offset", "10"),
        ("striped shirts", "--target", "texts", "-k", "5"),
    ]  # fmt: skip


def http_probe(base: str, cli_args: tuple[str, ...]) -> dict[str, Any]:
    """The HTTP twin of one probe: the same query through GET /search, took_ms dropped."""
    params: dict[str, Any] = {"q": cli_args[0]}
    rest = list(cli_args[1:])
    while rest:
        flag, value = rest.pop(0), rest.pop(0)
        if flag == "--filter":
            name, _, wanted = value.partition("=")
            params[name] = wanted
        else:
            params[{"-k": "k"}.get(flag, flag.removeprefix("--"))] = value
    answer = httpx.get(f"{base}/search", params=params, timeout=CLIENT_TIMEOUT_S).json()
    answer.pop("took_ms", None)
    return answer


def compare_with_cli(base: str, index: Path) -> tuple[int, list[str]]:
    """(probes compared, mismatches) between the server and `mmsearch query --json`."""
    mismatches = []
    for cli_args in probes():
        cli = json.loads(
            mmsearch("query", *cli_args, "--json", "--index", index, "--device", "cpu").stdout
        )
        served = http_probe(base, cli_args)
        if served != cli:
            mismatches.append(
                f"{cli_args}: http {served['results'][:2]} vs cli {cli['results'][:2]}"
            )
    return len(probes()), mismatches


def wait_for_generation(base: str, generation: int, seconds: float = 60) -> int:
    """The server's generation once it is past `generation` (it reloads on the next search)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        httpx.get(f"{base}/search", params={"q": "reload"}, timeout=CLIENT_TIMEOUT_S)
        now = httpx.get(f"{base}/stats", timeout=CLIENT_TIMEOUT_S).json().get("generation") or 0
        if now > generation:
            return int(now)
        time.sleep(0.5)
    raise SystemExit(f"the server did not move past generation {generation} in {seconds:g} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=300)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--sample", type=float, default=5.0, help="seconds per sample")
    parser.add_argument("--max-requests", type=int, default=2_000_000)
    parser.add_argument("--products", type=int, default=300, help="products at the start")
    parser.add_argument("--overload-seconds", type=float, default=20)
    parser.add_argument("--port", type=int, default=8766)
    parser.add_argument("--plot", type=Path, default=None, help="write a PNG of the samples")
    parser.add_argument(
        "--baseline",
        action="store_true",
        help="also overload a server without the early 429 (the old path), alternating",
    )
    parser.add_argument("--rounds", type=int, default=1, help="overload rounds per server")
    parser.add_argument(
        "--server-log", type=Path, default=None, help="keep the servers' logs here (a folder)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mmsearch-soak-") as scratch:
        logs = args.server_log or Path(scratch) / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        try:
            run(Path(scratch), logs, args)
        except SystemExit as stop:
            if stop.code:
                show_logs(logs)
            raise


def show_logs(logs: Path) -> None:
    """The end of each server log (tracebacks of any 500), since the scratch folder goes."""
    for log in sorted(logs.glob("*.log")):
        text = log.read_text(errors="replace")[-20_000:]
        print(f"\n## last 20 kB of {log.name}\n\n{text}")


# The old path for --baseline: `mmsearch serve` with EarlyRefusalMiddleware taken out of the
# app's middleware list before uvicorn builds the stack (Starlette builds it on first call).
BASELINE_SERVER = """
import retrieval.http.routes as routes
from retrieval.http.limits import EarlyRefusalMiddleware
made = routes.create_app
def create_app(service, config):
    app = made(service, config)
    app.user_middleware = [m for m in app.user_middleware if m.cls is not EarlyRefusalMiddleware]
    return app
routes.create_app = create_app
from retrieval.cli import app
app()
"""


def overload_rounds(servers: dict[str, str], sustained: float, args: argparse.Namespace) -> list:
    """4x then 0.5x the sustained rate against each server in turn, `--rounds` times."""
    phases = []
    for _ in range(args.rounds):
        for name, base in servers.items():
            phases.append(asyncio.run(open_loop(base, name, "4x", 4 * sustained,
                                                args.overload_seconds)))  # fmt: skip
            phases.append(asyncio.run(open_loop(base, name, "0.5x", 0.5 * sustained,
                                                args.overload_seconds / 2)))  # fmt: skip
    return phases


def run(root: Path, logs: Path, args: argparse.Namespace) -> None:
    model = write_model(root / "model")
    shop = root / "shop"
    catalog = write_catalog(shop, args.products)
    index = root / "index"
    mmsearch("index", "--catalog", catalog, "--model", model, "--index", index, "--quiet")
    args.upload_images = sorted((shop / "img").glob("*.png"))
    with serve_child(index, args.port, SERVER_ARGS, logs / "serve.log") as (base, process):
        generation = httpx.get(f"{base}/stats").json().get("generation") or 0
        lock = threading.Lock()

        def update(number: int) -> dict[str, Any]:
            nonlocal generation
            with lock:
                count = args.products + 60 * number
                write_catalog(shop, count, skip=10 * (number - 1))
                begun = time.perf_counter()
                mmsearch(
                    "index", "--catalog", catalog, "--model", model, "--index", index, "--quiet"
                )
                took = time.perf_counter() - begun
                generation = wait_for_generation(base, generation)
                compared, mismatches = compare_with_cli(base, index)
                return {"number": number, "index_s": took, "generation": generation,
                        "products": count - 10 * (number - 1), "compared": compared,
                        "mismatches": mismatches}  # fmt: skip

        result = asyncio.run(soak(base, process.pid, args, update))
        sustained = len(result.latencies) / args.seconds
        servers = {"early 429": base}
        with contextlib.ExitStack() as stack:
            if args.baseline:
                old_path = [sys.executable, "-c", BASELINE_SERVER, "serve", "--index", str(index),
                            "--host", "127.0.0.1", "--port", str(args.port + 1), "--device",
                            "cpu", "--no-access-log", *SERVER_ARGS]  # fmt: skip
                old_base, _ = stack.enter_context(
                    serve_child(index, args.port + 1, SERVER_ARGS, logs / "baseline.log", old_path)
                )
                servers["old path"] = old_base
            overload = overload_rounds(servers, sustained, args)
        final_rss = rss_mib(process.pid)
    report(result, overload, sustained, final_rss, args)


def report(
    result: Soak,
    overload: list[Overload],
    sustained: float,
    final_rss: float,
    args: argparse.Namespace,
) -> None:
    ms = [latency for _, latency, _ in result.latencies]
    print(f"\n## soak: {args.seconds:g} s at concurrency {args.concurrency}\n")
    print(f"{len(ms):,} requests ({sustained:.1f}/s), p50 {percentile(ms, 0.5):.0f} ms, p99 "
          f"{percentile(ms, 0.99):.0f} ms; statuses {dict(result.statuses)}; "
          f"errors {dict(result.errors) or 0}")  # fmt: skip
    kinds = Counter(kind for _, _, kind in result.latencies)
    print("\n| kind | requests | p50 ms | p99 ms |\n|---|---:|---:|---:|")
    for kind in sorted(kinds):
        values = [latency for _, latency, k in result.latencies if k == kind]
        p50, p99 = percentile(values, 0.5), percentile(values, 0.99)
        print(f"| {kind} | {len(values):,} | {p50:.0f} | {p99:.0f} |")
    print(
        "\n| t (s) | requests | p50 ms | p99 ms | 429s so far | errors so far | server RSS MiB | |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---|")
    for sample in result.samples:
        print(f"| {sample.at_s:.0f} | {sample.requests} | {sample.p50_ms:.0f} "
              f"| {sample.p99_ms:.0f} | {sample.overloaded} | {sample.errors} "
              f"| {sample.rss_mib:.0f} | {sample.note} |")  # fmt: skip
    rss = [sample.rss_mib for sample in result.samples]
    if rss:
        first_minute = [s.rss_mib for s in result.samples if s.at_s <= 60] or rss[:1]
        print(
            f"\nRSS: {min(rss):.0f}-{max(rss):.0f} MiB during the soak; first minute max "
            f"{max(first_minute):.0f}, last sample {rss[-1]:.0f}, after overload {final_rss:.0f}"
        )
    for update in result.updates:
        print(f"\nupdate {update['number']}: index run {update['index_s']:.1f} s "
              f"(t={update['start_s']:.0f}-{update['end_s']:.0f} s), "
              f"generation {update['generation']}, "
              f"{update['products']} products; {update['compared']} probes vs the CLI, "
              f"mismatches: {update['mismatches'] or 0}")  # fmt: skip
    print("\n## overload (open loop, GET /search)\n")
    print("| server | phase | target/s | sent/s | sent | 200 | 429 | other | p50 ms 200 "
          "| p99 ms 200 | p50 ms 429 | p99 ms 429 | Retry-After | max in flight (bound) "
          "| first 200 after |")  # fmt: skip
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|")
    for phase in overload:
        ok = phase.latency_ms.get("200", [])
        busy = phase.latency_ms.get("429", [])
        other = sum(n for status, n in phase.statuses.items() if status not in ("200", "429"))
        first = f"{phase.first_ok_ms:.0f} ms" if phase.first_ok_ms is not None else "never"
        print(f"| {phase.server} | {phase.phase} | {phase.rate:.0f} | {phase.offered:.0f} "
              f"| {phase.sent:,} "
              f"| {phase.statuses['200']:,} "
              f"| {phase.statuses['429']:,} | {other} | {percentile(ok, 0.5):.0f} "
              f"| {percentile(ok, 0.99):.0f} "
              f"| {percentile(busy, 0.5):.0f} | {percentile(busy, 0.99):.0f} "
              f"| {dict(phase.retry_after) or '-'} "
              f"| {phase.max_in_flight} ({QUEUE_BOUND}) | {first} |")  # fmt: skip
    print("\n" + "\n".join(environment()))
    print(f"- command: python -m benchmarks.faults.soak --seconds {args.seconds:g} "
          f"--concurrency {args.concurrency} --overload-seconds {args.overload_seconds:g}"
          f"{' --baseline' if args.baseline else ''} --rounds {args.rounds}; "
          f"server {' '.join(SERVER_ARGS)}")  # fmt: skip
    if args.plot:
        plot(result, args.plot)
    failed = sum(result.errors.values()) or any(u["mismatches"] for u in result.updates)
    failed = failed or len(result.updates) < 2
    # 429s are deliberate; anything else from the server under test (5xx, resets, timeouts) is not
    failed = failed or any(
        set(phase.statuses) - {"200", "429"} for phase in overload if phase.server == "early 429"
    )
    if failed:
        raise SystemExit(1)


def plot(result: Soak, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    times = [s.at_s for s in result.samples]
    figure, (latency, memory) = plt.subplots(2, 1, sharex=True, figsize=(8, 5))
    latency.plot(times, [s.p50_ms for s in result.samples], label="p50")
    latency.plot(times, [s.p99_ms for s in result.samples], label="p99")
    latency.set_ylabel("latency, ms")
    latency.legend()
    memory.plot(times, [s.rss_mib for s in result.samples])
    memory.set_ylabel("server RSS, MiB")
    memory.set_xlabel("seconds")
    for update in result.updates:
        for axis in (latency, memory):
            axis.axvspan(update["start_s"], update["end_s"], alpha=0.2, color="grey")
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    print(f"- plot: {path}")


if __name__ == "__main__":
    main()
