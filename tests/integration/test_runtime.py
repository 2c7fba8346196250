"""The exported CPU runtime: same vectors as open_clip fp32 eager, a cache that never trusts a
damaged entry, torch as the fallback, and no torch import on the runtime side."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from testdata import TINY_MODEL_CONFIG

from benchmarks.make_model import write_random_model
from retrieval.embedders import runtime
from retrieval.embedders.open_clip import OpenClipEmbedder
from retrieval.errors import ModelUnavailableError
from retrieval.types import ModelSpec

pytestmark = pytest.mark.runtime


@pytest.fixture(autouse=True)
def default_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests are about the exported runtime and what `auto` picks: no pinned backend."""
    monkeypatch.delenv("MMSEARCH_BACKEND")


REPO = Path(__file__).resolve().parents[2]
# Weight hashes of the function-level loads, relative to the test's own folder (conftest's
# isolated_state changes into tmp_path), so nothing lands in the user's ~/.cache.
HASHES = Path("hashes.json")
TOLERANCE = 1e-4

# A tiny ModifiedResNet image tower (open_clip builds one when vision_cfg.layers is a list):
# the non-ViT architecture the runtime must match too.
TINY_RESNET_CONFIG = {
    "model_cfg": {
        **TINY_MODEL_CONFIG["model_cfg"],
        "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 16, "head_width": 8},
    },
    "preprocess_cfg": TINY_MODEL_CONFIG["preprocess_cfg"],
}

TEXTS = [
    "",
    "a dog",
    "a photo of a goldfish swimming in a bowl",
    "an extremely long caption " * 20,  # longer than the context: cut at 77 tokens
]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("exports")


@pytest.fixture(scope="module", params=["vit", "resnet"])
def model_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = TINY_MODEL_CONFIG if request.param == "vit" else TINY_RESNET_CONFIG
    return write_random_model(tmp_path_factory.mktemp("models") / request.param, config, seed=1)


@pytest.fixture(scope="module")
def embedders(model_dir: Path, cache_dir: Path) -> tuple[OpenClipEmbedder, OpenClipEmbedder]:
    spec = ModelSpec(f"local-dir:{model_dir}", None)
    exported = OpenClipEmbedder.load(spec, device="cpu", backend="openvino", cache_dir=cache_dir)
    eager = OpenClipEmbedder.load(spec, device="cpu", backend="torch", cache_dir=cache_dir)
    return exported, eager


