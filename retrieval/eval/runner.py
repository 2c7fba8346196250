"""`mmsearch eval` engine: embed (or reuse) the vectors of a pairs file, then measure retrieval
quality exactly and through an approximate index, query latency, and robustness.

Nothing is ever written to the user's index: it is opened read-only and only read for vectors
it already holds (by path when size and mtime match, else by content hash); every other image
is embedded into an in-memory collection that lives for this run only."""

from __future__ import annotations

import io
import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..embedders.protocols import EvalEmbedder
from ..images import load_image
from ..index import FaissIndex
from ..ingest.sync import file_key, text_key
from ..storage.store import IndexStore
from ..types import IMAGES, Skipped, Vectors
from .pairs import (
    PERTURBATIONS,
    TIES_NOTE,
    Pairs,
    exact_ranks,
    latency_summary,
    overlap_at_k,
    ranks_from_results,
    recall_curve,
    recall_metrics,
)

logger = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]
OVERLAP_K = 10  # recall@10 of the index against exact search, the usual ANN yardstick


@dataclass(frozen=True)
class EvalConfig:
    """What to measure. index_type None: the user's index's own type (or auto without one)."""

    ks: tuple[int, ...] = (1, 5, 10)
    index_type: str | None = None
    latency_queries: int = 100  # text and stored-vector image queries timed one at a time
    image_embed_queries: int = 10  # image queries timed from the file (decode + embed + search)
    robustness: bool = False
    robustness_images: int = 0  # 0: every image of the pairs
    curve_k: int = 50  # Recall@1..curve_k in the JSON, for the report's plots


@dataclass
class EvalVectors:
    """The pairs (less skipped images) with one vector per image and per caption."""

    pairs: Pairs
    images: Vectors
    texts: Vectors
    reused: int = 0
    embedded: int = 0
    skipped: list[Skipped] = field(default_factory=list)
    embed_s: float = 0.0


def collect_vectors(
    pairs: Pairs,
    embedder: Callable[[], EvalEmbedder],
    store: IndexStore | None,
    on_progress: Progress | None = None,
) -> EvalVectors:
    """Vectors for every image and caption: stored ones from `store` where it has them, the
    rest embedded now (in memory). Images that fail to decode are dropped with their captions."""
    dim = store.identity.dim if store is not None else None
    keys = _image_keys(pairs.images, store)
    stored = store.catalog.get_vectors_by_key(list(keys.values()), dim) if store and dim else {}
    vectors: dict[int, np.ndarray] = {
        i: stored[keys[i]] for i in range(len(pairs.images)) if keys.get(i) in stored
    }
    missing = [i for i in range(len(pairs.images)) if i not in vectors]
    skipped: list[Skipped] = []
    started = time.perf_counter()
    if missing:
        model = embedder()

        def on_batch(
            positions: list[int], batch: Vectors, skips: list[tuple[int, Skipped]]
        ) -> None:
            for row, position in enumerate(positions):
                vectors[missing[position]] = batch[row]
            skipped.extend(skip for _, skip in skips)
            if on_progress:
                on_progress("embed", len(positions) + len(skips), len(missing))

        model.embed_image_files([pairs.images[i] for i in missing], on_batch)
    kept = sorted(vectors)
    reused = len(pairs.images) - len(missing)
    pairs = pairs.subset(kept) if len(kept) < len(pairs.images) else pairs
    texts = _text_vectors(pairs.captions, embedder, store, dim)
    if not kept:
        raise_no_images(skipped)
    return EvalVectors(
        pairs=pairs,
        images=np.stack([vectors[i] for i in kept]).astype(np.float32),
        texts=texts,
        reused=reused,
        embedded=len(kept) - reused,
        skipped=skipped,
        embed_s=time.perf_counter() - started,
    )


def raise_no_images(skipped: list[Skipped]) -> None:
    from ..errors import InputFileError

    reasons = "; ".join(f"{s.path}: {s.reason}" for s in skipped[:5])
    raise InputFileError(f"none of the pairs' images could be decoded ({reasons})")


