"""A 2xx from a product write means committed: `mmsearch serve` killed with SIGKILL while a
client writes keeps every acknowledged write, nothing half-written, `mmsearch check` clean, and
a second server on the same index sees each write on its next query."""

from __future__ import annotations

import base64
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx
from clirun import invoke
from httpkit import index_shop

from benchmarks.livekit import start_serve
from retrieval.storage.store import IndexStore

TRIALS = 3


def start_server(directory: Path) -> tuple[subprocess.Popen[bytes], str]:
    return start_serve(directory, timeout_s=120)


def test_acknowledged_writes_survive_kill_9(tiny_model: str, tmp_path: Path) -> None:
    directory = index_shop(tiny_model, tmp_path)
    acknowledged: dict[str, float] = {}
    for trial in range(TRIALS):
        process, base = start_server(directory)
        stop = threading.Event()

        def write(base: str = base, trial: int = trial, stop: threading.Event = stop) -> None:
            with httpx.Client(timeout=5) as client:
                for n in range(10_000):
                    if stop.is_set():
                        return
                    sku = f"T{trial}-{n % 7}"
                    body = {"title": "shoes model 0", "price": n, "category": "shoes"}
                    try:
                        answer = client.put(f"{base}/products/{sku}", json=body)
                    except httpx.HTTPError:
                        return
                    if answer.status_code in (200, 201):
                        acknowledged[sku] = n

        thread = threading.Thread(target=write)
        thread.start()
        time.sleep(1.0 + 0.3 * trial)
        process.send_signal(signal.SIGKILL)
        process.wait()
        stop.set()
        thread.join()
        with IndexStore.open(directory, readonly=True) as store:
            for sku, price in acknowledged.items():
                stored = store.catalog.get_product(sku)
                assert stored is not None, sku
                # the last acknowledged value, or a later one whose answer the kill cut off
                assert stored["price"] >= price, (sku, stored["price"], price)
    assert len(acknowledged) >= TRIALS * 3
    result = invoke("check", "--index", directory)
    assert result.exit_code == 0, result.output


def test_a_second_server_sees_a_write_on_its_next_query(tiny_model: str, tmp_path: Path) -> None:
    directory = index_shop(tiny_model, tmp_path)
    first, base_one = start_server(directory)
    second, base_two = start_server(directory)
    try:
        image = (directory.parent / "shop" / "img" / "img_000.png").read_bytes()
        data = "data:image/png;base64," + base64.b64encode(image).decode()
        answer = httpx.put(
            f"{base_one}/products/R-1",
            json={"title": "replica check", "images": [data], "category": "hats"},
            timeout=30,
        )
        assert answer.status_code == 201, answer.text
        started = time.monotonic()
        seen = httpx.get(f"{base_two}/products/R-1", timeout=5)
        hits = httpx.get(
            f"{base_two}/search", params={"q": "replica check", "category": "hats"}, timeout=30
        ).json()["results"]
        assert seen.status_code == 200 and "R-1" in [h["product_id"] for h in hits]
        assert time.monotonic() - started < 5
    finally:
        for process in (first, second):
            process.kill()
            process.wait()
