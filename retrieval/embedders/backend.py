"""Which engine runs the model: torch eager, or an exported graph in a CPU runtime.

`auto` is the exported runtime on a CPU (2x torch eager's images/s on ViT-B-32, same vectors
within 1e-6; benchmarks/RESULTS.md) and torch on CUDA, where torch is already the fast path.
An architecture that does not export falls back to torch with one log line saying why.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from ..config import EXPORT_SECONDS_PER_MILLION_PARAMETERS, PROGRESS_LOGGER
from ..errors import ModelUnavailableError
from ..types import ModelIdentity
from . import export, hf_tokenizer, runtime

logger = logging.getLogger(__name__)
progress = logging.getLogger(PROGRESS_LOGGER)

BACKENDS = runtime.BACKENDS


def resolve_backend(backend: str, device: str, precision: str) -> str:
    """`auto|torch|<engine>` -> `torch` or an engine name, for a resolved device.

    Raises:
        ModelUnavailableError: unknown backend, an exported runtime asked for on CUDA, or a
            precision the runtime cannot run.
    """
    if backend not in BACKENDS:
        raise ModelUnavailableError(
            f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}"
        )
    on_gpu = device.startswith("cuda")
    if backend == "torch":
        return "torch"
    if backend == "auto":
        if on_gpu or precision not in ("auto", *runtime.PRECISIONS):
            return "torch"
        engines = runtime.available_engines()
        if runtime.DEFAULT_ENGINE not in engines:
            logger.info("no exported runtime installed (pip install openvino); using torch")
            return "torch"
        return runtime.DEFAULT_ENGINE
    if on_gpu:
        raise ModelUnavailableError(
            f"--backend {backend} runs on the CPU only; use --backend torch (or auto) on CUDA, "
            "or --device cpu"
        )
    if precision not in ("auto", *runtime.PRECISIONS):
        raise ModelUnavailableError(
            f"--backend {backend} runs fp32 or bf16, not {precision}; use --precision bf16 or "
            "--backend torch"
        )
    return backend


def runtime_precision(precision: str) -> str:
    """`auto` on the CPU is exact fp32."""
    return "fp32" if precision == "auto" else precision


def model_export_origin(model: torch.nn.Module, identity: ModelIdentity) -> dict[str, str]:
    """What a loaded model's export cache key is computed from (hashes its weights in memory
    when no weights file was recorded)."""
    weights = identity.weights_sha256 or export.state_dict_sha256(model)
    return {"weights": weights, "architecture": export.architecture_sha256(model)}


def export_estimate(model: torch.nn.Module) -> int:
    """Seconds the first-use export should take here: its measured rate per parameter, slowed by
    how many runnable processes share each core (the export took 55 s at load 16 on 2 cores)."""
    parameters = sum(tensor.numel() for tensor in model.parameters())
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    share = max(1.0, os.getloadavg()[0] / max(1, cores or 1)) if hasattr(os, "getloadavg") else 1.0
    return max(1, round(parameters / 1e6 * EXPORT_SECONDS_PER_MILLION_PARAMETERS * share))


def open_exported(
    model: torch.nn.Module,
    identity: ModelIdentity,
    *,
    engine: str,
    precision: str,
    threads: int,
    context_length: int,
    cache_dir: Path | None = None,
    required: bool = False,
    tokenizer: object = None,
) -> runtime.ExportedEncoder | None:
    """The cached exported encoder of `model`, exporting it first when the cache has no valid
    entry; None (after one log line) when the architecture does not export and not `required`.
    A Hugging Face `tokenizer` (multilingual models) is exported with the towers, so a cold text
    query tokenizes without transformers.

    Raises:
        ModelUnavailableError: the export failed and `required` (the user asked for it).
    """
    origin = model_export_origin(model, identity)
    key = runtime.export_key(origin["weights"], origin["architecture"], engine)
    options = {"threads": threads, "precision": precision, "engine": engine, "cache_dir": cache_dir}
    encoder = runtime.open_cached(key, **options)
    if encoder is not None:
        encoder.origin = origin
        return encoder
    progress.info("preparing the model for this CPU (first use, ~%d s)…", export_estimate(model))
    logger.info("exporting %s for the %s runtime", identity.name, engine)
    try:
        export.export_model(
            model,
            image_size=identity.preprocess["image_size"],
            context_length=context_length,
            dim=identity.dim,
            key=key,
            cache_dir=cache_dir,
            tokenizer_spec=hf_tokenizer.capture(tokenizer),
            engine=engine,
        )
    except export.ExportError as err:
        if required:
            raise ModelUnavailableError(
                f"{identity.name} could not be exported for --backend {engine} ({err}); "
                "use --backend torch"
            ) from err
        logger.warning("%s does not export (%s); running it with torch", identity.name, err)
        return None
    encoder = runtime.open_cached(key, **options)
    if encoder is None:
        raise ModelUnavailableError(
            f"the export cache at {runtime.entry_path(key, cache_dir)} did not keep what was "
            f"just written; check the disk, or set MMSEARCH_EXPORT_CACHE to another folder"
        )
    encoder.origin = origin
    return encoder
