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
    before = (entry / runtime.IMAGE_FILE).stat().st_mtime_ns
    spec = ModelSpec(f"local-dir:{model_dir}", None)
    again = OpenClipEmbedder.load(spec, device="cpu", cache_dir=cache_dir, hash_cache=HASHES)
    assert again.encoder.folder == entry
    assert (entry / runtime.IMAGE_FILE).stat().st_mtime_ns == before


def _entry(tiny_model: str, cache: Path) -> Path:
    return OpenClipEmbedder.load(
        ModelSpec(tiny_model, None), device="cpu", cache_dir=cache, hash_cache=HASHES
    ).encoder.folder


def test_truncated_entry_is_rebuilt(tiny_model: str, tmp_path: Path) -> None:
    entry = _entry(tiny_model, tmp_path)
    graph = entry / runtime.TEXT_FILE
    graph.write_bytes(graph.read_bytes()[:1000])
    assert runtime.read_meta(entry) is None
    rebuilt = _entry(tiny_model, tmp_path)
    assert rebuilt == entry and runtime.read_meta(entry) is not None
    assert graph.stat().st_size > 1000


def test_flipped_byte_is_detected_and_rebuilt(tiny_model: str, tmp_path: Path) -> None:
    entry = _entry(tiny_model, tmp_path)
    graph = entry / runtime.IMAGE_FILE
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
    # CoCa) exports with torch 2.14, so the exporter's rejection is injected at its call.
    from retrieval.embedders import export

    def reject(*args, **kwargs):
        raise torch._dynamo.exc.Unsupported("data-dependent control flow")

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


def _encode_in_new_session(folder: Path, tokens: np.ndarray) -> np.ndarray:
    encoder = runtime.open_folder(folder, threads=1)
    return encoder.encode_tokens(tokens)


def test_compiled_blobs_are_reused_and_never_trusted_when_damaged(
    tiny_model: str, tmp_path: Path
) -> None:
    entry = _entry(tiny_model, tmp_path / "exports")
    tokens = open_clip.get_tokenizer(tiny_model)(TEXTS).numpy()
    first = _encode_in_new_session(entry, tokens)  # compiles and writes the blob
    blobs = entry / runtime.OPENVINO_BLOBS
    recorded = json.loads((blobs / runtime.BLOBS_FILE).read_text())
    assert recorded and all((blobs / name).is_file() for name in recorded)
    mtimes = {name: (blobs / name).stat().st_mtime_ns for name in recorded}
    np.testing.assert_array_equal(_encode_in_new_session(entry, tokens), first)
    assert {name: (blobs / name).stat().st_mtime_ns for name in recorded} == mtimes  # imported

    name = next(iter(recorded))
    data = bytearray((blobs / name).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (blobs / name).write_bytes(bytes(data))
    (blobs / "half-written.blob").write_bytes(b"\0" * 100)  # as a killed compile leaves
    np.testing.assert_array_equal(_encode_in_new_session(entry, tokens), first)
    assert not (blobs / "half-written.blob").exists()
    assert json.loads((blobs / runtime.BLOBS_FILE).read_text()) == {
        blob.name: runtime.cached_sha256(blob) for blob in runtime._blob_files(blobs)
    }


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
