"""A light server: with the exported towers in the cache, `mmsearch serve` and `mmsearch query
--image` answer text and image queries, and `serve` writes products, without torch or
open_clip (an import hook refuses them in the child process), with the hits, scores and
vectors the full torch model gives."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from clirun import run_ok, run_subprocess
from PIL import Image
from testdata import write_catalog

from benchmarks.livekit import start_serve

pytestmark = pytest.mark.runtime

HEAVY = ("torch", "open_clip", "torchvision")
# Runs the CLI in a fresh interpreter whose imports of torch, open_clip or torchvision fail, and
# reports on exit which of them are loaded (none can be) and which imports were refused.
# importlib.util.find_spec, which locates a package's files without importing it (the
# tokenizer finds open_clip's vocabulary that way), is let through.
REFUSE_TORCH = f"""
import importlib.abc, importlib.util, json, sys
HEAVY = {HEAVY!r}
refused = []
class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        frame = sys._getframe(1)
        while frame is not None:
            if frame.f_code is importlib.util.find_spec.__code__:
                return None
            frame = frame.f_back
        if name.split(".")[0] in HEAVY:
            refused.append(name)
            raise ImportError(f"{{name}} is refused in this light process")
        return None
sys.meta_path.insert(0, Refuse())
from retrieval.cli import app
try:
    app(sys.argv[1:], standalone_mode=False)
finally:
    heavy = sorted(m for m in HEAVY if m in sys.modules)
    print(json.dumps({{"heavy": heavy, "refused": refused}}), file=sys.stderr)
