"""Run exported open_clip towers on the CPU without torch: the export cache and its encoder.

An entry of the cache is one folder per model, named by `export_key` (weights, architecture,
exporter and runtime versions), holding one graph per tower in the engine's own form (OpenVINO
IR `image.xml` + `image.bin`, or `image.onnx`; see export.py) and `meta.json`, which names the
graphs and records each file's size and sha256. An entry is only used after its meta and
checksums match; anything else (a truncated file, a flipped byte, an entry from other versions)
reads as missing, and the torch side exports again. This module imports neither torch nor
open_clip, so a cold query can load it with the torch-free tokenizer and image preprocessing.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import os
import shutil
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ..errors import InvalidOptionError, ModelUnavailableError
from ..files import cached_sha256
from ..files import file_sha256 as _file_sha256
from ..types import Vectors

logger = logging.getLogger(__name__)

DEFAULT_CACHE_DIR = Path("~/.cache/mmsearch/exports")
META_FILE = "meta.json"
TOWERS = ("image", "text")
# Stat-keyed checksums of the cache's own files (files.cached_sha256), kept in the cache's root.
HASHES_FILE = "hashes.json"
# Bump when the entry layout or the exported wrappers change: old entries then read as stale.
# 2: one form per engine (OpenVINO IR), graphs named in meta.json, no compiled blobs.
FORMAT = 2
# The promise of the exported backend: within this of open_clip fp32 eager, per component of a
# normalised vector (measured: ~1e-6 for ViT-B-32).
EXACT_TOLERANCE = 1e-4
# int8: the image tower quantised by embedders/quantize.py (`image_graph`); other graphs of an
# int8 encoder run fp32.
PRECISIONS = ("fp32", "bf16", "int8")


class RuntimeUnavailableError(ModelUnavailableError):
    """The chosen runtime is not installed or cannot run the requested precision."""


def default_threads() -> int:
    """Model threads when none are asked for: every usable core (the CLI passes
    $MMSEARCH_THREADS; decode workers mostly wait on the model; see benchmarks/HISTORY.md,
    threads table)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def default_cache_dir() -> Path:
    """Where exported graphs live when no cache_dir is given: ~/.cache/mmsearch/exports (the
    CLI passes $MMSEARCH_EXPORT_CACHE)."""
    return DEFAULT_CACHE_DIR.expanduser()


def _version(package: str) -> str:
    # importlib.metadata reads the installed version without importing the package (torch's
    # import alone is seconds).
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "absent"


def export_key(weights_sha256: str, architecture_sha256: str, engine: str | None = None) -> str:
    """The cache key of a model's exported graphs under the installed exporter and runtime."""
    engine = engine or DEFAULT_ENGINE
    parts = {
        "format": FORMAT,
        "weights": weights_sha256,
        "architecture": architecture_sha256,
        "torch": _version("torch"),
        "onnxscript": _version("onnxscript"),
        "onnx": _version("onnx"),
        "engine": engine,
        "engine_version": _version(ENGINES[engine].package),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def entry_path(key: str, cache_dir: Path | None = None) -> Path:
    """The folder of the cache entry for `key` (which may not exist)."""
    return (cache_dir or default_cache_dir()) / key[:32]


def write_meta(folder: Path, *, key: str, **fields: Any) -> None:
    """Record the entry's key, shapes and the size + sha256 of every file in it."""
    files = {
        path.name: {"bytes": path.stat().st_size, "sha256": _file_sha256(path)}
        for path in sorted(folder.iterdir())
        if path.is_file() and path.name != META_FILE
    }
    meta = {"format": FORMAT, "key": key, "files": files, **fields}
    temporary = folder / f".{META_FILE}.tmp"
    temporary.write_text(json.dumps(meta, indent=2, sort_keys=True))
    os.replace(temporary, folder / META_FILE)


def prune_older_formats(root: Path) -> tuple[int, int]:
    """Delete the entries under `root` that an older layout wrote (meta.json's `format` below
    FORMAT): this version and every later one read them as stale and never open them again,
    and a FORMAT 1 entry of ViT-B-32 holds ~1.8 GB. Entries of this format made by other
    library versions are kept (another environment sharing the cache may use them), as are
    folders without a readable meta.json (an export in progress, or not ours). Returns
    (entries removed, bytes freed)."""
    removed = freed = 0
    try:
        folders = [
            path for path in root.iterdir() if path.is_dir() and not path.name.startswith(".")
        ]
    except OSError:
        return 0, 0
    for folder in folders:
        try:
            version = json.loads((folder / META_FILE).read_text()).get("format")
        except (OSError, ValueError, AttributeError):
            continue
        if not isinstance(version, int) or version >= FORMAT:
            continue
        size = sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())
        shutil.rmtree(folder, ignore_errors=True)
        if not folder.exists():
            removed, freed = removed + 1, freed + size
    return removed, freed