def _image_keys(images: list[Path], store: IndexStore | None) -> dict[int, str]:
    """Content key per image: the catalog's when the file is indexed and unchanged (no read),
    else the file's sha256 (which still finds a vector stored under another path)."""
    if store is None:
        return {}
    indexed = {item.path: item for item in store.catalog.iter_items(IMAGES) if item.path}
    keys = {}
    for number, path in enumerate(images):
        item = indexed.get(str(path))
        try:
            stat = path.stat()
            if item is not None and (item.size, item.mtime_ns) == (stat.st_size, stat.st_mtime_ns):
                keys[number] = item.key
            else:
                keys[number] = file_key(path)
        except OSError:
            continue  # embedding will report it as skipped
    return keys


def _text_vectors(
    captions: list[str],
    embedder: Callable[[], EvalEmbedder],
    store: IndexStore | None,
    dim: int | None,
) -> Vectors:
    keys = [text_key(caption) for caption in captions]
    found = store.catalog.get_vectors_by_key(keys, dim) if store is not None and dim else {}
    todo = list(dict.fromkeys(c for c, k in zip(captions, keys, strict=True) if k not in found))
    if todo:
        fresh = embedder().encode_texts(todo)
        found.update({text_key(c): v for c, v in zip(todo, fresh, strict=True)})
    return np.stack([found[key] for key in keys]).astype(np.float32)


def evaluate(
    vectors: EvalVectors,
    embedder: Callable[[], EvalEmbedder],
    config: EvalConfig,
    *,
    store: IndexStore | None = None,
    on_progress: Progress | None = None,
) -> dict[str, Any]:
    """The full evaluation as one JSON-ready dict (see `mmsearch eval --help`)."""
    started = time.perf_counter()
    pairs = vectors.pairs
    ks = list(config.ks)
    caption_truth = [np.asarray([i]) for i in pairs.caption_image.tolist()]
    image_truth = pairs.image_captions
    t2i = exact_ranks(vectors.texts, vectors.images, caption_truth)
    i2t = exact_ranks(vectors.images, vectors.texts, image_truth)
    curve_k = min(config.curve_k, len(pairs.images))
    result: dict[str, Any] = {
        "pairs": len(pairs.captions),
        "images": len(pairs.images),
        "captions": len(pairs.captions),
        "search": "exact",
        "ties": TIES_NOTE,
        "text_to_image": recall_metrics(t2i, ks) | {"curve": recall_curve(t2i, curve_k)},
        "image_to_text": recall_metrics(i2t, ks)
        | {"curve": recall_curve(i2t, min(config.curve_k, len(pairs.captions)))},
    }
    index_type = config.index_type or (store.index_type(IMAGES) if store else "auto")
    image_index = FaissIndex.build(vectors.images, np.arange(len(vectors.images)), index_type)
    text_index = FaissIndex.build(vectors.texts, np.arange(len(vectors.texts)), index_type)
    depth = max([*ks, OVERLAP_K, curve_k])
    result["index"] = _index_section(
        vectors, image_index, text_index, caption_truth, image_truth, ks, depth, index_type
    )
    metrics_s = time.perf_counter() - started
    result["efficiency"] = _efficiency(vectors, embedder, image_index, config, store)
    latency_s = time.perf_counter() - started - metrics_s
    robustness_s = 0.0
    if config.robustness:
        began = time.perf_counter()
        result["robustness"] = robustness(vectors, embedder, config, on_progress)
        robustness_s = time.perf_counter() - began
    result["vectors"] = {"reused": vectors.reused, "embedded": vectors.embedded}
    result["skipped"] = [{"path": s.path, "reason": s.reason} for s in vectors.skipped]
    result["timing_s"] = {
        "embed": vectors.embed_s,
        "metrics": metrics_s,
        "latency": latency_s,
        "robustness": robustness_s,
        "beyond_embedding": metrics_s + latency_s,
    }
    return result


