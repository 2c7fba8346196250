"""`--precision int8`: the exported image tower quantised to int8 by NNCF's post-training
quantisation, calibrated on a sample of the user's own images, cached beside the export.

NNCF (OpenVINO's own quantiser) rather than a hand-written calibration: it places the
quantise/dequantise pairs where OpenVINO's CPU plugin runs int8 kernels (AMX/VNNI), keeps the
transformer's sensitive ops (softmax, layer norm) in float (`ModelType.TRANSFORMER`), and
corrects the biases the rounding shifts. The text tower stays float: a query is one short pass.

The cache entry is a folder `int8/` inside the model's export entry (so it follows that entry's
key: weights, architecture, library versions), holding `image.xml`/`image.bin` and `meta.json`
with each file's size and sha256, the calibration counts and the agreement with fp32 measured on
held-out images when it was built. Like the export, it is built in a temporary folder and
renamed into place, and any file that fails its checksum makes the entry read as missing.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ..config import INT8_CALIBRATION_IMAGES, INT8_HELD_OUT_IMAGES
from ..errors import ModelUnavailableError
from ..files import cached_sha256, file_sha256
from . import runtime

logger = logging.getLogger(__name__)

FOLDER = "int8"
GRAPH = "image.xml"
WEIGHTS = "image.bin"
META = "meta.json"
FORMAT = 1

# pixels of one image (3, H, W) float32, or None when the file did not decode
DecodeOne = Callable[[Path], "npt.NDArray[np.float32] | None"]


def _nncf_version() -> str:
    try:
        return metadata.version("nncf")
    except metadata.PackageNotFoundError:
        return "absent"


def cached_graph(folder: Path) -> tuple[Path, dict[str, Any]] | None:
    """(int8 image graph, its meta) for the export entry `folder`, or None when the entry has
    none, or one built by another NNCF, or one whose files fail their checksums."""
    entry = folder / FOLDER
    try:
        meta = json.loads((entry / META).read_text())
    except (OSError, ValueError):
        return None
    if meta.get("format") != FORMAT or meta.get("nncf") != _nncf_version():
        logger.info("int8 graph in %s was built by other versions; quantising again", entry)
        return None
    for name, recorded in meta.get("files", {}).items():
        path = entry / name
        if not path.is_file() or path.stat().st_size != recorded["bytes"]:
            return None
        if cached_sha256(path) != recorded["sha256"]:
            logger.warning("int8 graph file %s fails its checksum; quantising again", path)
            return None
    if set(meta.get("files", {})) != {GRAPH, WEIGHTS}:
        return None
    return entry / GRAPH, meta


def sample_paths(paths: Sequence[Path], count: int) -> list[Path]:
    """`count` paths spread evenly over `paths` (all of them when there are fewer): a folder's
    files are often sorted by date or subject, so the first N would calibrate on one shoot."""
    if len(paths) <= count:
        return list(paths)
    step = len(paths) / count
    return [paths[int(i * step)] for i in range(count)]


def _cosines(a: npt.NDArray[np.float32], b: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return np.sum(a * b, axis=1)


def quantize_image_tower(
    encoder: runtime.ExportedEncoder,
    paths: Sequence[Path],
    decode: DecodeOne,
    *,
    calibration: int = INT8_CALIBRATION_IMAGES,
    held_out: int = INT8_HELD_OUT_IMAGES,
) -> tuple[Path, dict[str, Any]]:
    """Quantise the encoder's image tower on a sample of `paths` (decoded by `decode`), measure
    it against fp32 on `held_out` further images, cache it and return (graph, meta).

    Raises:
        ModelUnavailableError: NNCF or OpenVINO is missing, or no sample image decodes.
    """
    try:
        import nncf
        import openvino
    except ImportError as err:
        raise ModelUnavailableError(
            "--precision int8 needs nncf: pip install 'mmsearch[int8]' (or pip install nncf)"
        ) from err
    pixels = [p for p in map(decode, sample_paths(paths, calibration + held_out)) if p is not None]
    if not pixels:
        raise ModelUnavailableError(
            "--precision int8 calibrates on the images being indexed, and none of the sampled "
            "ones decoded; index with --precision fp32 or bf16"
        )
    # Hold out every k-th image for the agreement check; with very few images, check on the
    # calibration images themselves (said in the meta).
    k = max(2, len(pixels) // max(held_out, 1))
    check = pixels[::k][:held_out] if len(pixels) >= 2 * held_out else pixels
    check_ids = {id(p) for p in check}
    calibrate = [p for p in pixels if id(p) not in check_ids] or pixels
    source = encoder.folder / encoder.meta["graphs"]["image"]  # the fp32 graph, not image_graph
    model = openvino.Core().read_model(str(source))
    dataset = nncf.Dataset([p[np.newaxis] for p in calibrate])
    quantized = nncf.quantize(
        model,
        dataset,
        model_type=nncf.ModelType.TRANSFORMER,
        subset_size=len(calibrate),
    )
    final = encoder.folder / FOLDER
    staging = Path(tempfile.mkdtemp(prefix=f".{FOLDER}-", dir=encoder.folder))
    try:
        openvino.save_model(quantized, str(staging / GRAPH), compress_to_fp16=False)
        batch = np.stack(check)
        create = runtime.ENGINES["openvino"].create_session
        want = create(source, encoder.threads, "fp32", 0)(batch)
        got = create(staging / GRAPH, encoder.threads, "int8", 0)(batch)
        cosines = _cosines(got, want)
        meta = {
            "format": FORMAT,
            "nncf": _nncf_version(),
            "calibration_images": len(calibrate),
            "held_out_images": len(check) if check is not pixels else 0,
            "agreement": {
                "images": len(check),
                "min_cosine": round(float(cosines.min()), 5),
                "mean_cosine": round(float(cosines.mean()), 5),
            },
            "files": {
                name: {
                    "bytes": (staging / name).stat().st_size,
                    "sha256": file_sha256(staging / name),
                }
                for name in (GRAPH, WEIGHTS)
            },
        }
        (staging / META).write_text(json.dumps(meta, indent=2, sort_keys=True))
        if final.exists():  # stale or damaged: the caller chose to rebuild it
            shutil.rmtree(final, ignore_errors=True)
        os.replace(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return final / GRAPH, meta
