"""benchmarks/gpu_pipeline.py, the script a GPU loan runs in one go, in its CPU mode on a tiny
input: every section runs and prints its figures, so the script does not rot between loans."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image
from testdata import make_images

from benchmarks import gpu_pipeline

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities")


def test_cpu_mode_prints_every_section(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "source"
    for png in make_images(tmp_path / "png", 3, size=(64, 48)):
        source.mkdir(exist_ok=True)
        Image.open(png).save(source / f"{png.stem}.jpg", quality=90)
    gpu_pipeline.main(
        ["--device", "cpu", "--source", str(source), "--count", "8",
         "--model-dir", str(tiny_model_dir), "--batch-size", "4", "--workers", "0",
         "--baseline-limit", "4", "--baseline-batch-size", "4",
         "--profile-count", "8", "--agreement-count", "8"]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert "wrote 8 variants" in out
    for stage in (
        "read (1 thread)",
        "sha256",
        "Pillow decode",
        "decode_jpeg batched on cpu",
        "tensor resize+normalise",
        "H2D copy",
        "forward (fp32",
        "SQLite commit",
    ):
        assert f"| {stage}" in out, stage
    assert "| hand-rolled loop" in out and "| mmsearch index --decode cpu" in out
    assert "| mmsearch index --decode gpu: GPU decode path | 8 |" in out
    agreement = next(line for line in out.splitlines() if line.startswith("min cosine"))
    assert float(agreement.split()[2]) >= 0.995