def _index_section(
    vectors: EvalVectors,
    image_index: FaissIndex,
    text_index: FaissIndex,
    caption_truth: list[np.ndarray],
    image_truth: list[np.ndarray],
    ks: list[int],
    depth: int,
    index_type: str,
) -> dict[str, Any]:
    """The same metrics through the approximate index, and its recall@10 against exact."""
    section: dict[str, Any] = {"index_type": index_type, "faiss": image_index.factory}
    for name, queries, index, items, truth in (
        ("text_to_image", vectors.texts, image_index, vectors.images, caption_truth),
        ("image_to_text", vectors.images, text_index, vectors.texts, image_truth),
    ):
        k = min(depth, index.ntotal)
        scores, ids = index.search(queries, k)
        ranks = ranks_from_results(scores, ids, truth)
        section[name] = recall_metrics(ranks, ks, with_ranks=False) | {
            "curve": recall_curve(ranks, k)
        }
        overlap_k = min(OVERLAP_K, index.ntotal)
        section[name][f"recall@{OVERLAP_K}_vs_exact"] = overlap_at_k(queries, items, ids, overlap_k)
    section["note"] = (
        f"{image_index.factory} built over the pairs' vectors as `mmsearch index --index-type "
        f"{index_type}` would build it; answers past rank {depth} count as misses"
    )
    return section


def _sample(count: int, limit: int) -> list[int]:
    """`limit` indexes spread evenly over range(count) (all when limit is 0 or >= count)."""
    if limit <= 0 or limit >= count:
        return list(range(count))
    return sorted({round(x) for x in np.linspace(0, count - 1, limit)})


def _efficiency(
    vectors: EvalVectors,
    embedder: Callable[[], EvalEmbedder],
    image_index: FaissIndex,
    config: EvalConfig,
    store: IndexStore | None,
) -> dict[str, Any]:
    """Latency of one query at a time: text (embed + search), image from its stored vector
    (search only) and image from its file (decode + embed + search); index sizes."""
    pairs, k = vectors.pairs, min(10, image_index.ntotal)
    model = embedder()
    model.encode_texts(["warm up"])  # first-call allocations are not query latency
    text_times = []
    for i in _sample(len(pairs.captions), config.latency_queries):
        began = time.perf_counter()
        image_index.search(model.encode_texts([pairs.captions[i]]), k)
        text_times.append(time.perf_counter() - began)
    vector_times = []
    for i in _sample(len(pairs.images), config.latency_queries):
        began = time.perf_counter()
        image_index.search(vectors.images[i : i + 1], k)
        vector_times.append(time.perf_counter() - began)
    file_times = []
    for i in _sample(len(pairs.images), config.image_embed_queries):
        began = time.perf_counter()
        image_index.search(model.encode_image_sources([pairs.images[i]]), k)
        file_times.append(time.perf_counter() - began)
    with tempfile.TemporaryDirectory(prefix="mmsearch-eval-") as tmp:
        path = Path(tmp) / "images.faiss"
        image_index.save(path)
        memory = path.stat().st_size
    disk = None
    if store is not None:
        disk = sum(p.stat().st_size for p in store.directory.iterdir() if p.is_file())
    return {
        "text_query": latency_summary(text_times),
        "image_query_stored_vector": latency_summary(vector_times),
        "image_query_from_file": latency_summary(file_times),
        "index_memory_bytes": memory,
        "index_bytes_per_vector": memory / max(1, image_index.ntotal),
        "user_index_disk_bytes": disk,
    }


def robustness(
    vectors: EvalVectors,
    embedder: Callable[[], EvalEmbedder],
    config: EvalConfig,
    on_progress: Progress | None = None,
) -> dict[str, Any]:
    """Image->image Recall@1 (exact, worst-case ties) of a perturbed copy of each image against
    the pairs' images, per perturbation."""
    model = embedder()
    chosen = _sample(len(vectors.pairs.images), config.robustness_images)
    out: dict[str, Any] = {"images": len(chosen)}
    originals = [load_image(vectors.pairs.images[i]) for i in chosen]
    for name, perturb in PERTURBATIONS.items():
        rows = []
        for start in range(0, len(chosen), model.batch_size):
            batch = originals[start : start + model.batch_size]
            rows.append(model.encode_image_sources([_as_bmp(perturb(image)) for image in batch]))
            if on_progress:
                on_progress(f"robustness {name}", len(batch), len(chosen))
        queries = np.concatenate(rows)
        ranks = exact_ranks(queries, vectors.images, [np.asarray([i]) for i in chosen])
        out[name] = {"recall@1": float(np.mean(ranks <= 1))}
    return out


def _as_bmp(image: Any) -> bytes:
    """Lossless, nearly free encoding, so the perturbed copy goes through the embedder's own
    decode and preprocessing path like any query image."""
    buffer = io.BytesIO()
    image.save(buffer, format="BMP")
    return buffer.getvalue()
