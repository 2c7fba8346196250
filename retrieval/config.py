"""Frozen configuration for each layer; the CLI maps its options 1:1 onto these fields."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from .errors import InvalidOptionError
from .types import ModelSpec

DEFAULT_MODEL = ModelSpec("ViT-B-32", "laion2b_s34b_b79k")
# Relative to the current directory, like git's .git: indexes live beside the work that made them.
DEFAULT_INDEX_DIR = Path("indexes") / "default"
# What --device and --precision accept; checked here, without torch, so a typo fails before any
# work starts (embedders/open_clip.py resolves `auto` and checks that CUDA is really there).
DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")
# auto: fp32 on a CPU (embedders/cpu_precision.py), bf16/fp16 on CUDA; int8: the image tower
# quantised on a sample of the images being indexed (CPU only).
PRECISIONS = ("auto", "fp32", "fp16", "bf16", "int8")
# Whether `auto` runs bf16 on CPUs with native bf16 (AMX/AVX512_BF16). Issue 23's bar: top-10
# overlap >= 99% and min cosine >= 0.999 against fp32 with a trained model. Measured on an Intel
# Xeon with AMX (benchmarks/precision.py): min cosine 0.99975, top-10 overlap 98.8%: missed, so
# auto stays exact fp32; flip this when a measurement passes.
AUTO_BF16_ON_NATIVE = False


# Progress lines the library logs for the user to see whatever the log level (the CLI shows them
# on stderr without a level prefix): one-off waits such as the first use of a model.
PROGRESS_LOGGER = "retrieval.progress"
# The first-use export's seconds per million model parameters on an idle machine, for the
# estimate in its progress line: ~9 s for ViT-B-32's 151 M (10.2 CPU s under load;
# docs/design.md, "The exported runtime's cache"); backend.export_estimate scales it by the load.
EXPORT_SECONDS_PER_MILLION_PARAMETERS = 0.06


# embedders/tensor_decode.py: auto = batched torchvision JPEG decoding on CUDA, Pillow workers
# elsewhere; gpu forces the torchvision path (on the CPU too); cpu never takes it. Pillow decodes
# large images scaled to the model's input size (images.DecodeTarget); full decodes every pixel
# in the Pillow workers, the reference that scaled decoding is measured against.
FULL_DECODE = "full"
DECODE_MODES = ("auto", "cpu", "gpu", FULL_DECODE)


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
    # None: ~/.cache/mmsearch/exports (embedders/runtime.py) and ~/.cache/mmsearch/hashes.json
    # (files.py); the front ends fill them from MMSEARCH_EXPORT_CACHE / MMSEARCH_HASH_CACHE
    export_cache: Path | None = None
    hash_cache: Path | None = None

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

# --precision int8 (embedders/quantize.py): images sampled from the run's own files to calibrate
# the quantised image tower (NNCF's guidance is a few hundred; 128 keeps the one-off cost to
# seconds of decoding and forward passes), and further images held out to measure it vs fp32.
INT8_CALIBRATION_IMAGES = 128
INT8_HELD_OUT_IMAGES = 8

# -- Defaults and limits: one place -------------------------------------------------------------
# Images (or captions) per forward pass when --batch-size is not given, by use and device; the
# measurements behind each: docs/design.md, "Batch sizes per device and use".
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

# The change log of small writes (storage/delta.py), sized by the catalog (delta.compact_rows_for):
# `serve` compacts it in the background from n/DELTA_COMPACT_FRACTION rows (n: the vectors of
# the faiss files), at least DELTA_COMPACT_MIN and at most DELTA_COMPACT_MAX, and a write that
# would take it past twice that compacts inline. A compaction costs O(n) (~1 s at 100k products
# on two cores), so a threshold that grows with n keeps its cost per logged row constant up to
# 131k vectors (benchmarks/product_writes.py, bulk rows/s at 10k and 100k), while readers search
# the logged vectors exactly: at most 16,384 x 512 floats, ~3 ms a query on one core.
DELTA_COMPACT_MIN = 2048
DELTA_COMPACT_MAX = 8192
DELTA_COMPACT_FRACTION = 16

# Keyword search (storage/keywords.py): query words of this many letters or more also match
# the words they begin (`gold` -> goldfish), ranked below exact matches. Two letters is the
# shortest prefix the keyword table indexes; a one-letter prefix would match a 26th of the
# vocabulary and only add noise below the real matches.
PREFIX_MIN_LENGTH = 2

# Results a search returns at most per page; a page may start up to 10x deeper (offset).
MAX_K = 1000

# -- Product merchandising (search/merch.py, shop.py); docs/design.md, "Product merchandising"
# Value facets: the 20 most frequent values, then one `other` count (Algolia/Typesense show
# 10-20); number facets without bands: 5 bands cut at the catalog's quantiles.
FACET_VALUES = 20
FACET_BANDS = 5
MAX_FACETS = 16
# Browsing's facet counts and the quantile bands, kept until the catalog changes.
FACET_CACHE_SIZE = 1024
MAX_SORT_KEYS = 4
MAX_FILTER_VALUES = 100  # values one filter may OR together
# A merchandised query works on at most its best MERCH_DEPTH products at or above the cutoff,
# ranked MERCH_START_DEPTH deep first and 4x deeper while still above it.
MERCH_DEPTH = MAX_K
MERCH_START_DEPTH = 100
# Without min_score, facets and sort count the products within this cosine of the best.
DEFAULT_FACET_MARGIN = 0.1
# `boost=popularity:log` adds DEFAULT_BOOST_LOG_SCALE * log1p(popularity).
DEFAULT_BOOST_LOG_SCALE = 0.01

# Text queries per shared forward pass, and how long one waits for companions (2 ms: 5% of a
# ~36 ms CPU pass); docs/design.md, "Query micro-batching in serve".
DEFAULT_MAX_BATCH = 32
DEFAULT_MAX_WAIT_S = 0.002
# A query vector is dim * 4 bytes (2 KiB for ViT-B-32); 4096 of them are 8 MiB.
DEFAULT_CACHE_SIZE = 4096


@dataclass(frozen=True)
class BatchConfig:
    """How query texts are grouped into forward passes and cached (cache_size=0: no cache)."""

    max_batch: int = DEFAULT_MAX_BATCH
    max_wait_s: float = DEFAULT_MAX_WAIT_S
    cache_size: int = DEFAULT_CACHE_SIZE


# Image URLs whose server sent no validator (no ETag, no Last-Modified) cannot be asked "has this
# changed?", only fetched again. A re-import reuses the stored copy of such a URL for a day, then
# fetches it again: a shop that syncs its catalog every few minutes (PUT/bulk) does not download
# every photo each time, and a photo replaced in place at the same URL shows within a day, the
# cadence at which catalogs are republished (at once with --refetch / ?refetch=true). URLs with
# a validator are asked every time (If-None-Match / If-Modified-Since), and 304 costs no body.
REMOTE_MAX_AGE_S = 24 * 3600.0
# Image URLs fetched or revalidated at once by one import: a re-import of 10,000 URLs is 10,000
# round trips (mostly 304s), which one at a time take minutes; 8 connections is what a browser
# opens per host, which CDNs expect and do not throttle.
FETCH_CONCURRENCY = 8


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
    # --compact-rows: change-log rows (storage/delta.py) past which a background compaction runs;
    # None: sized by the catalog (delta.compact_rows_for).
    compact_rows: int | None = None
    # Phone photos are 2-8 MB; 20 MiB leaves room for large PNGs without inviting abuse.
    max_upload_bytes: int = 20 * MIB
    # Full-resolution modes of current phone cameras reach 48-50 Mpx. Per image, and per request
    # over all of a composed query's images together.
    max_megapixels: float = 50.0
    # Megapixels decoded at once over all requests (http/limits.PixelBudget); more wait (429
    # after queue_timeout_s). ~0.5-1.05 GiB of decode memory: docs/design.md, "Serving limits".
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
    # Business boosts of every product search that gives no `boost` (search/merch.py syntax).
    boosts: tuple[str, ...] = ()
    # Keep a bounded sample of the query vectors received in the index directory, so the next
    # re-tune measures recall with real queries (storage/probes.py). Off: queries are private.
    record_queries: bool = False
    # Slow clients: a request head within header_timeout_s, a body chunk within
    # body_idle_timeout_s of the last, the whole body within body_timeout_s (docs/design.md).
    header_timeout_s: float = 10.0
    body_idle_timeout_s: float = 15.0
    body_timeout_s: float = 120.0
    # --currency: the ISO 4217 code the catalog's prices are in, for the search page (GET /config).
    currency: str | None = None
