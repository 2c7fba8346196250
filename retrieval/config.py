"""Frozen configuration for each layer; the CLI maps its options 1:1 onto these fields."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from .errors import InvalidOptionError
from .types import ModelSpec

DEFAULT_MODEL = ModelSpec("ViT-B-32", "laion2b_s34b_b79k")
# Relative to the current directory, like git's .git: indexes live beside the work that made them.
DEFAULT_INDEX_DIR = Path("indexes") / "default"
INDEX_DIR_ENV = "MMSEARCH_INDEX"
# What --device and --precision accept; checked here, without torch, so a typo fails before any
# work starts (embedders/open_clip.py resolves `auto` and checks that CUDA is really there).
DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")
PRECISIONS = ("auto", "fp32", "fp16", "bf16")


def default_index_dir() -> Path:
    """The index directory used when none is given: $MMSEARCH_INDEX or ./indexes/default."""
    return Path(os.environ.get(INDEX_DIR_ENV) or DEFAULT_INDEX_DIR)


# embedders/tensor_decode.py: auto = batched torchvision JPEG decoding on CUDA, Pillow workers
# elsewhere; gpu forces the torchvision path (on the CPU too); cpu never takes it. Pillow decodes
# large images scaled to the model's input size (images.DecodeTarget); full decodes every pixel
# in the Pillow workers, the reference that scaled decoding is measured against.
FULL_DECODE = "full"
DECODE_MODES = ("auto", "cpu", "gpu", FULL_DECODE)
DECODE_ENV = "MMSEARCH_DECODE"


@dataclass(frozen=True)
class EmbedConfig:
    """How to run the model: where, in what precision, how many at a time (the model itself
    comes from the index or from --model)."""

    device: str = "auto"
    precision: str = "auto"
    batch_size: int | None = None  # None: by device (see embedders/open_clip.py)
    num_workers: int | None = None
    # auto, torch or an engine of the registry in embedders/runtime.py (the CLI checks the
    # name against it before any work; embedders/backend.py resolves it); None threads: every
    # usable core
    backend: str = "auto"
    threads: int | None = None
    decode: str = "auto"  # auto|cpu|gpu|full, see DECODE_MODES

    def __post_init__(self) -> None:
        if not DEVICE_PATTERN.fullmatch(self.device):
            raise InvalidOptionError(
                f"unknown --device {self.device!r}; use auto, cpu, cuda or cuda:N"
            )
        if self.precision not in PRECISIONS:
            raise InvalidOptionError(
                f"unknown --precision {self.precision!r}; use one of {', '.join(PRECISIONS)}"
            )
        if self.decode not in DECODE_MODES:
            raise InvalidOptionError(
                f"unknown --decode {self.decode!r}; use one of {', '.join(DECODE_MODES)}"
            )
        if self.batch_size is not None and self.batch_size < 1:
            raise InvalidOptionError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.num_workers is not None and self.num_workers < 0:
            raise InvalidOptionError(f"--workers must be 0 or more, got {self.num_workers}")


MIB = 1024 * 1024

# -- Defaults and limits: one place -------------------------------------------------------------
# Images (or captions) per forward pass when --batch-size is not given, by use and device.
# embed, cpu: batch 8 ran ~2x faster per image than 32 on 2-core EPYC and Xeon with ViT-B-32 (the
#   activations of larger batches fall out of cache); the peers' runs found the same.
# embed, cuda: 256 keeps the tensor cores busy; 256 ViT-B-32 images in fp16 need < 2 GB.
# caption: the text decoder runs once per token for the whole batch; 8 on a CPU for the same
#   cache reason, 64 on a GPU (CoCa's decoder holds a key/value cache per caption).
# ray: 32 keeps a CPU actor's batch (and its memory) small while amortising the remote call;
#   256 fills a datacenter GPU with a ViT-B model.
BATCH_SIZES: dict[str, dict[str, int]] = {
    "embed": {"cpu": 8, "cuda": 256},
    "caption": {"cpu": 8, "cuda": 64},
    "ray": {"cpu": 32, "cuda": 256},
}


def default_batch_size(use: str, on_gpu: bool) -> int:
    """BATCH_SIZES for `use` (embed, caption, ray) on a GPU or a CPU."""
    return BATCH_SIZES[use]["cuda" if on_gpu else "cpu"]


# A write with at most this many images to embed (a product PUT) decodes them in its own
# process: starting decode worker processes costs ~200 ms on two loaded cores, decoding a few
# product photos in-process a few ms each.
SMALL_WRITE_IMAGES = 4

# The change log of small writes (storage/delta.py): a write that would take it past this many
# rows compacts it into a new generation instead. Readers search the logged vectors exactly, so
# the log costs every query a (rows x dim) product: 4096 x 512 floats is ~1 ms on one core,
# while a product write logs 2-4 rows, so a compaction (a full faiss write, ~1 s at 100k
# products) comes once per ~1,000+ writes. `serve` compacts in the background from
# DELTA_COMPACT_ROWS on, so writes seldom reach the limit themselves.
DELTA_MAX_ROWS = 4096
DELTA_COMPACT_ROWS = 2048

# Results a search returns at most per page; a page may start up to 10x deeper (offset).
MAX_K = 1000

# One pass over 32 short queries still takes about as long as a few single ones on a CPU, and on
# a GPU far longer batches are free; past 32 a burst is better served in two passes so the first
# callers are not held back by the last.
DEFAULT_MAX_BATCH = 32
# A text forward pass takes ~36 ms on 2 CPU cores (benchmarks/peers); 2 ms of waiting for
# companions costs a lone query 5% and lets a burst share one pass.
DEFAULT_MAX_WAIT_S = 0.002
# A query vector is dim * 4 bytes (2 KiB for ViT-B-32); 4096 of them are 8 MiB.
DEFAULT_CACHE_SIZE = 4096


@dataclass(frozen=True)
class BatchConfig:
    """How query texts are grouped into forward passes and cached (cache_size=0: no cache)."""

    max_batch: int = DEFAULT_MAX_BATCH
    max_wait_s: float = DEFAULT_MAX_WAIT_S
    cache_size: int = DEFAULT_CACHE_SIZE


@dataclass(frozen=True)
class ServeConfig:
    """How the HTTP app serves: access, request limits, concurrency and caching."""

    api_key: str | None = None
    cors_origins: tuple[str, ...] = ()
    # Without a key, Host names answered beyond localhost and IP addresses ("*": any); the
    # runner adds the --host name. Against DNS rebinding (http/security.HostCheckMiddleware).
    allowed_hosts: tuple[str, ...] = ()
    # Proxies whose X-Forwarded-For/-Proto are believed (uvicorn's forwarded_allow_ips); none by
    # default, so no client can choose the address the access log shows.
    forwarded_allow_ips: tuple[str, ...] = ()
    # --fetch-allow: hosts/CIDRs whose private addresses product image URLs may come from.
    fetch_allow: tuple[str, ...] = ()
    # --compact-rows: change-log rows (storage/delta.py) past which a background compaction runs.
    compact_rows: int = DELTA_COMPACT_ROWS
    # Phone photos are 2-8 MB; 20 MiB leaves room for large PNGs without inviting abuse.
    max_upload_bytes: int = 20 * MIB
    # Full-resolution modes of current phone cameras reach 48-50 Mpx. Per image, and per request
    # over all of a composed query's images together.
    max_megapixels: float = 50.0
    # Megapixels decoded at once over all requests (http/limits.PixelBudget); more wait (429
    # after queue_timeout_s). A decode and its preprocessing peak at 8.0 MiB per Mpx for RGB,
    # 12.6 for 16-bit and 16.4 for RGBA PNGs (benchmarks/decode_memory.py), so 64 Mpx bounds
    # decode memory at ~0.5 GiB for RGB and ~1.05 GiB at worst, while still admitting one
    # maximum-size image, or many phone photos (JPEGs decode at reduced scale), at once.
    decode_budget_megapixels: float = 64.0
    # Threads that may embed or search at once; text queries among them share forward passes.
    max_concurrency: int = 16
    # Requests allowed to wait for a thread; the next one gets 429 at once.
    max_queue: int = 64
    queue_timeout_s: float = 10.0
    retry_after_s: int = 1
    # ~20 KB per 256 px JPEG thumbnail: 64 MiB holds a few thousand.
    thumbnail_cache_bytes: int = 64 * MIB
    batching: BatchConfig = field(default_factory=BatchConfig)
    # Slow clients: a request head (line + headers) must arrive within header_timeout_s of the
    # connection opening or of the previous answer, a body chunk within body_idle_timeout_s of
    # the last, and the whole body within body_timeout_s. 120 s moves a 20 MiB upload at
    # 1.4 Mbit/s; a slowloris client holds a connection for at most that long.
    header_timeout_s: float = 10.0
    body_idle_timeout_s: float = 15.0
    body_timeout_s: float = 120.0
