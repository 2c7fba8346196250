"""Evaluation data and metrics: `image,caption` pairs files, the standard CLIP retrieval
protocol (Recall@K, median and mean rank) with worst-case tie breaking, index-vs-exact overlap,
latency percentiles and the image perturbations of the robustness check.

Pure numpy and PIL: no model, no faiss, so every number here can be checked by hand."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from ..errors import InputFileError, InvalidQueryError
from ..files import canonical_root

TIES_NOTE = (
    "ties broken as a worst case: a wrong item scoring exactly as high as the right one "
    "ranks above it"
)
IMAGE_COLUMNS = ("image", "path", "file", "filepath")
CAPTION_COLUMNS = ("caption", "text", "title")
# Query blocks of this many rows keep the (queries x items) score matrix near 32 MB at 1M items.
SCORE_CHUNK = 8
MISSING_SHOWN = 5  # missing images listed in the error message before "and N more"


@dataclass(frozen=True)
class Pairs:
    """Distinct images (first-seen order) and one caption per pairs row, each naming its image."""

    images: list[Path]
    captions: list[str]
    caption_image: np.ndarray  # int64 (n_captions,): index into `images`

    @property
    def image_captions(self) -> list[np.ndarray]:
        """For each image, the indexes of its captions."""
        order = np.argsort(self.caption_image, kind="stable")
        bounds = np.searchsorted(self.caption_image[order], np.arange(len(self.images) + 1))
        return [order[bounds[i] : bounds[i + 1]] for i in range(len(self.images))]

    def subset(self, keep_images: Sequence[int]) -> Pairs:
        """Only the given images (by index) and their captions, renumbered."""
        renumber = {old: new for new, old in enumerate(keep_images)}
        rows = [i for i, img in enumerate(self.caption_image.tolist()) if img in renumber]
        return Pairs(
            images=[self.images[i] for i in keep_images],
            captions=[self.captions[i] for i in rows],
            caption_image=np.asarray(
                [renumber[int(self.caption_image[i])] for i in rows], dtype=np.int64
            ),
        )


def load_pairs(path: Path) -> Pairs:
    """Read a CSV (`image` and `caption` columns; others ignored) or JSONL (`image` and `caption`
    or `captions` list) pairs file. Image paths are relative to the file or absolute.

    Raises:
        InputFileError: the file is missing or malformed, or names images that do not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"pairs file {path} does not exist")
    try:
        raw = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise InputFileError(f"cannot read pairs file {path}: {err}") from err
    if path.suffix.lower() in {".jsonl", ".ndjson"}:
        rows = _jsonl_rows(path, raw)
    else:
        rows = _csv_rows(path, raw)
    if not rows:
        raise InputFileError(f"pairs file {path} has no image,caption rows")
    base = path.parent
    index_of: dict[Path, int] = {}
    captions: list[str] = []
    owner: list[int] = []
    missing: list[str] = []
    for where, image, caption in rows:
        # The real path, as `index` names a file found under a root (files.py), so two
        # spellings of one image are one image and an indexed file's vector is reused.
        image_path = canonical_root(base / Path(image).expanduser())
        if image_path not in index_of:
            if not image_path.is_file():
                missing.append(f"{where}: {image_path}")
            index_of[image_path] = len(index_of)
        captions.append(caption)
        owner.append(index_of[image_path])
    if missing:
        more = len(missing) - MISSING_SHOWN
        shown = "; ".join(missing[:MISSING_SHOWN]) + (f"; and {more} more" if more > 0 else "")
        raise InputFileError(
            f"{len(missing)} image(s) named in {path} do not exist: {shown}. Paths are relative "
            "to the pairs file's folder or absolute; fix or remove those rows"
        )
    return Pairs(list(index_of), captions, np.asarray(owner, dtype=np.int64))


def _csv_rows(path: Path, raw: str) -> list[tuple[str, str, str]]:
    reader = csv.DictReader(io.StringIO(raw))
    fields = reader.fieldnames or []
    image_col = next((c for c in IMAGE_COLUMNS if c in fields), None)
    caption_col = next((c for c in CAPTION_COLUMNS if c in fields), None)
    if image_col is None or caption_col is None:
        raise InputFileError(
            f"{path} needs an image column ({'/'.join(IMAGE_COLUMNS)}) and a caption column "
            f"({'/'.join(CAPTION_COLUMNS)}); its columns are: {', '.join(fields) or 'none'}"
        )
    rows = []
    for number, row in enumerate(reader, start=2):
        image, caption = (row.get(image_col) or "").strip(), (row.get(caption_col) or "").strip()
        if not image or not caption:
            raise InputFileError(f"{path}:{number}: empty {image_col} or {caption_col}")
        rows.append((f"{path.name}:{number}", image, caption))
    return rows


def _jsonl_rows(path: Path, raw: str) -> list[tuple[str, str, str]]:
    rows = []
    for number, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path.name}:{number}"
        try:
            record = json.loads(line)
        except ValueError as err:
            raise InputFileError(f"{where}: not valid JSON ({err})") from err
        captions = (
            record.get("captions", [record.get("caption")]) if isinstance(record, dict) else None
        )
        image = record.get("image") if isinstance(record, dict) else None
        if not isinstance(image, str) or not isinstance(captions, list) or not captions:
            raise InputFileError(
                f'{where}: expected {{"image": "path", "caption": "text"}} (or "captions": [...])'
            )
        for caption in captions:
            if not isinstance(caption, str) or not caption.strip():
                raise InputFileError(f"{where}: captions must be non-empty strings")
            rows.append((where, image, caption.strip()))
    return rows


