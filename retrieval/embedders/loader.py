"""Decode and preprocess images in DataLoader worker processes, so the model never waits on
Pillow. A file that cannot be read comes back as a `Skipped` at its position; it never kills a
worker or the batch it sits in."""

from __future__ import annotations

import ctypes
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from ..images import MAX_IMAGE_PIXELS, decode_source
from ..scaling import DecodeTarget
from ..types import Skipped

Preprocess = Callable[[Image.Image], torch.Tensor]
"""PIL image -> (3, H, W) float tensor, e.g. the `preprocess` open_clip returns with a model."""

Item = tuple[int, torch.Tensor | Skipped]
"""What the dataset yields per path: its position in the input list, and pixels or the reason."""

# Each worker keeps this many batches decoded ahead. Two (torch's default) hides the jitter of
# an occasional large file; more only holds memory while the model is the slower side anyway.
PREFETCH_FACTOR = 2

# Decoding a typical photo and resizing it to 224 px takes a few ms on one core; a ViT-B/32
# forward pass on a CPU takes ~30x longer per image. So on a CPU-only machine one decode worker
# keeps the model fed, and every other core is worth more to torch's intra-op threads.
# An accelerator flips this: the model outruns decoding, and workers become the bottleneck.
MAX_WORKERS_CPU_MODEL = 4
# On an H100 with 16 cores, 15 workers decoded ~600 ImageNet JPEGs/s and the GPU still waited
# (benchmarks/HISTORY.md, GPU run), so every spare core goes to decoding, up to this cap.
MAX_WORKERS_ACCELERATOR = 16
# prctl(2) option: the signal the kernel sends this process when the thread that forked it ends.
PR_SET_PDEATHSIG = 1


class _PathTable:
    """Paths packed into two numpy arrays instead of a list of str.

    Forked workers share the parent's memory copy-on-write, but merely reading a Python object
    writes its reference count, so a list of a million paths would be copied into every worker
    (pytorch/pytorch#13246). Numpy buffers hold no per-path objects and stay shared.
    """

    def __init__(self, paths: Sequence[str | Path]) -> None:
        encoded = [os.fsencode(path) for path in paths]
        self._offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(item) for item in encoded], out=self._offsets[1:])
        self._data = np.frombuffer(b"".join(encoded), dtype=np.uint8)

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, position: int) -> str:
        start, end = self._offsets[position], self._offsets[position + 1]
        return os.fsdecode(self._data[start:end].tobytes())


class ImageDataset(Dataset[Item]):
    """Map-style dataset: position -> (position, pixels) or (position, Skipped)."""

    def __init__(
        self,
        paths: Sequence[str | Path],
        preprocess: Preprocess,
        *,
        max_pixels: int = MAX_IMAGE_PIXELS,
        target: DecodeTarget | None = None,
    ) -> None:
        self._paths = _PathTable(paths)
        self._preprocess = preprocess
        self._max_pixels = max_pixels
        self._target = target

    def __len__(self) -> int:
        return len(self._paths)

    def __getitem__(self, position: int) -> Item:
        path = self._paths[position]
        return position, decode_source(
            path, path, self._preprocess, self._max_pixels, target=self._target
        )


@dataclass(frozen=True)
class Batch:
    """Decoded pixels for the good items of one batch, plus the items that were skipped."""

    positions: list[int]
    """Input positions of the rows of `pixels`, in order."""
    pixels: torch.Tensor | None
    """(len(positions), 3, H, W), or None when every item in the batch was skipped."""
    skipped: list[tuple[int, Skipped]]

    def pin_memory(self) -> Batch:
        """Page-locked copy of the pixels; DataLoader calls this when pin_memory=True."""
        if self.pixels is None:
            return self
        return replace(self, pixels=self.pixels.pin_memory())


def collate_items(items: Sequence[Item]) -> Batch:
    """Stack the good items of a batch into one tensor and set the skipped ones aside."""
    positions: list[int] = []
    tensors: list[torch.Tensor] = []
    skipped: list[tuple[int, Skipped]] = []
    for position, result in items:
        if isinstance(result, Skipped):
            skipped.append((position, result))
        else:
            positions.append(position)
            tensors.append(result)
    pixels = torch.stack(tensors) if tensors else None
    return Batch(positions=positions, pixels=pixels, skipped=skipped)


def usable_cores() -> int:
    """The cores this process may run on."""
    return _usable_cores()


