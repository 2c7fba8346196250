"""Export an open_clip model's image and text towers, once per model, into the export cache
that `runtime.py` reads. This is the torch side; the runtime side never imports torch.

Each engine has its route (ROUTES), and an entry holds one form of the model, nothing beside it:
- OpenVINO converts the towers straight from PyTorch (`openvino.convert_model`, which traces
  them) and saves its own IR (`image.xml` + `image.bin`, weights kept fp32). On ViT-B-32 that
  took 0.47x the ONNX export's time in the same run, and the IR, its .bin memory-mapped,
  compiles in about a second a tower, so no compiled blob is cached beside it (importing one
  saved ~0.2 s a tower for another copy of every weight; benchmarks/first_run.py).
- onnxruntime reads ONNX: torch.onnx's dynamo exporter, which keeps the batch and the text
  length symbolic. (The legacy TorchScript exporter bakes the traced sizes into the attention
  reshapes of nn.MultiheadAttention, so it would need one graph per shape.) OpenVINO also takes
  this route when its own conversion rejects a model.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import MmsearchError
from ..files import remember_sha256
from . import hf_tokenizer, runtime

logger = logging.getLogger(__name__)

# Dynamo needs example inputs whose sizes differ from 0/1 and from each other, or it
# specialises them; 2 images, 2 texts of 7 tokens is the smallest safe choice.
EXAMPLE_BATCH = 2
EXAMPLE_TEXT_LENGTH = 7
# ONNX opset 18 is the exporter's default in torch 2.5+ and every runtime we support reads it.
OPSET = 18


class ExportError(MmsearchError):
    """The model's towers could not be exported; callers fall back to torch."""


def text_features(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """CLIP's encode_text over `tokens` exactly as given (no padding beyond its width), for a
    causal text tower pooled at the end-of-text token; see `encode_text_trimmed`."""
    import open_clip

    length = tokens.shape[1]
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast_dtype)
    x = x + model.positional_embedding[:length].to(cast_dtype)
    x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
    x = model.ln_final(x)
    x = open_clip.transformer.text_global_pool(
        x, tokens, model.text_pool_type, eos_token_id=getattr(model, "text_eos_id", None)
    )
    projection = model.text_projection
    if projection is None:
        return x
    return projection(x) if isinstance(projection, torch.nn.Linear) else x @ projection


def text_pooling(model: torch.nn.Module) -> dict[str, Any] | None:
    """How the runtime finds where a token row may be cut (`pool`, `eos_id`), or None when the
    text tower reads every position and rows must stay at the full context length."""
    import open_clip

    pool = getattr(model, "text_pool_type", None)
    if not isinstance(model, open_clip.CLIP) or pool not in ("argmax", "eos"):
        return None
    if getattr(model, "attn_mask", None) is None:
        return None
    return {"pool": pool, "eos_id": getattr(model, "text_eos_id", None)}


class _ImageTower(torch.nn.Module):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixels)


class _TextTower(torch.nn.Module):
    def __init__(self, model: torch.nn.Module, trimmed: bool) -> None:
        super().__init__()
        self.model = model
        self.trimmed = trimmed

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.trimmed:
            return text_features(self.model, tokens)
        return self.model.encode_text(tokens)


def architecture_sha256(model: torch.nn.Module) -> str:
    """Hash of the module tree (layer types and sizes) plus the text pooling: what, besides
    the weights, decides the exported graph."""
    description = repr(model) + json.dumps(text_pooling(model), sort_keys=True)
    return hashlib.sha256(description.encode()).hexdigest()