# -- metrics ----------------------------------------------------------------------------------
def exact_ranks(
    queries: np.ndarray, items: np.ndarray, correct: Sequence[np.ndarray]
) -> np.ndarray:
    """1-based rank of the best-scoring correct item for each query, exact (inner product).

    `correct[q]` holds the indexes of the items that answer query q. Ties count against the
    query: rank = 1 + the number of wrong items scoring at least the best correct score."""
    ranks = np.empty(len(queries), dtype=np.int64)
    for start in range(0, len(queries), SCORE_CHUNK * 128):
        block = queries[start : start + SCORE_CHUNK * 128] @ items.T
        for row, scores in enumerate(block):
            mask = np.zeros(len(items), dtype=bool)
            mask[correct[start + row]] = True
            best = scores[mask].max()
            ranks[start + row] = 1 + int(np.count_nonzero(scores[~mask] >= best))
    return ranks


def ranks_from_results(
    scores: np.ndarray, ids: np.ndarray, correct: Sequence[np.ndarray]
) -> np.ndarray:
    """Ranks from top-k result lists (an approximate index's answer), worst case on ties;
    a query whose answer is not in its list gets rank k + 1 ("beyond k")."""
    depth = ids.shape[1]
    ranks = np.full(len(ids), depth + 1, dtype=np.int64)
    for q, (row_scores, row_ids) in enumerate(zip(scores, ids, strict=True)):
        hit = np.isin(row_ids, correct[q]) & (row_ids >= 0)
        if hit.any():
            best = row_scores[hit].max()
            ranks[q] = 1 + int(np.count_nonzero((row_scores >= best) & ~hit & (row_ids >= 0)))
    return ranks


def recall_metrics(
    ranks: np.ndarray, ks: Sequence[int], *, with_ranks: bool = True
) -> dict[str, Any]:
    """`recall@k` (fraction of queries whose answer ranks <= k) for each k, plus median and
    mean rank when the ranks are exact."""
    out: dict[str, Any] = {"queries": int(len(ranks))}
    for k in ks:
        out[f"recall@{k}"] = float(np.mean(ranks <= k)) if len(ranks) else 0.0
    if with_ranks:
        out["median_rank"] = float(np.median(ranks)) if len(ranks) else 0.0
        out["mean_rank"] = float(np.mean(ranks)) if len(ranks) else 0.0
    return out


def recall_curve(ranks: np.ndarray, max_k: int) -> list[float]:
    """Recall@1..max_k, for plots."""
    return [float(np.mean(ranks <= k)) for k in range(1, max_k + 1)] if len(ranks) else []


def overlap_at_k(queries: np.ndarray, items: np.ndarray, approx_ids: np.ndarray, k: int) -> float:
    """Recall@k of an approximate answer against exact search, tie-aware: a returned item counts
    when its exact score reaches the exact k-th best score (so equal-scoring duplicates that
    faiss orders differently are not misses)."""
    if not len(queries) or k < 1:
        return 1.0
    found = []
    for query, ids in zip(queries, approx_ids[:, :k], strict=True):
        scores = items @ query
        kth = np.partition(scores, len(scores) - k)[len(scores) - k]
        valid = ids[ids >= 0]
        found.append(min(k, int(np.count_nonzero(scores[valid] >= kth))) / k)
    return float(np.mean(found))


def latency_summary(seconds: Sequence[float]) -> dict[str, float]:
    """p50/p99/mean latency in milliseconds and queries/s (one query at a time)."""
    values = np.asarray(seconds, dtype=np.float64)
    if not len(values):
        return {"queries": 0, "p50_ms": 0.0, "p99_ms": 0.0, "mean_ms": 0.0, "qps": 0.0}
    mean = float(values.mean())
    return {
        "queries": int(len(values)),
        "p50_ms": float(np.percentile(values, 50) * 1000),
        "p99_ms": float(np.percentile(values, 99) * 1000),
        "mean_ms": mean * 1000,
        "qps": 1.0 / mean if mean > 0 else 0.0,
    }


def parse_ks(text: str) -> list[int]:
    """'1,5,10' -> [1, 5, 10] (sorted, distinct, positive)."""
    try:
        ks = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        ks = []
    if not ks or ks[0] < 1:
        raise InvalidQueryError(
            f"-k takes positive integers joined by commas, like 1,5,10; got {text!r}"
        )
    return ks


# -- robustness -------------------------------------------------------------------------------
JPEG_QUALITY = 20
CROP_FRACTION = 0.8
ROTATION_DEGREES = 10
NOISE_SIGMA = 25.0  # on 0..255 pixels: clearly visible grain, the usual "moderate" level
NOISE_SEED = 0


def _jpeg(image: Image.Image) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def _half(image: Image.Image) -> Image.Image:
    return image.resize((max(1, image.width // 2), max(1, image.height // 2)), Image.BICUBIC)


def _crop(image: Image.Image) -> Image.Image:
    width, height = round(image.width * CROP_FRACTION), round(image.height * CROP_FRACTION)
    left, top = (image.width - width) // 2, (image.height - height) // 2
    return image.crop((left, top, left + width, top + height))


def _gray(image: Image.Image) -> Image.Image:
    return ImageOps.grayscale(image).convert("RGB")


def _rotate(image: Image.Image) -> Image.Image:
    return image.rotate(ROTATION_DEGREES, resample=Image.BICUBIC)


def _noise(image: Image.Image) -> Image.Image:
    rng = np.random.default_rng(NOISE_SEED)
    pixels = np.asarray(image, dtype=np.float32)
    noisy = pixels + rng.normal(0.0, NOISE_SIGMA, size=pixels.shape)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


PERTURBATIONS = {
    "jpeg_q20": _jpeg,
    "half_resolution": _half,
    "center_crop_80": _crop,
    "grayscale": _gray,
    "rotate_10": _rotate,
    "gaussian_noise": _noise,
}