def _usable_cores() -> int:
    # The affinity mask is what this process may run on (taskset, some containers);
    # os.cpu_count() counts the whole machine.
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def default_num_workers(*, for_accelerator: bool = False) -> int:
    """Decode workers to use when none are asked for (0 means decode in-process)."""
    cores = _usable_cores()
    if cores <= 1:
        return 0  # a worker would only compete with the model for the one core
    if for_accelerator:
        return min(MAX_WORKERS_ACCELERATOR, cores - 1)
    # 2 cores -> 1 worker, 8 -> 2, 16+ -> 4; see MAX_WORKERS_CPU_MODEL for why so few.
    return min(MAX_WORKERS_CPU_MODEL, max(1, cores // 4))


def _die_with_parent(parent: int, _worker_id: int) -> None:
    """DataLoader `worker_init_fn`: have the kernel SIGKILL this worker when its parent dies.

    Torch's own watchdog only notices a dead parent at its next 5 s poll, so after a `kill -9`
    of an index run its workers lived on, holding memory (and, before retrieval/locks.py, the
    writer lock). A worker holds nothing worth a clean exit: it only decodes."""
    if sys.platform.startswith("linux"):
        # Strictly, the signal comes when the *thread* that forked this worker ends: that is
        # the thread iterating the loader, which outlives its pass and so its workers.
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before prctl took effect: nobody would signal
        os._exit(1)


def decode_timed(
    paths: Sequence[Path], preprocess: Preprocess, target: DecodeTarget | None
) -> tuple[Batch, float]:
    """Decode `paths` in this process as one batch: (the batch, CPU seconds per file)."""
    started = time.process_time()
    items = [(n, decode_source(p, str(p), preprocess, target=target)) for n, p in enumerate(paths)]
    return collate_items(items), (time.process_time() - started) / max(1, len(paths))


def decode_workers_for(decode_cpu_s: float, model_cpu_s: float, cores: int) -> int:
    """Decode processes that keep a CPU model busy, from measured CPU seconds per image.

    Decoding and the model share the cores, so decoding needs its share of the CPU time of an
    image, `cores * decode / (decode + model)` cores, rounded up (a worker waiting on a full
    queue costs memory, not CPU); at least 1 on 2+ cores, and 0 on one core, where a worker
    would only compete with the model. E.g. 5 ms to decode a sample JPEG against 130 ms of CPU
    time in ViT-B-32 gives 1 worker on 2 cores and 1 on 16; a 190 ms full-size 12 MP decode
    gives 2 on 2 cores and 10 on 16.
    """
    if cores <= 1:
        return 0
    total = decode_cpu_s + model_cpu_s
    if decode_cpu_s <= 0 or total <= 0:
        return 1
    return max(1, min(cores, math.ceil(cores * decode_cpu_s / total)))


def create_image_loader(
    paths: Sequence[str | Path],
    preprocess: Preprocess,
    *,
    batch_size: int,
    num_workers: int,
    pin_memory: bool,
    max_pixels: int = MAX_IMAGE_PIXELS,
    target: DecodeTarget | None = None,
) -> DataLoader[Item]:
    """Batches of decoded, preprocessed images in input order; iterating yields `Batch`."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}; try --batch-size 32")
    if num_workers < 0:
        raise ValueError(
            f"num_workers must be 0 (decode in-process) or more, got {num_workers}; try --workers 0"
        )
    return _OnePassLoader(
        ImageDataset(paths, preprocess, max_pixels=max_pixels, target=target),
        batch_size=batch_size,
        shuffle=False,  # batch k holds positions [k*batch_size, (k+1)*batch_size): ids follow
        num_workers=num_workers,
        collate_fn=collate_items,
        pin_memory=pin_memory,
        # Workers end with each pass, so an abandoned or finished loader leaves no processes
        # behind to block interpreter exit.
        persistent_workers=False,
        worker_init_fn=partial(_die_with_parent, os.getpid()) if num_workers > 0 else None,
        prefetch_factor=PREFETCH_FACTOR if num_workers > 0 else None,
    )


class _OnePassLoader(DataLoader[Item]):
    """A DataLoader that, once a pass with worker processes ends, gives SIGCHLD back to the
    handler it had before.

    torch installs a Python SIGCHLD handler with the first worker pass and never removes it.
    Python installs its handlers with SA_ONSTACK, and once a process has run AMX kernels
    (OpenVINO bf16/int8 on Intel Xeons with AMX) the signal frame outgrows an alternate signal
    stack sized before: the next child that exits (a subprocess, a worker of a later pass)
    kills the whole process with SIGSEGV. Seen as `serve` and test processes dying with exit
    139 while waiting for a child. Workers end with each pass (persistent_workers=False), so
    the handler has nothing left to watch."""

    def __iter__(self) -> Iterator[Item]:  # type: ignore[override]
        main = threading.current_thread() is threading.main_thread()
        before = signal.getsignal(signal.SIGCHLD) if main and self.num_workers > 0 else None
        batches = super().__iter__()
        try:
            yield from batches
        finally:
            if before is not None:
                del batches  # shuts the workers down before the handler goes
                signal.signal(signal.SIGCHLD, before)
                _forget_torch_sigchld_handler()


def _forget_torch_sigchld_handler() -> None:
    """Let the next worker pass install torch's handler again (it installs it once per process,
    remembered in a private flag; without the flag reset a later pass runs without it)."""
    from torch.utils.data._utils import signal_handling

    if hasattr(signal_handling, "_SIGCHLD_handler_set"):
        signal_handling._SIGCHLD_handler_set = False


def decode_target(preprocess: Preprocess) -> DecodeTarget | None:
    """What size `preprocess` (an open_clip transform) first resizes images to, for scaled
    decoding; None when its first geometric step is not one of open_clip's resizes, so the
    image is decoded at full size as before."""
    from open_clip.transform import ResizeKeepRatio
    from torchvision import transforms as T

    for step in getattr(preprocess, "transforms", [preprocess]):
        if isinstance(step, T.Resize) and step.max_size is None:
            size = [step.size] if isinstance(step.size, int) else list(step.size)
            if len(size) == 1:
                return DecodeTarget(int(size[0]), "shortest")
            return DecodeTarget(max(int(side) for side in size), "squash")
        if isinstance(step, ResizeKeepRatio):
            fit = "longest" if step.longest >= 1 else "shortest"
            return DecodeTarget(max(_sides(step.size)), fit)
        if not _is_colour_step(step):
            return None
    return None


def _sides(size: int | Sequence[int]) -> list[int]:
    return [size] if isinstance(size, int) else [int(side) for side in size]


def _is_colour_step(step: object) -> bool:
    # open_clip puts an RGB conversion before the resize in some versions.
    return getattr(step, "__name__", "") == "_convert_to_rgb" or type(step).__name__ in (
        "MaybeConvertMode",
    )
