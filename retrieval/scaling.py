"""Decoding at the size the model needs: a photo's pixels beyond what the preprocessing's
antialiased resize keeps are never decoded (JPEG DCT scaling) or are box-averaged away right
after decoding (every other format). PIL only."""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

# Scaled decoding keeps the decoded image's relevant side at least this many times the size the
# preprocessing resizes it to, so the antialiased resize still averages 1.5+ decoded pixels into
# each output pixel. Measured with a random ViT-B-32 on 12 of the sample's photos upscaled to
# short sides of 900-3024 px with grain, JPEG q92 (python -m benchmarks.photo_library --count 12
# --sample-count 48 --margins; benchmarks/RESULTS.md): embedding cosine against the full decode
# was min 0.9970 / mean 0.9989 at a margin of 1.0 (a decode landing just above 224 px, mean
# 5.6/255 per pixel), min 0.9997 / mean 0.9998 at 1.5, min 0.9999 at 2.0. 1.5 keeps the issue's
# bar (min 0.995, mean 0.999) and lets a 12 MP photo decode at 1/8 scale (2.0 would take 1/4).
SCALED_DECODE_MARGIN = 1.5
# libjpeg decodes DCT-scaled to 1/1, 1/2, 1/4 or 1/8 of full size (Image.draft).
_JPEG_SCALES = (8, 4, 2)
_FITS = ("shortest", "longest", "squash")


@dataclass(frozen=True)
class DecodeTarget:
    """The size the model's preprocessing resizes an image to, so decoding can skip pixels that
    resize would only average away: JPEGs decode DCT-scaled (Image.draft), other formats are
    box-reduced (Image.reduce) right after decoding.

    `fit` says which side the resize maps to `size` pixels: `shortest` (resize then centre
    crop, open_clip's default), `longest` (fit inside, then pad) or `squash` (both sides)."""

    size: int
    fit: str = "shortest"
    margin: float = SCALED_DECODE_MARGIN

    def __post_init__(self) -> None:
        if self.size < 1 or self.margin < 1.0 or self.fit not in _FITS:
            raise ValueError(
                f"DecodeTarget needs size >= 1, margin >= 1 and fit in {_FITS}, got {self}"
            )

    def reduction(self, width: int, height: int) -> int:
        """The largest whole factor a width x height image may shrink by before the resize."""
        side = max(width, height) if self.fit == "longest" else min(width, height)
        return max(1, int(side // (self.size * self.margin)))


def draft_jpeg(image: Image.Image, target: DecodeTarget) -> None:
    """Ask a JPEG decoder for the smallest DCT scale (1/2, 1/4, 1/8) the target allows; other
    formats ignore it (their reduction happens after decoding)."""
    if image.format not in ("JPEG", "MPO"):
        return
    width, height = image.size
    factor = target.reduction(width, height)
    scale = next((s for s in _JPEG_SCALES if s <= factor), 1)
    if scale > 1:
        # draft picks the largest scale whose output is at least the size asked for.
        image.draft(None, (width // scale, height // scale))
