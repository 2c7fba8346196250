"""Batched JPEG decoding with torchvision's `decode_jpeg` (nvjpeg on CUDA) and the model's
open_clip preprocessing redone on uint8 tensors, so a GPU is fed at model speed instead of
waiting on Pillow in worker processes.

The path is chosen with `--decode` (EmbedConfig.decode): `auto` takes it on CUDA, `gpu` forces
it on any device (on the CPU it runs torchvision's CPU decoder, which is how the tests cover it),
`cpu` never takes it. File bytes are read, and their JPEG headers checked (with Pillow, header
only: size, mode, progressive flag, EXIF orientation), in threads; files this path does not take
(PNG, WebP, TIFF, GIF, CMYK or progressive JPEGs, truncated or broken files, anything the batch
decoder rejects) are handed back by position, so the caller sends them through the existing CPU
decode workers, which report the broken ones exactly as before. This module never reports a
skip itself, so no file is reported twice.
"""

from __future__ import annotations

import io
import logging
import queue
import threading
import warnings
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext, suppress
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import torch
import torchvision.transforms.functional as TF
from open_clip.transform import CenterCropOrPad, MaybeConvertMode, MaybeToTensor, ResizeKeepRatio
from torchvision import transforms as T
from torchvision.io import ImageReadMode, decode_jpeg

from ..config import DECODE_MODES, FULL_DECODE
from ..errors import ModelUnavailableError
from ..images import MAX_IMAGE_PIXELS, open_header

logger = logging.getLogger(__name__)

# torchvision 0.29 deprecates its image codecs in favour of TorchCodec, warning on every call;
# decode_jpeg is still the batched nvjpeg decoder this path measures, so the warning is noise.
# (Moving to torchcodec's decoder, once measured on a GPU, is the way off it.)
warnings.filterwarnings(
    "ignore", message="The image decoding and encoding capabilities of TorchVision"
)

PIL_PATH = "pil"
"""Preprocessing-path name of the CPU workers: Pillow decode + the model's PIL transforms."""
PIL_SCALED_PATH = "pil:scaled"
"""The same, with large images decoded scaled down to the preprocessing's size (images.py)."""

# Threads reading bytes and parsing JPEG headers. The reads release the GIL; Pillow's header
# parse (0.2 ms a file on the loaded 2-core machine, benchmarks/HISTORY.md) holds it, so past
# ~8 threads more only contend (measure with benchmarks/gpu_pipeline.py before raising it).
READ_THREADS = 8
# Batches read ahead of the one being decoded: enough to hide a slow disk read, while holding
# only a few hundred files' bytes.
PREFETCH_BATCHES = 3
# Decoded batches waiting for the model: two keep it fed across a slow batch; each is
# batch x 3 x 224 x 224 float32 (~150 MB at batch 256) of device memory.
DECODED_AHEAD = 2
EXIF_ORIENTATION = 0x0112
_JPEG_SOI = b"\xff\xd8\xff"
_JPEG_EOI = b"\xff\xd9"


class UnsupportedPreprocessError(ValueError):
    """The model's preprocessing has a step this module cannot redo on tensors."""


