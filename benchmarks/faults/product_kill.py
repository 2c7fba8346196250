"""Crash loop for product writes: SIGKILL `mmsearch serve` while a client sends bulk upserts
(new products with images, image swaps, title and price edits, deletes) and the change log is
being compacted in the background, then prove nothing acknowledged was lost or half-written.

    python -m benchmarks.faults.product_kill --trials 30

Each trial starts `python -m retrieval serve` on one index directory with a small
--compact-rows (so compactions run every few requests and kills land inside them too), and
kills it with SIGKILL, either aimed at a phase through MMSEARCH_FAULT=PHASE:N (retrieval/faults.py:
the server kills itself there, as `kill -9` from outside would: `faiss` is reached when a write
appends to the change log and when a compaction writes a faiss file, `commit` before and
`committed` after the SQLite COMMIT) or after a random delay. One client sends one request at a
time, so at most one write is in flight when the kill lands. Then:
  * `mmsearch check` finds the index sound (files of a compaction the kill cut short are
    counted apart: the next writer deletes them);
  * every SKU is in its last acknowledged state, or in the state of the one request in flight
    (a write the kill cut off may have committed): title, price and image count;
  * nothing is half-written: every product has its title item, one embedded image item per
    image in its row, and no item belongs to a product that does not exist;
  * a reader's live index (base generation + change log) holds exactly the catalog's items,
    and each acknowledged image is found first by its own vector.
The model is the tests' tiny random-weight open_clip model.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from benchmarks.harness import png_data_url
from benchmarks.livekit import start_serve

REPO = Path(__file__).resolve().parents[2]
PHASES = ("faiss", "commit", "committed", "random")
SKUS = [f"P-{n:03d}" for n in range(40)]
ROWS_PER_REQUEST = 8
COMPACT_ROWS = 40  # a compaction every few requests
# A product's state as the client wrote it: (title, price, image count), None when deleted.
State = tuple[str, int, int] | None


@dataclass
class Results:
    trials: int = 0
    acknowledged: int = 0
    kills_by_phase: dict[str, int] = field(default_factory=dict)
    compactions: int = 0
    leftover_files: int = 0
    errors: list[str] = field(default_factory=list)


def data_url(seed: int) -> str:
    return png_data_url(seed, width=32, height=24)


def start_server(directory: Path, fault: str | None) -> tuple[subprocess.Popen[bytes], str]:
    """`serve` on `directory`, set to kill itself at `fault` (MMSEARCH_FAULT), compacting every
    COMPACT_ROWS log rows; (process, base URL)."""
    env = dict(os.environ)
    env.pop("MMSEARCH_FAULT", None)
    if fault:
        env["MMSEARCH_FAULT"] = fault
    return start_serve(
        directory, "--device", "cpu", "--compact-rows", str(COMPACT_ROWS), env=env, timeout_s=180
    )


class Client:
    """Sends one request at a time; remembers the acknowledged state and the one in flight."""

    def __init__(self, base: str, rng: random.Random, serial: int) -> None:
        self.base = base
        self.rng = rng
        self.serial = serial
        self.acked: dict[str, State] = {}
        self.pending: dict[str, State] = {}
        self.pending_images: dict[str, list[str]] = {}
        self.images: dict[str, list[str]] = {}  # acknowledged image data URLs per SKU
        self.requests = 0

    def run(self, stop: threading.Event) -> None:
        import httpx

        with httpx.Client(timeout=30) as client:
            while not stop.is_set():
                self.serial += 1
                try:
                    if self.rng.random() < 0.15:
                        self._delete(client)
                    else:
                        self._bulk(client)
                except httpx.HTTPError:
                    return  # the server is gone: the pending request stays unknown
                self.requests += 1

    def _delete(self, client: object) -> None:
        sku = self.rng.choice(SKUS)
        self.pending = {sku: None}
        answer = client.delete(f"{self.base}/products/{sku}")  # type: ignore[attr-defined]
        if answer.status_code in (204, 404):
            self.acked[sku] = None
            self.images.pop(sku, None)
        self.pending = {}

    def _bulk(self, client: object) -> None:
        rows, pending, images = [], {}, {}
        for sku in self.rng.sample(SKUS, ROWS_PER_REQUEST):
            count = self.rng.choice((0, 1, 1, 2))
            urls = [data_url(self.serial * 10 + n) for n in range(count)]
            if sku in self.images and self.rng.random() < 0.5:
                urls = self.images[sku]  # same images: a field-only change
            title = f"product {sku} version {self.serial}"
            rows.append({"id": sku, "title": title, "price": self.serial, "images": urls})
            pending[sku] = (title, self.serial, len(urls))
            images[sku] = urls
        self.pending, self.pending_images = pending, images
        body = "\n".join(json.dumps(row) for row in rows)
        answer = client.post(  # type: ignore[attr-defined]
            f"{self.base}/products/bulk", content=body.encode(), headers={"Content-Type":
            "application/x-ndjson"},
        )  # fmt: skip
        if answer.status_code == 200:
            outcomes = answer.json()
            failed = [o for o in outcomes.get("results", []) if o.get("outcome") == "failed"]
            if failed:
                raise RuntimeError(f"bulk rows failed: {failed[:2]}")
            self.acked.update(pending)
            self.images.update(images)
        self.pending = {}


def verify(directory: Path, client: Client, results: Results, trial: int) -> None:
    from retrieval.storage.integrity import check_index
    from retrieval.storage.store import IndexStore
    from retrieval.types import IMAGES, TEXTS

    def fail(message: str) -> None:
        results.errors.append(f"trial {trial}: {message}")
        print(f"  error: {message}", file=sys.stderr, flush=True)

    report = check_index(directory)
    leftovers = [p for p in report.problems if p.kind == "stray-file"]
    results.leftover_files += len(leftovers)
    for problem in report.problems:
        if problem.kind != "stray-file":
            fail(f"check: {problem.kind} {problem.where}: {problem.detail}")
    with IndexStore.open(directory, readonly=True) as store:
        catalog = store.catalog
        records = catalog.get_product_records(SKUS)
        items = catalog.get_product_items(SKUS)
        for sku in SKUS:
            record = records.get(sku)
            state: State = None
            if record is not None:
                metadata = record.metadata
                state = (metadata["title"], int(metadata.get("price", -1)), len(record.images))
            if sku in client.acked:  # else: whatever the in-flight write left, checked below
                allowed = {client.acked[sku]}
                if sku in client.pending:
                    allowed.add(client.pending[sku])
                if state not in allowed:
                    fail(f"{sku} is {state}, acknowledged {client.acked[sku]}")
            if sku in client.pending and state == client.pending[sku]:
                # the write the kill cut off had committed: later trials build on it
                client.acked[sku] = state
                if state is None:
                    client.images.pop(sku, None)
                else:
                    client.images[sku] = client.pending_images.get(sku, [])
            mine = items.get(sku, [])
            if record is None:
                if mine:
                    fail(f"deleted {sku} still has {len(mine)} items")
                continue
            titles = [item for item in mine if item.collection == TEXTS]
            photos = [item for item in mine if item.collection == IMAGES]
            embedded = [s for s in record.images if s["status"] == "embedded"]
            if len(titles) != 1 or len(photos) != len(embedded) != len(record.images):
                fail(f"{sku} half-written: {len(titles)} titles, {len(photos)} image items for "
                     f"{len(record.images)} images")  # fmt: skip
        stray = catalog.db.execute(
            "SELECT COUNT(*) FROM items WHERE product_id IS NOT NULL AND product_id NOT IN "
            "(SELECT id FROM products)"
        ).fetchone()[0]
        if stray:
            fail(f"{stray} items belong to no product")
        for collection in (IMAGES, TEXTS):
            live = store.get_index(collection)
            count = catalog.count(collection)
            if (live.ntotal if live is not None else 0) != count:
                fail(f"{collection}: live index holds {live and live.ntotal}, catalog {count}")
        photo_ids = [i.id for found in items.values() for i in found if i.collection == IMAGES]
        live = store.get_index(IMAGES)
        if photo_ids and live is not None:
            vectors = catalog.get_vectors_by_id(photo_ids, store.identity.dim)
            _, found = live.search(vectors, 1)
            # identical images (a kept row) may tie: the found one must have the same vector
            for row, item_id in enumerate(photo_ids):
                if found[row, 0] != item_id:
                    other = catalog.get_vectors_by_id([int(found[row, 0])], store.identity.dim)
                    if not np.allclose(other[0], vectors[row], atol=1e-3):
                        fail(f"image item {item_id} is not found by its own vector")
        results.compactions = int(catalog.generation)


def run_trials(root: Path, model: str, trials: int, seed: int = 0) -> Results:
    sys.path.insert(0, str(REPO / "tests"))
    from testdata import write_catalog

    rng = random.Random(seed)
    results = Results()
    catalog = write_catalog(root / "shop")
    directory = root / "index"
    subprocess.run(
        [sys.executable, "-m", "retrieval", "index", "--catalog", str(catalog), "--model",
         model, "--index", str(directory), "--quiet", "--device", "cpu"],
        check=True, env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    acked: dict[str, State] = {}
    images: dict[str, list[str]] = {}
    serial = 0
    for trial in range(trials):
        phase = PHASES[trial % len(PHASES)]
        fault = None if phase == "random" else f"{phase}:{rng.randint(1, 6)}"
        process, base = start_server(directory, fault)
        client = Client(base, rng, serial)
        client.acked, client.images = acked, images
        stop = threading.Event()
        thread = threading.Thread(target=client.run, args=(stop,))
        thread.start()
        # a fault kills the server itself; otherwise kill after a random delay (a timer
        # kill for fault trials whose N lies past the trial's writes)
        deadline = time.monotonic() + (rng.uniform(0.5, 3.0) if fault is None else 8.0)
        while time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.02)
        killed_itself = process.poll() is not None
        if not killed_itself:
            process.send_signal(signal.SIGKILL)
        process.wait()
        stop.set()
        thread.join()
        serial = client.serial + 1
        label = phase if (fault is None or killed_itself) else "timer"
        results.kills_by_phase[label] = results.kills_by_phase.get(label, 0) + 1
        results.trials += 1
        verify(directory, client, results, trial)
        results.acknowledged += client.requests
        print(
            f"trial {trial}: {label}, {client.requests} requests acknowledged, "
            f"errors so far {len(results.errors)}",
            file=sys.stderr,
            flush=True,
        )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    sys.path.insert(0, str(REPO / "tests"))
    from testdata import write_tiny_model

    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        model = f"local-dir:{write_tiny_model(Path(tmp) / 'tiny')}"
        results = run_trials(Path(tmp) / "loop", model, args.trials, args.seed)
    print(json.dumps({**results.__dict__, "seconds": round(time.monotonic() - started)}, indent=2))
    print(f"command: python -m benchmarks.faults.product_kill --trials {args.trials}")
    sys.exit(1 if results.errors else 0)


if __name__ == "__main__":
    main()