def state_dict_sha256(model: torch.nn.Module) -> str:
    """Hash of the weights in memory, for models loaded without a local weights file."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


# One tower's export: (module, example input, input name, {dynamic axis: its largest size},
# entry folder, file stem) -> the graph file written (its sidecars share the stem).
Route = Callable[[torch.nn.Module, torch.Tensor, str, dict[int, int], Path, str], str]
_AXIS_NAMES = {0: "batch", 1: "length"}


def _write_onnx(
    module: torch.nn.Module,
    example: torch.Tensor,
    name: str,
    dynamic: dict[int, int],
    folder: Path,
    stem: str,
) -> str:
    file = f"{stem}.onnx"
    dims = {
        axis: torch.export.Dim(_AXIS_NAMES[axis], min=1, max=top) for axis, top in dynamic.items()
    }
    quiet = io.StringIO()  # the dynamo exporter prints its progress to stdout
    with contextlib.redirect_stdout(quiet), torch.no_grad():
        program = torch.onnx.export(
            module,
            (example,),
            input_names=[name],
            output_names=["features"],
            dynamic_shapes=(dims,),
            dynamo=True,
            opset_version=OPSET,
            verbose=False,
        )
        program.save(str(folder / file))
    return file


def _write_openvino_ir(
    module: torch.nn.Module,
    example: torch.Tensor,
    name: str,
    dynamic: dict[int, int],
    folder: Path,
    stem: str,
) -> str:
    import openvino

    file = f"{stem}.xml"
    with torch.no_grad(), warnings.catch_warnings():
        # torch 2.14 marks torch.jit.trace deprecated on every call
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        # Traced here rather than by convert_model, to skip the trace check it asks for (a
        # second and third forward pass, ~40% of the conversion); _check compares the
        # converted graph with eager torch at other shapes instead.
        traced = torch.jit.trace(module, (example,), check_trace=False)
        graph = openvino.convert_model(traced, example_input=(example,))
    # Every input axis comes out dynamic; `dynamic` (sizes the ONNX exporter needs) is moot.
    graph.inputs[0].get_tensor().set_names({name})
    # fp32 weights: the runtime's promise is open_clip fp32 within 1e-4; bf16 is chosen at
    # compile time (INFERENCE_PRECISION_HINT), not baked into the file.
    openvino.save_model(graph, str(folder / file), compress_to_fp16=False)
    return file


# The route each engine reads, tried first; the ONNX export is every engine's fallback.
ROUTES: dict[str, Route] = {"openvino": _write_openvino_ir, "onnxruntime": _write_onnx}
# The largest batch the ONNX graphs accept (the dynamo exporter wants a bound).
MAX_BATCH = 4096


def _vocab_size(model: torch.nn.Module) -> int:
    """The text tower's vocabulary: CLIP's 49408, or the multilingual tower's own."""
    for owner in (model, getattr(model, "text", None)):
        size = getattr(owner, "vocab_size", None)
        if isinstance(size, int) and size > 1:
            return size
    return 49408


def _check(
    model: torch.nn.Module, folder: Path, pooling: dict | None, context: int, engine: str
) -> None:
    """Run the exported graphs once at shapes unlike the example and compare with eager torch:
    an export that silently specialised a size fails here, not at query time."""
    encoder = runtime.open_folder(folder, threads=torch.get_num_threads(), engine=engine)
    size = encoder.image_size
    pixels = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(0))
    length = 5 if pooling else context
    vocab = _vocab_size(model)
    tokens = torch.randint(
        1, min(400, vocab), (3, length), generator=torch.Generator().manual_seed(0)
    )
    # argmax pooling reads the highest id (CLIP's end-of-text token is its last)
    tokens[:, -1] = pooling["eos_id"] if pooling and pooling["pool"] == "eos" else vocab - 1
    with torch.no_grad():
        want_image = torch.nn.functional.normalize(model.encode_image(pixels), dim=-1).numpy()
        text = text_features(model, tokens) if pooling else model.encode_text(tokens)
        want_text = torch.nn.functional.normalize(text, dim=-1).numpy()
    got_image = encoder.encode_images(pixels.numpy())
    got_text = encoder.encode_tokens(tokens.numpy())
    for what, got, want in (("image", got_image, want_image), ("text", got_text, want_text)):
        error = float(np.abs(got - want).max())
        if not error <= runtime.EXACT_TOLERANCE:
            raise ExportError(f"exported {what} tower differs from torch by {error:.2e}")


def _reason(err: BaseException) -> str:
    """The innermost cause, in one line: torch.onnx wraps the useful message in a generic one."""
    while err.__cause__ is not None:
        err = err.__cause__
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return f"{type(err).__name__}: {lines[0][:300] if lines else ''}"