class TensorPreprocess:
    """The model's open_clip inference transform, applied to decoded uint8 (3, H, W) tensors on
    their own device: the same resize (mode, interpolation, antialias), crop/pad and mean/std,
    taken from the transform open_clip built from the model's preprocess config."""

    def __init__(self, transform: Any) -> None:
        steps = list(getattr(transform, "transforms", [transform]))
        self._geometry: list[Callable[[torch.Tensor], torch.Tensor]] = []
        mean = std = None
        for step in steps:
            if isinstance(step, T.Resize):
                self._geometry.append(_Resize(step))
            elif isinstance(step, (T.CenterCrop, CenterCropOrPad)):
                self._geometry.append(step)  # these accept tensors as they are
            elif isinstance(step, ResizeKeepRatio):
                self._geometry.append(_KeepRatio(step))
            elif isinstance(step, (MaybeConvertMode, MaybeToTensor, T.ToTensor)):
                continue  # decode_jpeg already gives RGB; the scaling to [0, 1] is done below
            elif isinstance(step, T.Normalize):
                mean, std = step.mean, step.std
            elif getattr(step, "__name__", "") == "_convert_to_rgb":
                continue  # older open_clip's RGB conversion, a no-op on RGB tensors
            else:
                raise UnsupportedPreprocessError(f"preprocessing step {step!r}")
        if mean is None or std is None:
            raise UnsupportedPreprocessError("no Normalize step")
        self._mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self._std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)

    def geometry(self, image: torch.Tensor) -> torch.Tensor:
        """Resize and crop one uint8 (3, H, W) image; uint8 out, rounded as Pillow rounds."""
        for step in self._geometry:
            image = step(image)
        return image

    def __call__(self, images: Sequence[torch.Tensor]) -> torch.Tensor:
        """(n, 3, S, S) float32 normalised pixels from n uint8 (3, H, W) images on one device."""
        return self.normalise(torch.stack([self.geometry(image) for image in images]))

    def normalise(self, stacked: torch.Tensor) -> torch.Tensor:
        """uint8 (n, 3, S, S) -> float32 scaled to [0, 1] and normalised with mean/std."""
        mean = self._mean.to(stacked.device)
        std = self._std.to(stacked.device)
        return (stacked.float().div_(255.0) - mean).div_(std)


def resize_like_pil(image: torch.Tensor, size: Sequence[int], interpolation: Any) -> torch.Tensor:
    """Resize a uint8 (C, H, W) tensor to `size` (h, w) as Pillow resizes an image.

    Pillow resamples in two passes, width first, and rounds and clips to uint8 between them;
    torch's one-call antialiased resize keeps the bicubic overshoot at sharp edges, which left
    pixels up to 13/255 apart on the sample photos. Two uint8 passes agree with Pillow to
    within 1/255 (Pillow's fixed-point weights), on the CPU and through the float kernels CUDA
    uses (torchvision rounds and clips back to uint8 after each call). Squashing to a square
    (resize_mode "squash") still differs by up to 7/255 at a few edge pixels of portrait photos,
    mean 0.01/255: torch's one-axis passes do not always reproduce Pillow's there.
    """
    height, width = int(size[0]), int(size[1])
    if image.shape[-1] != width:
        image = TF.resize(image, [image.shape[-2], width], interpolation, antialias=True)
    if image.shape[-2] != height:
        image = TF.resize(image, [height, width], interpolation, antialias=True)
    return image


class _Resize:
    """torchvision's Resize (shortest side, or an explicit size), Pillow's way."""

    def __init__(self, step: T.Resize) -> None:
        if step.antialias is False:
            raise UnsupportedPreprocessError("Resize without antialias")
        self._step = step

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        step = self._step
        # The very size rule Resize applies to PIL images (private, but the only way to get
        # identical output sizes, including the rounding of the long side).
        size = TF._compute_resized_output_size(
            (image.shape[-2], image.shape[-1]), list(_as_list(step.size)), step.max_size
        )
        return resize_like_pil(image, size, step.interpolation)


def _as_list(size: int | Sequence[int]) -> list[int]:
    return [size] if isinstance(size, int) else list(size)


class _KeepRatio:
    """open_clip's ResizeKeepRatio (longest-side and non-square modes) for tensors: its
    get_params reads `img.size` the PIL way, so it gets the (width, height) it expects."""

    def __init__(self, step: ResizeKeepRatio) -> None:
        self._step = step

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        step = self._step
        size = step.get_params(_PilSize(image.shape[-1], image.shape[-2]), step.size, step.longest)
        return resize_like_pil(image, size, step.interpolation)


@dataclass(frozen=True)
class _PilSize:
    width: int
    height: int

    @property
    def size(self) -> tuple[int, int]:
        return self.width, self.height


def orient(image: torch.Tensor, orientation: int) -> torch.Tensor:
    """Apply an EXIF orientation (1-8) to a (C, H, W) tensor, as PIL's ImageOps.exif_transpose
    does to an image; unknown values leave it as it is."""
    if orientation == 2:
        return image.flip(-1)
    if orientation == 3:
        return image.flip(-2, -1)
    if orientation == 4:
        return image.flip(-2)
    if orientation == 5:
        return image.transpose(-2, -1)
    if orientation == 6:
        return torch.rot90(image, -1, dims=(-2, -1))
    if orientation == 7:
        return image.transpose(-2, -1).flip(-2, -1)
    if orientation == 8:
        return torch.rot90(image, 1, dims=(-2, -1))
    return image


