"""open_clip's inference preprocessing with Pillow and numpy, for a server or a query that runs
the exported towers without importing torch (~0.5 GB of RSS and seconds of start-up).

open_clip's transform on a Pillow image is: torchvision's Resize (Pillow's own `Image.resize`
at a size torchvision computes), a centre crop (or crop-or-pad), ToTensor (/255) and Normalize.
The geometry below is the same Pillow calls at the same sizes, so the pixels are the same, and
the float steps are the same float32 operations; tests/integration/test_pixels.py compares it
with open_clip's own transform. Built from the model's recorded preprocessing (ModelIdentity.
preprocess: image_size, mean, std, interpolation, resize_mode), so it needs neither the model
nor open_clip.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image

from ..scaling import DecodeTarget

# open_clip's inference modes (open_clip.transform.image_transform, is_train=False).
RESIZE_MODES = ("shortest", "longest", "squash")
_FILTERS = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}


@dataclass(frozen=True)
class PixelPreprocess:
    """Pillow image -> (3, size, size) float32 normalised pixels, as open_clip's transform."""

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"
    fill: int = 0

    @classmethod
    def from_recorded(cls, recorded: dict[str, Any]) -> PixelPreprocess | None:
        """From a model's recorded preprocessing, or None when it has a step this module does
        not redo (then the caller loads the model and uses open_clip's transform)."""
        mean, std = tuple(recorded.get("mean") or ()), tuple(recorded.get("std") or ())
        interpolation = recorded.get("interpolation") or "bicubic"
        resize_mode = recorded.get("resize_mode") or "shortest"
        size = recorded.get("image_size")
        if len(mean) != 3 or len(std) != 3 or not isinstance(size, int):
            return None
        if interpolation not in _FILTERS or resize_mode not in RESIZE_MODES:
            return None
        return cls(size, mean, std, interpolation, resize_mode)  # type: ignore[arg-type]

    @property
    def target(self) -> DecodeTarget:
        """What a decoder may scale images down to first (images.load_image), as
        loader.decode_target finds it in open_clip's transform."""
        return DecodeTarget(self.size, self.resize_mode)

    def geometry(self, image: Image.Image) -> Image.Image:
        """Resize and crop (or pad) an RGB image to size x size, as open_clip does."""
        width, height = image.size
        if self.resize_mode == "squash":
            shape = (self.size, self.size)
        elif self.resize_mode == "longest":
            # open_clip's ResizeKeepRatio(longest=1): python's round, of h and w by one ratio
            ratio = max(height / self.size, width / self.size)
            shape = (round(width / ratio), round(height / ratio))
        else:
            # torchvision's Resize(int) rule: the short side to `size`, the long side truncated
            short, long = sorted((width, height))
            sides = (self.size, int(self.size * long / short))
            shape = sides if width <= height else sides[::-1]
        if shape != image.size:
            image = image.resize(shape, _FILTERS[self.interpolation])
        return self._crop_or_pad(image)

    def _crop_or_pad(self, image: Image.Image) -> Image.Image:
        """torchvision's center_crop (zero padding when smaller) / open_clip's
        center_crop_or_pad (padding with `fill`): the same offsets either way."""
        width, height = image.size
        if width < self.size or height < self.size:
            canvas = Image.new("RGB", (max(width, self.size), max(height, self.size)), self.fill)
            canvas.paste(image, ((canvas.width - width) // 2, (canvas.height - height) // 2))
            image, (width, height) = canvas, canvas.size
        if (width, height) == (self.size, self.size):
            return image
        top = int(round((height - self.size) / 2.0))
        left = int(round((width - self.size) / 2.0))
        return image.crop((left, top, left + self.size, top + self.size))

    def __call__(self, image: Image.Image) -> npt.NDArray[np.float32]:
        """(3, size, size) float32: geometry, then /255 and (x - mean) / std in float32."""
        pixels = np.asarray(self.geometry(image.convert("RGB")), dtype=np.float32)
        pixels = pixels.transpose(2, 0, 1) / np.float32(255.0)
        mean = np.asarray(self.mean, dtype=np.float32).reshape(3, 1, 1)
        std = np.asarray(self.std, dtype=np.float32).reshape(3, 1, 1)
        return np.ascontiguousarray((pixels - mean) / std, dtype=np.float32)

    def stack(self, images: list[Image.Image]) -> npt.NDArray[np.float32]:
        """(n, 3, size, size) float32 for a list of images."""
        if not images:
            return np.zeros((0, 3, self.size, self.size), dtype=np.float32)
        return np.stack([self(image) for image in images])