def _write_towers(
    route: Route,
    model: torch.nn.Module,
    folder: Path,
    image_size: int,
    context_length: int,
    pooling: dict | None,
) -> dict[str, str]:
    """Both towers through `route` into `folder`: {"image": file, "text": file}."""
    pixels = torch.zeros(EXAMPLE_BATCH, 3, image_size, image_size)
    image = route(_ImageTower(model).eval(), pixels, "pixels", {0: MAX_BATCH}, folder, "image")
    text_dims = {0: MAX_BATCH}
    width = context_length
    if pooling:
        text_dims[1] = context_length
        width = EXAMPLE_TEXT_LENGTH
    tokens = torch.ones(EXAMPLE_BATCH, width, dtype=torch.int64)
    module = _TextTower(model, trimmed=pooling is not None).eval()
    text = route(module, tokens, "tokens", text_dims, folder, "text")
    return {"image": image, "text": text}


def _routes(engine: str) -> list[Route]:
    first = ROUTES.get(engine, _write_onnx)
    return [first] if first is _write_onnx else [first, _write_onnx]


def _staging_owner(folder: Path) -> int | None:
    """The process id a staging folder's name records, or None for other names."""
    parts = folder.name.rsplit("-", 2)
    return int(parts[1]) if len(parts) == 3 and parts[1].isdigit() else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_abandoned(final: Path) -> list[Path]:
    """Delete the staging folders of `final` whose exporting process is gone (killed mid-way:
    each holds up to a whole model's worth of graphs); returns what was removed."""
    removed = []
    for folder in final.parent.glob(f".{final.name}-*"):
        owner = _staging_owner(folder)
        if folder.is_dir() and owner is not None and not _alive(owner):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def export_model(
    model: torch.nn.Module,
    *,
    image_size: int,
    context_length: int,
    dim: int,
    key: str,
    cache_dir: Path | None = None,
    tokenizer_spec: dict[str, Any] | None = None,
    engine: str | None = None,
) -> Path:
    """Export both towers of an fp32 CPU model for `engine` into the cache entry for `key` and
    return it; `tokenizer_spec` (hf_tokenizer.capture) is saved beside them for torch-free text
    queries.

    The entry is built in a temporary folder beside its final place (named with this process's
    id, so a later export can remove what a killed one left), checked against eager torch, then
    renamed into place, so a reader never sees half an entry.

    Raises:
        ExportError: no route exported the model, or its graphs disagree with torch.
    """
    engine = engine or runtime.DEFAULT_ENGINE
    root = cache_dir or runtime.default_cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    final = runtime.entry_path(key, root)
    remove_abandoned(final)
    pooling = text_pooling(model)
    failures: list[str] = []
    for route in _routes(engine):
        staging = Path(tempfile.mkdtemp(prefix=f".{final.name}-{os.getpid()}-", dir=root))
        started = time.perf_counter()
        try:
            graphs = _write_towers(route, model, staging, image_size, context_length, pooling)
            if tokenizer_spec is not None:
                hf_tokenizer.save(tokenizer_spec, staging)
            runtime.write_meta(
                staging,
                key=key,
                graphs=graphs,
                image_size=image_size,
                context_length=context_length,
                dim=dim,
                pooling=pooling,
            )
            _check(model, staging, pooling, context_length, engine)
        except Exception as err:  # the exporters raise anything from torch/openvino internals
            shutil.rmtree(staging, ignore_errors=True)
            reason = str(err) if isinstance(err, ExportError) else _reason(err)
            failures.append(reason)
            logger.info("%s could not export the model: %s", route.__name__, reason)
            continue
        logger.info("exported with %s in %.1f s", route.__name__, time.perf_counter() - started)
        break
    else:
        raise ExportError("; ".join(dict.fromkeys(failures)))
    if final.exists():  # a stale or corrupt entry the caller chose to rebuild
        shutil.rmtree(final, ignore_errors=True)
    try:
        os.replace(staging, final)
    except OSError:  # another process renamed its copy first; theirs is as good as ours
        shutil.rmtree(staging, ignore_errors=True)
        return final
    # The checksums just written stand for the renamed files too: the first open then does
    # not read the whole model again (~1.4 s for ViT-B-32's 600 MB).
    for name, recorded in json.loads((final / runtime.META_FILE).read_text())["files"].items():
        with contextlib.suppress(OSError):
            remember_sha256(final / name, recorded["sha256"], root / runtime.HASHES_FILE)
    removed, freed = runtime.prune_older_formats(root)
    if removed:
        logger.info(
            "removed %d export cache entr%s of an older layout from %s (%.0f MiB)",
            removed, "y" if removed == 1 else "ies", root, freed / 2**20,
        )  # fmt: skip
    return final