def jpeg_orientation(data: bytes, max_pixels: int = MAX_IMAGE_PIXELS) -> int | None:
    """The EXIF orientation (1 when none) of a JPEG that `decode_jpeg` can take, or None when
    the bytes are anything else (another format, CMYK, progressive, MPO, truncated, too big)."""
    # A complete JPEG ends with the EOI marker; libjpeg would decode a cut-off file into a
    # partly grey picture where Pillow, the reference, reports it as truncated.
    if data[:3] != _JPEG_SOI or not data.rstrip(b"\x00").endswith(_JPEG_EOI):
        return None
    try:
        with open_header(io.BytesIO(data)) as image:
            if image.format != "JPEG" or image.mode not in ("RGB", "L"):
                return None
            if image.info.get("progressive") or image.info.get("progression"):
                return None
            width, height = image.size
            if width * height > max_pixels:
                return None
            try:
                return int(image.getexif().get(EXIF_ORIENTATION, 1))
            except Exception:  # noqa: BLE001 (as images.py: a mangled EXIF keeps the picture)
                return 1
    except Exception:  # noqa: BLE001 (any header failure: the CPU path decides and reports)
        return None


@dataclass
class TensorBatch:
    """One batch from the tensor path: pixels for `positions`, and the positions it left."""

    positions: list[int]
    pixels: torch.Tensor | None
    """(len(positions), 3, S, S) float32 on the decode device, or None when empty."""
    fallback: list[int] = field(default_factory=list)
    """Positions for the CPU decode workers: not JPEGs this path takes, or rejected by it."""
    ready: Any = None
    """On CUDA, the event after which `pixels` are complete on the decode stream."""


@dataclass
class _Read:
    position: int
    data: torch.Tensor | None
    orientation: int