@pytest.mark.parametrize("batch", [1, 3, 8])
def test_runtime_images_match_torch_fp32(embedders, batch: int) -> None:
    exported, eager = embedders
    assert exported.backend == runtime.DEFAULT_ENGINE and eager.backend == "torch"
    pixels = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(batch))
    got, want = exported.encode_images(pixels), eager.encode_images(pixels)
    assert got.dtype == np.float32 and got.shape == (batch, 32)
    np.testing.assert_allclose(got, want, atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("texts", [TEXTS[:1], TEXTS[1:2], TEXTS, TEXTS[2:] * 3])
def test_runtime_texts_match_torch_fp32(embedders, texts: list[str]) -> None:
    exported, eager = embedders
    got, want = exported.encode_texts(texts), eager.encode_texts(texts)
    assert got.shape == (len(texts), 32)
    np.testing.assert_allclose(got, want, atol=TOLERANCE, rtol=0)


def test_runtime_texts_match_open_clip_untrimmed(embedders, model_dir: Path) -> None:
    exported, _ = embedders
    model = open_clip.create_model(f"local-dir:{model_dir}").eval()
    tokens = open_clip.get_tokenizer(f"local-dir:{model_dir}")(TEXTS)
    with torch.no_grad():
        want = torch.nn.functional.normalize(model.encode_text(tokens), dim=-1).numpy()
    np.testing.assert_allclose(exported.encode_texts(TEXTS), want, atol=TOLERANCE, rtol=0)


def test_second_load_reuses_the_cache(embedders, model_dir: Path, cache_dir: Path) -> None:
    exported, _ = embedders
    entry = exported.encoder.folder
    image = entry / exported.encoder.meta["graphs"]["image"]
    before = image.stat().st_mtime_ns
    spec = ModelSpec(f"local-dir:{model_dir}", None)
    again = OpenClipEmbedder.load(spec, device="cpu", cache_dir=cache_dir, hash_cache=HASHES)
    assert again.encoder.folder == entry
    assert image.stat().st_mtime_ns == before


def _entry(tiny_model: str, cache: Path) -> Path:
    return OpenClipEmbedder.load(
        ModelSpec(tiny_model, None), device="cpu", cache_dir=cache, hash_cache=HASHES
    ).encoder.folder


def _graph(entry: Path, tower: str, suffix: str) -> Path:
    meta = json.loads((entry / runtime.META_FILE).read_text())
    (name,) = [name for name in runtime.graph_files(meta, tower) if name.endswith(suffix)]
    return entry / name


def test_truncated_entry_is_rebuilt(tiny_model: str, tmp_path: Path) -> None:
    entry = _entry(tiny_model, tmp_path)
    graph = _graph(entry, "text", ".bin")  # the IR's weights
    graph.write_bytes(graph.read_bytes()[:1000])
    assert runtime.read_meta(entry) is None
    rebuilt = _entry(tiny_model, tmp_path)
    assert rebuilt == entry and runtime.read_meta(entry) is not None
    assert graph.stat().st_size > 1000


def test_flipped_byte_is_detected_and_rebuilt(tiny_model: str, tmp_path: Path) -> None:
    entry = _entry(tiny_model, tmp_path)
    graph = _graph(entry, "image", ".xml")  # the IR's graph: the .bin is checked the same way
    data = bytearray(graph.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size: only the checksum can tell
    graph.write_bytes(bytes(data))
    meta = json.loads((entry / runtime.META_FILE).read_text())
    assert runtime.read_meta(entry, meta["key"]) is None
    spec = ModelSpec(tiny_model, None)
    embedder = OpenClipEmbedder.load(spec, device="cpu", cache_dir=tmp_path, hash_cache=HASHES)
    assert runtime.read_meta(entry, meta["key"]) is not None
    eager = OpenClipEmbedder.load(spec, device="cpu", backend="torch", hash_cache=HASHES)
    pixels = torch.randn(2, 3, 32, 32)
    np.testing.assert_allclose(
        embedder.encode_images(pixels), eager.encode_images(pixels), atol=TOLERANCE, rtol=0
    )


def test_stale_entry_from_other_versions_is_not_used(tiny_model: str, tmp_path: Path) -> None:
    entry = _entry(tiny_model, tmp_path)
    meta_path = entry / runtime.META_FILE
    meta = json.loads(meta_path.read_text())
    meta["format"] = runtime.FORMAT - 1
    meta_path.write_text(json.dumps(meta))
    assert runtime.open_cached(meta["key"], threads=1, cache_dir=tmp_path) is None
    _entry(tiny_model, tmp_path)
    assert json.loads(meta_path.read_text())["format"] == runtime.FORMAT


def test_architecture_that_does_not_export_falls_back_to_torch(
    tiny_model: str, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch
) -> None:
    # Every tiny open_clip family tried (ViT, ModifiedResNet, timm ConvNeXt, attentional pool,
    # CoCa) exports with torch 2.14, so the exporters' rejection is injected at their calls:
    # OpenVINO's conversion first, then the ONNX export it falls back to.
    import openvino

    from retrieval.embedders import export

    def reject(*args, **kwargs):
        raise torch._dynamo.exc.Unsupported("data-dependent control flow")

    monkeypatch.setattr(openvino, "convert_model", reject)
    monkeypatch.setattr(export.torch.onnx, "export", reject)
    cache = tmp_path / "cache"
    with caplog.at_level("WARNING"):
        embedder = OpenClipEmbedder.load(
            ModelSpec(tiny_model, None), device="cpu", cache_dir=cache, hash_cache=HASHES
        )
    assert embedder.backend == "torch"
    assert "does not export (Unsupported: data-dependent control flow" in caplog.text
    assert "running it with torch" in caplog.text
    assert embedder.encode_texts(["a dog"]).shape == (1, 32)
    assert list(cache.iterdir()) == []  # the half-built entry was removed
    with pytest.raises(ModelUnavailableError, match="--backend torch"):
        OpenClipEmbedder.load(
            ModelSpec(tiny_model, None),
            device="cpu",
            backend="openvino",
            cache_dir=cache,
            hash_cache=HASHES,
        )


def test_a_model_openvino_cannot_convert_goes_through_the_onnx_export(
    tiny_model: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import openvino

    def reject(*args, **kwargs):
        raise RuntimeError("Cannot convert aten::some_op")

    monkeypatch.setattr(openvino, "convert_model", reject)
    spec = ModelSpec(tiny_model, None)
    embedder = OpenClipEmbedder.load(spec, device="cpu", cache_dir=tmp_path / "exports")
    assert embedder.backend == "openvino"
    entry = embedder.encoder.folder
    assert embedder.encoder.meta["graphs"] == {"image": "image.onnx", "text": "text.onnx"}
    assert sorted(path.name for path in entry.iterdir()) == ["image.onnx", "meta.json", "text.onnx"]
    eager = OpenClipEmbedder.load(spec, device="cpu", backend="torch")
    pixels = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    np.testing.assert_allclose(
        embedder.encode_images(pixels), eager.encode_images(pixels), atol=TOLERANCE, rtol=0
    )
    np.testing.assert_allclose(
        embedder.encode_texts(TEXTS), eager.encode_texts(TEXTS), atol=TOLERANCE, rtol=0
    )


def test_runtime_module_does_not_import_torch(embedders, cache_dir: Path) -> None:
    exported, _ = embedders
    tokens = exported.tokenizer(TEXTS).numpy()
    np.save(cache_dir / "tokens.npy", tokens)
    key = exported.encoder.meta["key"]
    script = (
        "import sys, numpy as np\n"
        "from retrieval.embedders import runtime\n"
        f"encoder = runtime.open_cached({key!r}, threads=1, cache_dir=__import__('pathlib')"
        f".Path({str(cache_dir)!r}), towers=('text',))\n"
        f"vectors = encoder.encode_tokens(np.load({str(cache_dir / 'tokens.npy')!r}))\n"
        f"np.save({str(cache_dir / 'out.npy')!r}, vectors)\n"
        "heavy = sorted(m for m in ('torch', 'open_clip', 'torchvision') if m in sys.modules)\n"
        "print('heavy:', heavy)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )
    assert "heavy: []" in result.stdout, result.stdout + result.stderr
    np.testing.assert_allclose(
        np.load(cache_dir / "out.npy"), exported.encode_texts(TEXTS), atol=1e-6, rtol=0
    )


def test_runtime_backend_refused_on_cuda_and_for_fp16() -> None:
    from retrieval.embedders.backend import resolve_backend

    assert resolve_backend("auto", "cuda", "auto") == "torch"
    assert resolve_backend("auto", "cpu", "fp16") == "torch"
    with pytest.raises(ModelUnavailableError, match="--backend torch"):
        resolve_backend("openvino", "cuda", "auto")
    with pytest.raises(ModelUnavailableError, match="unknown backend"):
        resolve_backend("tensorrt", "cpu", "auto")


def test_entry_holds_one_form_of_the_model_about_the_size_of_its_weights(
    tiny_model: str, tmp_path: Path
) -> None:
    entry = _entry(tiny_model, tmp_path / "exports")
    meta = json.loads((entry / runtime.META_FILE).read_text())
    assert meta["graphs"] == {"image": "image.xml", "text": "text.xml"}
    assert sorted(path.name for path in entry.iterdir()) == [
        "image.bin", "image.xml", "meta.json", "text.bin", "text.xml",
    ]  # fmt: skip
    weights = Path(tiny_model.removeprefix("local-dir:")) / "open_clip_model.safetensors"
    cached = sum(path.stat().st_size for path in entry.iterdir() if path.suffix == ".bin")
    # fp32 weights, each tower's once (the tiny model's graphs themselves are a few hundred KB)
    assert 0.9 * weights.stat().st_size <= cached <= 1.2 * weights.stat().st_size


def test_a_killed_export_leaves_nothing_that_is_used_and_is_cleaned_up(
    tiny_model: str, tmp_path: Path
) -> None:
    from retrieval.embedders import export

    cache = tmp_path / "exports"
    script = (
        "import os, signal\n"
        "from pathlib import Path\n"
        "from retrieval.embedders import runtime\n"
        "from retrieval.embedders.open_clip import OpenClipEmbedder\n"
        "from retrieval.types import ModelSpec\n"
        "def die(*args, **kwargs):\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "runtime.write_meta = die  # killed after both towers are written, before meta.json\n"
        f"OpenClipEmbedder.load(ModelSpec({tiny_model!r}, None), device='cpu', "
        f"cache_dir=Path({str(cache)!r}))\n"
    )
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    killed = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, check=False)
    assert killed.returncode == -9
    (abandoned,) = [path for path in cache.iterdir() if path.is_dir()]  # the staging folder
    assert abandoned.name.startswith(".") and (abandoned / "image.bin").is_file()
    entry = _entry(tiny_model, cache)  # exports again: nothing half-made was taken
    assert runtime.read_meta(entry) is not None
    assert [path.name for path in cache.iterdir() if path.is_dir()] == [entry.name]  # no staging
    assert export.remove_abandoned(entry) == []


def test_mapped_weights_are_released_after_a_new_shape_and_results_stay_the_same(
    embedders,
) -> None:
    import os

    exported, _ = embedders
    pixels = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    first = exported.encode_images(pixels)  # a new shape: its run released the pages already
    weights = {os.path.realpath(exported.encoder.folder / "image.bin")}
    assert runtime.drop_mapped_pages(weights) >= 1  # OpenVINO keeps the .bin mapped
    np.testing.assert_array_equal(exported.encode_images(pixels), first)  # read back from disk
    assert runtime.drop_mapped_pages({"/nonexistent.bin"}) == 0


@pytest.mark.parametrize("batch", [1, 2, 5, 8])
def test_throughput_mode_of_bulk_indexing_gives_the_same_vectors(
    embedders, model_dir: Path, cache_dir: Path, batch: int
) -> None:
    # `mmsearch index` runs the graphs in OpenVINO's throughput mode, each batch split over
    # the streams: the rows must come back whole and in order (odd batches split unevenly).
    exported, eager = embedders
    spec = ModelSpec(f"local-dir:{model_dir}", None)
    bulk = OpenClipEmbedder.load(
        spec, device="cpu", backend="openvino", cache_dir=cache_dir, threads=2, throughput=True
    )
    assert bulk.encoder.throughput == bulk.batch_size and not exported.encoder.throughput
    pixels = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(10 + batch))
    got = bulk.encode_images(pixels)
    np.testing.assert_allclose(got, eager.encode_images(pixels), atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(got, exported.encode_images(pixels), atol=1e-5, rtol=0)
    texts = (TEXTS * 2)[: batch + 1]
    got = bulk.encode_texts(texts)
    np.testing.assert_allclose(got, eager.encode_texts(texts), atol=TOLERANCE, rtol=0)
    # A batch the graph refuses fails as itself and leaves no stream busy ("Infer Request is
    # busy") for the next one. (The next batch is a size not run before: after a failed shape
    # OpenVINO 2025 can refuse a shape it had accepted, a quirk of its own, queries or not.)
    with pytest.raises(RuntimeError):
        bulk.encoder.encode_images(np.zeros((batch + 1, 3, 16, 16), dtype=np.float32))
    more = torch.randn(batch + 10, 3, 32, 32, generator=torch.Generator().manual_seed(batch))
    got = bulk.encode_images(more)
    np.testing.assert_allclose(got, eager.encode_images(more), atol=TOLERANCE, rtol=0)


def test_runtime_answers_many_threads_at_once(embedders) -> None:
    # `serve` embeds image uploads from up to --max-concurrency worker threads at once; one
    # shared OpenVINO InferRequest used to fail them with "Infer Request is busy" (HTTP 500).
    from concurrent.futures import ThreadPoolExecutor

    exported, _ = embedders
    batches = [torch.randn(1 + n % 3, 3, 32, 32, generator=torch.Generator().manual_seed(n))
               for n in range(48)]  # fmt: skip
    serial = [exported.encode_images(pixels) for pixels in batches]
    with ThreadPoolExecutor(16) as pool:
        parallel = list(pool.map(exported.encode_images, batches))
        texts = list(pool.map(lambda n: exported.encode_texts([TEXTS[n % 4]]), range(48)))
    for got, want in zip(parallel, serial, strict=True):
        np.testing.assert_array_equal(got, want)
    for n, got in enumerate(texts):
        np.testing.assert_array_equal(got, exported.encode_texts([TEXTS[n % 4]]))


def test_an_export_removes_entries_of_older_layouts_and_keeps_the_rest(
    tiny_model: str, tmp_path: Path
) -> None:
    root = tmp_path / "exports"

    def entry(name: str, meta: dict | None) -> Path:
        folder = root / name
        folder.mkdir(parents=True)
        (folder / "image.onnx").write_bytes(b"x" * 4096)
        if meta is not None:
            (folder / runtime.META_FILE).write_text(json.dumps(meta))
        return folder

    older = entry("a" * 32, {"format": runtime.FORMAT - 1, "key": "old"})
    other_versions = entry("b" * 32, {"format": runtime.FORMAT, "key": "other torch"})
    exporting = entry("c" * 32, None)  # no meta.json yet: an export in progress, or not ours
    staging = entry(".d-123-x", {"format": runtime.FORMAT - 1})
    made = _entry(tiny_model, root)
    assert not older.exists()
    assert other_versions.is_dir() and exporting.is_dir() and staging.is_dir()
    assert runtime.read_meta(made) is not None
