"""Which precision the exported runtime runs in is recorded with the index and shown by `info`,
with the reason; `--precision int8` quantises the image tower once per model on the run's own
images, reports its agreement with fp32, and later runs reuse the cached int8 graph."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from clirun import invoke, run_ok
from testdata import make_images

from retrieval.embedders import quantize
from retrieval.embedders.cpu_precision import cpu_flags, resolve_cpu_precision

pytestmark = pytest.mark.runtime


@pytest.fixture(autouse=True)
def default_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    """About the exported runtime and what `auto` picks: no pinned backend."""
    monkeypatch.delenv("MMSEARCH_BACKEND")


def embedder_info(index_dir: Path) -> dict:
    return json.loads(run_ok("info", "--json", "--index", index_dir))["embedder"]


def test_info_says_which_precision_ran_and_why(
    image_folder: Path, tiny_model: str, tmp_path: Path
) -> None:
    run_ok("index", image_folder, "--model", tiny_model, "-q", "--index", tmp_path / "auto")
    want, reason = resolve_cpu_precision("auto", cpu_flags())
    assert embedder_info(tmp_path / "auto") == {
        "backend": "openvino",
        "precision": want,
        "precision_reason": reason,
    }
    assert f"openvino {want} ({reason}; last run that embedded)" in run_ok(
        "info", "--index", tmp_path / "auto"
    )
    exact = ("--precision", "fp32", "--index", tmp_path / "exact")
    run_ok("index", image_folder, "--model", tiny_model, "-q", *exact)
    assert embedder_info(tmp_path / "exact")["precision"] == "fp32"
    assert embedder_info(tmp_path / "exact")["precision_reason"] == "--precision fp32"


def test_int8_is_quantised_once_per_model_and_reports_its_agreement(
    tiny_model: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MMSEARCH_EXPORT_CACHE", str(tmp_path / "exports"))
    photos = tmp_path / "photos"
    make_images(photos, 40, size=(64, 48))
    first = invoke("index", photos, "--model", tiny_model, "--precision", "int8", "-q",
                   "--index", tmp_path / "one")  # fmt: skip
    assert first.exit_code == 0, first.output
    assert "int8 image tower vs fp32 on 8 held-out images: min cosine" in first.stderr
    recorded = embedder_info(tmp_path / "one")
    assert recorded["precision"] == "int8"
    agreement = recorded["int8"]["agreement"]
    assert recorded["int8"]["calibration_images"] == 32 and agreement["images"] == 8
    assert -1 <= agreement["min_cosine"] <= agreement["mean_cosine"] <= 1.0001
    [entry] = [p.parent for p in (tmp_path / "exports").glob(f"*/{quantize.FOLDER}")]
    graph = entry / quantize.FOLDER / quantize.GRAPH
    built = graph.stat().st_mtime_ns

    def no_quantising(*args: object, **kwargs: object) -> None:
        raise AssertionError("quantised again although the int8 graph is cached")

    monkeypatch.setattr(quantize, "quantize_image_tower", no_quantising)
    again = invoke("index", photos, "--model", tiny_model, "--precision", "int8", "-q",
                   "--index", tmp_path / "two")  # fmt: skip
    assert again.exit_code == 0, again.output
    assert graph.stat().st_mtime_ns == built
    assert embedder_info(tmp_path / "two")["int8"] == recorded["int8"]
    # Same images through the int8 tower in both indexes: the same vectors.
    one = run_ok("query", "--image", photos / "img_003.png", "--json", "--index", tmp_path / "one")
    two = run_ok("query", "--image", photos / "img_003.png", "--json", "--index", tmp_path / "two")
    assert json.loads(one)["results"] == json.loads(two)["results"]


def test_a_damaged_int8_graph_is_quantised_again(
    tiny_model: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MMSEARCH_EXPORT_CACHE", str(tmp_path / "exports"))
    photos = tmp_path / "photos"
    make_images(photos, 12)
    run_ok("index", photos, "--model", tiny_model, "--precision", "int8", "-q",
           "--index", tmp_path / "one")  # fmt: skip
    [weights] = (tmp_path / "exports").glob(f"*/{quantize.FOLDER}/{quantize.WEIGHTS}")
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    assert quantize.cached_graph(weights.parent.parent) is None
    result = invoke("index", photos, "--model", tiny_model, "--precision", "int8", "-q",
                    "--index", tmp_path / "two")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert quantize.cached_graph(weights.parent.parent) is not None
    # 12 images: too few to hold 8 out, so the agreement is measured on the calibration images
    assert "on its 12 calibration images" in result.stderr