def graph_files(meta: dict, tower: str) -> list[str]:
    """The files of one tower's graph in an entry: the graph meta.json names for it, and the
    files sharing its stem (an OpenVINO IR's .bin of weights)."""
    graph = meta.get("graphs", {}).get(tower)
    if not graph:
        return []
    stem = Path(graph).stem
    return sorted(name for name in meta.get("files", {}) if Path(name).stem == stem)


def read_meta(folder: Path, key: str | None = None, towers: tuple[str, ...] = ()) -> dict | None:
    """The entry's meta when it is complete and intact, else None (with a log line saying why).

    `towers` limits the checksum pass to the graphs about to be loaded (a text query need not
    read the image tower); sizes of all files are always checked."""
    try:
        meta = json.loads((folder / META_FILE).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        logger.warning(
            "export cache entry %s has an unreadable meta.json (%s); rebuilding", folder, err
        )
        return None
    problem = None
    files = {name for tower in towers for name in graph_files(meta, tower)}
    if meta.get("format") != FORMAT or (key is not None and meta.get("key") != key):
        problem = "it was made by other versions"
    for name, recorded in meta.get("files", {}).items():
        path = folder / name
        if problem:
            break
        if not path.is_file() or path.stat().st_size != recorded["bytes"]:
            problem = f"{name} is missing or truncated"
        # Stat-keyed (size, mtime, inode) like the weights: a cold query must not re-read a
        # 250 MB graph each time, and any rewrite of the file is hashed again.
        elif (not files or name in files) and _cached_sha256(path, folder.parent) != recorded[
            "sha256"
        ]:
            problem = f"{name} fails its checksum"
    if not problem and not all(graph_files(meta, tower) for tower in TOWERS):
        problem = "it lacks a tower"
    if problem:
        logger.warning("export cache entry %s is not usable: %s; rebuilding", folder, problem)
        return None
    return meta


Session = Callable[[npt.NDArray[Any]], npt.NDArray[np.float32]]


def _onnxruntime_session(path: Path, threads: int, precision: str, throughput: int) -> Session:
    """One onnxruntime session of `threads` threads; `throughput` is not used (one stream)."""
    try:
        import onnxruntime
    except ImportError as err:
        raise RuntimeUnavailableError(
            "the onnxruntime backend needs onnxruntime: pip install onnxruntime, "
            "or use --backend torch"
        ) from err
    if precision != "fp32":
        raise RuntimeUnavailableError(
            "onnxruntime runs these graphs in fp32 only on CPUs; use --precision fp32, or "
            "--backend openvino / torch for bf16"
        )
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda array: session.run(None, {name: array})[0]


def _openvino_session(path: Path, threads: int, precision: str, throughput: int) -> Session:
    """One OpenVINO graph on `threads` threads.

    `throughput=0` (queries, serve): one stream, so each batch, a single query included, uses
    every thread. `throughput=N` (bulk indexing in batches of N): OpenVINO's THROUGHPUT hint,
    told to expect N requests at most so it never makes more streams than a batch has images
    (on 2 cores: 2 streams of 1 thread), and each batch is split over them: one join per batch
    instead of a barrier between two threads at every layer, which a decode worker's time
    slices turned into waits. On 2 cores, 12 MP photos indexed at 1.25x the img/s (sample
    JPEGs 1.02x; benchmarks/photo_library.py --compare-streams). Not for queries: one image
    would run on one stream's thread only.
    """
    try:
        import openvino
    except ImportError as err:
        raise RuntimeUnavailableError(
            "the openvino backend needs openvino: pip install openvino, or use --backend torch"
        ) from err
    config = {
        "INFERENCE_NUM_THREADS": threads,
        "PERFORMANCE_HINT": "THROUGHPUT" if throughput else "LATENCY",
        **({"PERFORMANCE_HINT_NUM_REQUESTS": throughput} if throughput else {}),
        # Explicit: OpenVINO picks bf16 on its own on some bf16-capable CPUs.
        "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
    }
    # Compiled from the IR each time (its .bin memory-mapped): ~0.4 s a ViT-B-32 tower, while
    # OpenVINO's compiled-blob cache (CACHE_DIR) would store every weight a second time
    # (benchmarks/first_run.py).
    compiled = openvino.Core().compile_model(str(path), "CPU", config)
    streams = int(compiled.get_property("NUM_STREAMS")) if throughput else 1
    requests = [compiled.create_infer_request() for _ in range(max(1, streams))]
    # An InferRequest runs one inference at a time ("Infer Request is busy" otherwise), and
    # `serve` embeds uploads from many worker threads at once. One lock for the requests, not
    # a request per thread: with the LATENCY hint each inference already uses every thread, and
    # in the throughput mode one batch already keeps every stream busy.
    busy = threading.Lock()
    weights = {os.path.realpath(path.with_suffix(".bin"))}
    # Compiling read every weight in through the mapping: release those pages now, not at the
    # first inference, so they never add to the next tower's compile (a ViT-B-32 server's peak
    # RSS 1,049 -> 902 MiB, benchmarks/first_run.py).
    drop_mapped_pages(weights)
    shapes: set[tuple[int, ...]] = set()

    def infer(array: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
        if len(requests) == 1 or len(array) == 1:
            # infer() returns views of the request's buffers; copy before the next call
            return np.array(requests[0].infer([array])[0], dtype=np.float32)
        parts = [part for part in np.array_split(array, len(requests)) if len(part)]
        started = []
        try:
            for request, part in zip(requests, parts, strict=False):
                request.start_async([np.ascontiguousarray(part)])
                started.append(request)
        finally:
            # Every started inference ends before the lock is let go, even when one failed:
            # a request still running would answer the next batch "Infer Request is busy".
            failures = []
            for request in started:
                try:
                    request.wait()
                except RuntimeError as err:
                    failures.append(err)
        if failures:
            raise failures[0]
        return np.concatenate(
            [np.array(request.get_output_tensor(0).data, dtype=np.float32) for request in started]
        )

    def run(array: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
        with busy:
            features = infer(array)
            if array.shape not in shapes:  # a new shape may have packed the weights again
                shapes.add(array.shape)
                drop_mapped_pages(weights)
            return features

    return run


# Linux's madvise advice that drops a mapping's resident pages (a later read faults them back in
# from the file).
MADV_DONTNEED = 4


def _cached_sha256(path: Path, cache_root: Path) -> str:
    """cached_sha256 of a file of the export cache at `cache_root`, remembered in its root."""
    return cached_sha256(path, cache_root / HASHES_FILE)


def drop_mapped_pages(files: set[str]) -> int:
    """Release the resident pages of this process's read-only mappings of `files`; returns
    how many mappings were advised.

    OpenVINO maps an IR's .bin, repacks the weights it computes with into its own memory on the
    first inference at a shape, and keeps the mapping: the file's pages then count in the RSS
    a second time (~580 MiB for ViT-B-32) while nothing reads them. Dropping them is safe for a
    read-only file mapping (a read faults the page back in from the file) and took a ViT-B-32
    server from 1.2 to 0.6 GiB of OpenVINO RSS (benchmarks/first_run.py). Hand-written with
    ctypes: neither the standard library (mmap.madvise needs our own mmap object) nor OpenVINO
    offers it for someone else's mapping. A no-op off Linux or on any error."""
    if not sys.platform.startswith("linux"):
        return 0
    advised = 0
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        madvise = libc.madvise
        madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        with open("/proc/self/maps") as maps:
            for line in maps:
                fields = line.split(maxsplit=5)
                if len(fields) < 6 or "w" in fields[1] or fields[5].strip() not in files:
                    continue
                start, end = (int(value, 16) for value in fields[0].split("-"))
                advised += madvise(start, end - start, MADV_DONTNEED) == 0
    except (OSError, AttributeError, ValueError) as err:
        logger.debug("could not release mapped weights: %s", err)
    return advised


@dataclass(frozen=True)
class Engine:
    package: str
    # (graph file, threads, precision, throughput) -> Session; see _openvino_session
    create_session: Callable[[Path, int, str, int], Session]


# A new runtime is an entry here: its pip package and a function that loads one graph.
ENGINES: dict[str, Engine] = {
    "openvino": Engine("openvino", _openvino_session),
    "onnxruntime": Engine("onnxruntime", _onnxruntime_session),
}
DEFAULT_ENGINE = "openvino"
# What --backend takes: the one registry above, plus torch eager and `auto` (backend.py).
BACKENDS = ("auto", "torch", *ENGINES)


def check_backend(backend: str) -> str:
    """`backend` when it names one (checked without torch, so a typo fails before any work).

    Raises:
        InvalidOptionError: an unknown name.
    """
    if backend not in BACKENDS:
        raise InvalidOptionError(f"unknown --backend {backend!r}; use one of {', '.join(BACKENDS)}")
    return backend


def available_engines() -> list[str]:
    """The engines in ENGINES whose package is installed."""
    return [name for name, engine in ENGINES.items() if _version(engine.package) != "absent"]


def _normalise(features: npt.NDArray[np.float32]) -> Vectors:
    features = features.astype(np.float32, copy=False)
    norms = np.linalg.norm(features, axis=-1, keepdims=True)
    # torch.nn.functional.normalize's eps, so a zero vector comes out as zeros in both backends
    return np.ascontiguousarray(features / np.maximum(norms, 1e-12), dtype=np.float32)


@dataclass
class ExportedEncoder:
    """Encodes pixels and token ids with an exported model; graphs load on first use."""

    folder: Path
    meta: dict[str, Any]
    threads: int
    precision: str = "fp32"
    engine: str = DEFAULT_ENGINE
    # {"weights": sha256, "architecture": sha256}: what export_key was computed from, recorded
    # in the index so a cold text query can find this entry again without loading torch.
    origin: dict[str, str] = field(default_factory=dict)
    # Another graph for the image tower (the int8 one of embedders/quantize.py), or None.
    image_graph: Path | None = None
    # Bulk indexing's batch size: the engine's throughput mode (streams of fewer threads, at
    # most this many, each batch split over them); 0: every batch on every thread, as a query
    # wants.
    throughput: int = 0
    _sessions: dict[str, Session] = field(default_factory=dict, repr=False)
    _loading: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def dim(self) -> int:
        return int(self.meta["dim"])

    @property
    def image_size(self) -> int:
        return int(self.meta["image_size"])

    def graph_path(self, tower: str) -> Path:
        """The graph file of `tower` ("image" or "text") in this entry (IR .xml or .onnx), or
        `image_graph` for the image tower when one is set (int8, embedders/quantize.py)."""
        if tower == "image" and self.image_graph is not None:
            return self.image_graph
        return self.folder / self.meta["graphs"][tower]

    def _session(self, tower: str) -> Session:
        with self._loading:  # two threads' first queries compile one graph, not two
            if tower not in self._sessions:
                create = ENGINES[self.engine].create_session
                self._sessions[tower] = create(
                    self.graph_path(tower), self.threads, self.precision, self.throughput
                )
            return self._sessions[tower]

    def drop_session(self, tower: str) -> None:
        """Forget a loaded graph (the next use loads it again, e.g. a new `image_graph`)."""
        with self._loading:
            self._sessions.pop(tower, None)

    def encode_images(self, pixels: npt.NDArray[np.float32]) -> Vectors:
        """(n, 3, H, W) float32 preprocessed pixels -> (n, dim) normalised float32."""
        if len(pixels) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        pixels = np.ascontiguousarray(pixels, dtype=np.float32)
        return _normalise(self._session("image")(pixels))

    def encode_tokens(self, tokens: npt.NDArray[np.int64]) -> Vectors:
        """(n, context_length) token ids as open_clip's tokenizer returns them -> (n, dim)
        normalised float32; rows are cut after the batch's last end-of-text token."""
        if len(tokens) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        tokens = np.ascontiguousarray(tokens, dtype=np.int64)
        pooling = self.meta.get("pooling")
        if pooling:
            if pooling["pool"] == "argmax":
                ends = tokens.argmax(axis=-1)
            else:
                ends = (tokens == pooling["eos_id"]).argmax(axis=-1)
            tokens = np.ascontiguousarray(tokens[:, : int(ends.max()) + 1])
        return _normalise(self._session("text")(tokens))


def _check_choice(engine: str, precision: str) -> None:
    if engine not in ENGINES:
        raise RuntimeUnavailableError(
            f"unknown runtime {engine!r}; use one of {', '.join(ENGINES)} or --backend torch"
        )
    if precision not in PRECISIONS:
        raise RuntimeUnavailableError(
            f"the exported runtime runs {' or '.join(PRECISIONS)}, not {precision!r}"
        )


def open_folder(
    folder: Path, *, threads: int, precision: str = "fp32", engine: str | None = None
) -> ExportedEncoder:
    """An encoder over an entry folder, without checking it (the exporter's own check)."""
    engine = engine or DEFAULT_ENGINE
    _check_choice(engine, precision)
    meta = json.loads((folder / META_FILE).read_text())
    return ExportedEncoder(folder, meta, threads, precision, engine)


def open_cached(
    key: str,
    *,
    threads: int,
    precision: str = "fp32",
    engine: str | None = None,
    cache_dir: Path | None = None,
    towers: tuple[str, ...] = ("image", "text"),
) -> ExportedEncoder | None:
    """The encoder for a valid cache entry, or None when it is missing, stale or corrupt.

    `towers` says which graphs will be used, so only those are checksummed (("text",) for a
    text query).

    Raises:
        RuntimeUnavailableError: unknown engine or precision.
    """
    engine = engine or DEFAULT_ENGINE
    _check_choice(engine, precision)
    folder = entry_path(key, cache_dir)
    meta = read_meta(folder, key, towers=towers)
    if meta is None:
        return None
    return ExportedEncoder(folder, meta, threads, precision, engine)
