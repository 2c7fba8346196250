"""Captions for indexed images: each image without text gets one generated caption, stored as
its item's text (so the keyword index picks it up through its triggers, and hits show it).

Images that share bytes share one caption; images that already have one are skipped, so a
re-run (or a run after a killed one: every batch commits on its own) only captions the rest.
A file whose bytes change loses its caption at the next index run (ingest.py), and gets a new
one when `--captions` is given again."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..embedders.protocols import Captioner
from ..storage.store import IndexStore
from ..types import IMAGES, ModelSpec, Skipped
from .sync import Progress

# Good COCO-style sentences from a model open_clip ships; any CoCa config works (--caption-model).
DEFAULT_CAPTION_MODEL = ModelSpec("coca_ViT-B-32", "mscoco_finetuned_laion2b_s13b_b90k")


@dataclass
class CaptionReport:
    """What one captioning pass did."""

    captioned: int = 0  # images that got a caption (shared bytes count each image)
    generated: int = 0  # captions the model wrote
    already: int = 0  # images that had one
    skipped: list[Skipped] = field(default_factory=list)
    elapsed_s: float = 0.0

    @property
    def captions_per_s(self) -> float:
        return self.generated / self.elapsed_s if self.elapsed_s > 0 else 0.0


def caption_missing(
    store: IndexStore,
    captioner_factory: Callable[[], Captioner],
    on_progress: Progress | None = None,
) -> CaptionReport:
    """Caption every indexed image that has no text yet; the model loads only if one needs
    it. Must run under `store.writer_lock()`."""
    started = time.perf_counter()
    report = CaptionReport()
    items = [item for item in store.catalog.iter_items(IMAGES) if item.path]
    known = {item.key: item.text for item in items if item.text is not None}
    report.already = len(items) - sum(1 for item in items if item.text is None)
    waiting: dict[str, list[int]] = {}
    path_of: dict[str, str] = {}
    for item in items:
        if item.text is None:
            waiting.setdefault(item.key, []).append(item.id)
            path_of.setdefault(item.key, item.path or "")
    reused = {key: known[key] for key in waiting if key in known}
    if reused:
        _store_captions(store, waiting, reused, report)
    keys = [key for key in waiting if key not in reused]
    if keys:
        captioner = captioner_factory()

        def on_batch(
            positions: list[int], captions: list[str], skips: list[tuple[int, Skipped]]
        ) -> None:
            found = {keys[p]: caption for p, caption in zip(positions, captions, strict=True)}
            _store_captions(store, waiting, found, report)
            report.generated += len(found)
            report.skipped.extend(skip for _, skip in skips)
            if on_progress:
                on_progress("captions", len(positions) + len(skips), len(keys))

        captioner.caption_files([Path(path_of[key]) for key in keys], on_batch)
    report.elapsed_s = time.perf_counter() - started
    return report


def _store_captions(
    store: IndexStore,
    waiting: dict[str, list[int]],
    captions: dict[str, str],
    report: CaptionReport,
) -> None:
    """One transaction per batch: the captions, and through the triggers their keywords."""
    with store.catalog.transaction():
        for key, caption in captions.items():
            for item_id in waiting[key]:
                store.catalog.set_text(item_id, caption)
                report.captioned += 1