"""


@pytest.fixture(autouse=True)
def default_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    """`--backend auto`, the default users get (the suite pins torch for in-process tests)."""
    monkeypatch.delenv("MMSEARCH_BACKEND")


@pytest.fixture
def index_dir(image_folder: Path, tiny_model: str, tmp_path: Path) -> Path:
    """The photos indexed in a child process with the exported runtime (OpenVINO stays out of
    the pytest process, see conftest.py), which fills the export cache."""
    directory = tmp_path / "index"
    done = run_subprocess("index", image_folder, "--model", tiny_model, "--index", directory,
                          "-q", env=os.environ.copy())  # fmt: skip
    assert done.returncode == 0, done.stderr
    return directory


def light(*args: str) -> tuple[str, dict]:
    """(stdout, {"heavy", "refused"}) of one torch-refusing CLI run."""
    done = subprocess.run(
        [sys.executable, "-c", REFUSE_TORCH, *args],
        capture_output=True, text=True, env=os.environ.copy(), timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout, json.loads(done.stderr.strip().splitlines()[-1])


def torch_query(index_dir: Path, *args: str) -> list[dict]:
    out = run_ok("query", *args, "--json", "--index", index_dir, "--backend", "torch")
    return json.loads(out)["results"]


def assert_same_hits(got: list[dict], want: list[dict]) -> None:
    assert [hit["id"] for hit in got] == [hit["id"] for hit in want]
    for ours, theirs in zip(got, want, strict=True):
        assert abs(ours["score"] - theirs["score"]) < 1e-4


def test_image_query_runs_without_torch_and_matches_the_full_model(
    index_dir: Path, image_folder: Path
) -> None:
    image = sorted(image_folder.iterdir())[3]
    out, modules = light("query", "--image", str(image), "--json", "-k", "5",
                         "--index", str(index_dir))  # fmt: skip
    assert modules == {"heavy": [], "refused": []}
    got = json.loads(out)["results"]
    assert Path(got[0]["path"]).resolve() == image.resolve()
    assert_same_hits(got, torch_query(index_dir, "--image", str(image), "-k", "5"))


def start_light_server(index_dir: Path, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    """A torch-refusing `mmsearch serve` on `index_dir`, answering /health; (process, URL)."""
    return start_serve(index_dir, log=log, timeout_s=120, entry=("-c", REFUSE_TORCH))


def stop(server: subprocess.Popen[bytes], log: Path) -> dict:
    """Stop a light server; the modules it loaded and the imports it refused (the line the
    import hook printed on exit, found among the server's output)."""
    server.send_signal(signal.SIGINT)
    server.wait(timeout=60)
    lines = log.read_text().splitlines()
    return json.loads(next(line for line in reversed(lines) if line.startswith('{"heavy"')))


def test_serve_answers_text_and_image_queries_without_torch(
    index_dir: Path, image_folder: Path
) -> None:
    log = index_dir.parent / "serve.log"
    server, base = start_light_server(index_dir, log)
    try:
        text = httpx.get(f"{base}/search", params={"q": "a red square", "k": 5}, timeout=60)
        image = sorted(image_folder.iterdir())[3]
        upload = httpx.post(f"{base}/search/image", params={"k": 5}, timeout=60,
                            files={"file": (image.name, image.read_bytes())})  # fmt: skip
        broken = httpx.post(f"{base}/search/image", timeout=60,
                            files={"file": ("broken.jpg", b"\xff\xd8\xff not a jpeg")})  # fmt: skip
    finally:
        modules = stop(server, log)
    assert modules == {"heavy": [], "refused": []}
    assert text.status_code == 200, text.text
    assert upload.status_code == 200, upload.text
    assert 400 <= broken.status_code < 500, broken.text  # a clear 4xx, as with the full model
    assert_same_hits(text.json()["results"], torch_query(index_dir, "a red square", "-k", "5"))
    assert_same_hits(
        upload.json()["results"], torch_query(index_dir, "--image", str(image), "-k", "5")
    )


def test_serve_writes_products_without_torch_with_the_full_models_vectors(
    tiny_model: str, tmp_path: Path
) -> None:
    catalog = write_catalog(tmp_path / "shop")
    index_dir = tmp_path / "index"
    done = run_subprocess("index", "--catalog", catalog, "--model", tiny_model, "--index",
                          index_dir, "-q", env=os.environ.copy())  # fmt: skip
    assert done.returncode == 0, done.stderr
    photo = tmp_path / "new.png"
    Image.effect_mandelbrot((96, 80), (-2.0, -1.2, 0.8, 1.2), 60).convert("RGB").save(photo)
    data_url = "data:image/png;base64," + base64.b64encode(photo.read_bytes()).decode()
    log = index_dir.parent / "serve.log"
    server, base = start_light_server(index_dir, log)
    try:
        row = {"title": "a light shoe", "images": [data_url], "price": 12.5}
        created = httpx.put(f"{base}/products/LIGHT-1", json=row, timeout=60)
        found = httpx.post(f"{base}/search/image", params={"k": 5}, timeout=60,
                           files={"file": (photo.name, photo.read_bytes())})  # fmt: skip
    finally:
        modules = stop(server, log)
    assert modules == {"heavy": [], "refused": []}
    assert created.status_code == 201, created.text
    [embedded] = created.json()["images"]
    assert embedded["status"] == "embedded"
    assert found.status_code == 200, found.text
    hits = found.json()["results"]
    assert hits[0]["id"] == embedded["item_id"]
    # the stored vector is the full model's: torch's query vector of the photo finds it with
    # cosine ~1 and ranks the catalog as the light server did
    want = torch_query(index_dir, "--image", str(photo), "-k", "5")
    assert want[0]["id"] == embedded["item_id"] and want[0]["score"] > 0.999
    assert_same_hits(hits, want)


def test_first_use_prints_a_progress_line_while_the_model_is_prepared(
    image_folder: Path, tiny_model: str, tmp_path: Path
) -> None:
    env = {**os.environ, "MMSEARCH_EXPORT_CACHE": str(tmp_path / "fresh-exports")}
    first = run_subprocess("index", image_folder, "--model", tiny_model, "--index",
                           tmp_path / "a", "-q", env=env)  # fmt: skip
    assert first.returncode == 0, first.stderr
    assert "preparing the model for this CPU (first use, ~" in first.stderr
    again = run_subprocess("index", image_folder, "--model", tiny_model, "--index",
                           tmp_path / "b", "-q", env=env)  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert "preparing the model" not in again.stderr