class JpegBatchDecoder:
    """Reads files in threads and decodes their JPEGs in batches with torchvision on `device`.

    Example:
        decoder = JpegBatchDecoder(TensorPreprocess(preprocess), device="cuda")
        for batch in decoder.batches(paths, batch_size=256): ...
    """

    def __init__(
        self,
        preprocess: TensorPreprocess,
        *,
        device: str = "cpu",
        threads: int = READ_THREADS,
        max_pixels: int = MAX_IMAGE_PIXELS,
    ) -> None:
        self.preprocess = preprocess
        self.device = device
        self.threads = max(1, threads)
        self.max_pixels = max_pixels

    def batches(self, paths: Sequence[str | Path], batch_size: int) -> Iterator[TensorBatch]:
        """Batches over `paths` in input order; every position lands in exactly one batch,
        either among its `positions` or its `fallback`."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        with ThreadPoolExecutor(self.threads, thread_name_prefix="mmsearch-read") as pool:
            for reads in self._read_ahead(paths, batch_size, pool):
                yield self._decode(reads)

    def batches_ahead(self, paths: Sequence[str | Path], batch_size: int) -> Iterator[TensorBatch]:
        """`batches`, decoded in a background thread (on its own CUDA stream on a GPU) up to
        DECODED_AHEAD batches ahead, so decoding the next batch overlaps the forward pass and
        the commit of this one. Closing the iterator early stops the thread."""
        results: queue.Queue[TensorBatch | BaseException | None] = queue.Queue(DECODED_AHEAD)
        stop = threading.Event()
        stream = torch.cuda.Stream(self.device) if self.device.startswith("cuda") else None

        def produce() -> None:
            try:
                with torch.cuda.stream(stream) if stream is not None else nullcontext():
                    for batch in self.batches(paths, batch_size):
                        if stream is not None and batch.pixels is not None:
                            batch.ready = torch.cuda.Event()
                            batch.ready.record(stream)
                        while not stop.is_set():
                            try:
                                results.put(batch, timeout=0.1)
                                break
                            except queue.Full:
                                continue
                        if stop.is_set():
                            return
                results.put(None)
            except BaseException as err:  # noqa: BLE001 (re-raised in the consuming thread)
                results.put(err)

        worker = threading.Thread(target=produce, name="mmsearch-decode", daemon=True)
        worker.start()
        try:
            while (item := results.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                if item.ready is not None and item.pixels is not None:
                    consumer = torch.cuda.current_stream(self.device)
                    consumer.wait_event(item.ready)
                    # Made on the decode stream, used on this one: keep the allocator from
                    # reusing its memory before this stream is done with it.
                    item.pixels.record_stream(consumer)
                yield item
        finally:
            stop.set()
            while worker.is_alive():
                with suppress(queue.Empty):
                    results.get(timeout=0.1)
            worker.join()

    def _read_ahead(
        self, paths: Sequence[str | Path], batch_size: int, pool: ThreadPoolExecutor
    ) -> Iterator[list[_Read]]:
        chunks = (
            range(start, min(start + batch_size, len(paths)))
            for start in range(0, len(paths), batch_size)
        )

        def submit(chunk: range) -> list[Future[_Read]]:
            return [pool.submit(self._read, position, paths[position]) for position in chunk]

        pending = deque(submit(chunk) for chunk in islice(chunks, PREFETCH_BATCHES))
        while pending:
            futures = pending.popleft()
            following = next(chunks, None)
            if following is not None:
                pending.append(submit(following))
            yield [future.result() for future in futures]

    def _read(self, position: int, path: str | Path) -> _Read:
        try:
            data = Path(path).read_bytes()
        except OSError:
            return _Read(position, None, 1)  # the CPU path reports it as unreadable
        orientation = jpeg_orientation(data, self.max_pixels)
        if orientation is None:
            return _Read(position, None, 1)
        return _Read(position, torch.frombuffer(bytearray(data), dtype=torch.uint8), orientation)

    def _decode(self, reads: list[_Read]) -> TensorBatch:
        good = [read for read in reads if read.data is not None]
        fallback = [read.position for read in reads if read.data is None]
        images = self._decode_all(good)
        positions: list[int] = []
        pixels: list[torch.Tensor] = []
        for read, image in zip(good, images, strict=True):
            if image is None:
                fallback.append(read.position)
                continue
            try:
                pixels.append(self.preprocess.geometry(orient(image, read.orientation)))
            except Exception as err:  # noqa: BLE001 (the CPU path decides about this file)
                logger.debug("tensor preprocess failed at %d: %s", read.position, err)
                fallback.append(read.position)
                continue
            positions.append(read.position)
        stacked = self.preprocess.normalise(torch.stack(pixels)) if pixels else None
        return TensorBatch(positions=positions, pixels=stacked, fallback=sorted(fallback))

    def _decode_all(self, reads: list[_Read]) -> list[torch.Tensor | None]:
        """Decoded (3, H, W) uint8 images, None where the decoder rejected a file. One batched
        call first (nvjpeg's batched decode is where the speed is); when it fails, each file
        alone, so one bad file costs only itself."""
        if not reads:
            return []
        datas = [read.data for read in reads if read.data is not None]
        try:
            return list(decode_jpeg(datas, mode=ImageReadMode.RGB, device=self.device))
        except Exception as err:  # noqa: BLE001 (isolated below)
            logger.debug("batched decode_jpeg failed (%s); decoding one by one", err)
        images: list[torch.Tensor | None] = []
        for data in datas:
            try:
                images.append(decode_jpeg(data, mode=ImageReadMode.RGB, device=self.device))
            except Exception:  # noqa: BLE001 (sent to the CPU path, which reports it)
                images.append(None)
        return images


def create_decoder(decode: str, preprocess: Any, device: str) -> JpegBatchDecoder | None:
    """The batched JPEG decoder `decode` asks for on `device`, or None for the CPU workers."""
    if decode not in DECODE_MODES:
        raise ModelUnavailableError(
            f"unknown --decode {decode!r}; use one of {', '.join(DECODE_MODES)}."
        )
    if decode in ("cpu", FULL_DECODE) or (decode == "auto" and not device.startswith("cuda")):
        return None
    try:
        return JpegBatchDecoder(TensorPreprocess(preprocess), device=device)
    except UnsupportedPreprocessError as err:
        if decode == "gpu":
            raise ModelUnavailableError(
                f"--decode gpu cannot reproduce this model's preprocessing ({err}); "
                "use --decode cpu."
            ) from err
        return None
