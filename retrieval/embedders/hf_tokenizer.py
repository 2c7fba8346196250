"""The tokenizers of multilingual open_clip models (XLM-R, NLLB, SigLIP-i18n's sentencepiece
vocabulary) without torch or transformers, for cold text queries.

Why captured, not rebuilt from the model's files: open_clip tokenizes these models with
transformers' `AutoTokenizer`, and transformers builds its own pipeline from the files (v5's
XLMRobertaTokenizer ignores tokenizer.json's normalizer and splits on whitespace first; a
sentencepiece-only folder is converted to a `tokenizers` pipeline; NLLB rewrites the template for
its source language). What runs in the end is always one `tokenizers.Tokenizer`. So where the
model is loaded with torch (index, a warm query), `capture()` serialises that very pipeline with
open_clip's cleaning, context length and padding; `HfTokenizer` runs it with the `tokenizers`
library alone (~20 ms to import, no torch), and tests/integration/test_multilingual.py checks it
id for id against open_clip on thousands of strings in many scripts.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Sequence
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ModelUnavailableError
from ..files import write_atomic
from .tokenizer import CLEANERS, Tokens, _check_length, uses_hf_tokenizer

logger = logging.getLogger(__name__)

SPEC_FILE = "text_tokenizer.json"
# Bump when the spec's fields change; other versions read as absent (the full model loads).
FORMAT = 1
MULTILINGUAL_EXTRA = "pip install 'mmsearch[multilingual]'"


# What open_clip needs for these models: transformers builds the tokenizer and the HF text
# towers, tokenizers runs it, sentencepiece converts sentencepiece-only vocabularies.
LIBRARIES = ("transformers", "tokenizers", "sentencepiece")


def _installed(module: str) -> bool:
    try:
        return find_spec(module) is not None
    except ValueError:  # in sys.modules without a spec (set to None: import blocked)
        return False


def require_libraries(model: str) -> None:
    """Fail before loading a model whose tokenizer or text tower needs the multilingual extra
    when a library of it is missing (open_clip would fail midway with a bare ImportError).

    Raises:
        ModelUnavailableError: naming the missing libraries and the extra that brings them.
    """
    if not uses_hf_tokenizer(model):
        return
    missing = [module for module in LIBRARIES if not _installed(module)]
    if missing:
        raise ModelUnavailableError(
            f"model {model} uses a Hugging Face tokenizer or text tower (multilingual models: "
            f"XLM-R, NLLB, SigLIP-i18n), which needs {', '.join(missing)}: "
            f"{MULTILINGUAL_EXTRA}"
        )


def capture(tokenizer: Any) -> dict[str, Any] | None:
    """The spec of an open_clip HFTokenizer or SigLipTokenizer: its transformers pipeline as
    `tokenizers` JSON plus what open_clip does around it; None for anything else (the CLIP BPE
    tokenizer, open_clip's `clips` mode)."""
    inner = getattr(tokenizer, "tokenizer", None)
    backend = getattr(inner, "backend_tokenizer", None)
    if backend is None or getattr(tokenizer, "tokenizer_mode", "") not in ("", None):
        return None
    clean_fn = getattr(tokenizer, "clean_fn", None)
    clean = clean_fn.__name__.removeprefix("_clean_") if clean_fn else "canonicalize"
    if clean not in CLEANERS:
        return None
    strip_sep = bool(getattr(tokenizer, "strip_sep_token", False))
    return {
        "format": FORMAT,
        "backend": backend.to_str(),
        "context_length": int(tokenizer.context_length),
        "pad_id": int(inner.pad_token_id if inner.pad_token_id is not None else 0),
        "pad_token": str(inner.pad_token or ""),
        "padding_side": str(getattr(inner, "padding_side", "right")),
        "truncation_side": str(getattr(inner, "truncation_side", "right")),
        "clean": clean,
        "strip_sep_id": int(inner.sep_token_id) if strip_sep else None,
    }


def save(spec: dict[str, Any], folder: Path) -> Path:
    """Write a captured spec into `folder` (an export cache entry); returns the file."""
    path = folder / SPEC_FILE
    write_atomic(path, json.dumps(spec, sort_keys=True).encode())
    return path


def _exact_backend(tokenizer_class: Any, serialised: str) -> Any:
    """`Tokenizer.from_str`, with a Unigram model's scores set to the exact doubles it was
    saved from: tokenizers' JSON reader rounds some of them by one ulp, and where two
    segmentations of a repeated piece tie to the last bit that flips which one wins."""
    backend = tokenizer_class.from_str(serialised)
    model = json.loads(serialised).get("model") or {}
    if model.get("type") == "Unigram":
        from tokenizers import models

        vocab = [(str(piece), float(score)) for piece, score in model["vocab"]]
        backend.model = models.Unigram(
            vocab, unk_id=model.get("unk_id"), byte_fallback=bool(model.get("byte_fallback"))
        )
    return backend


class HfTokenizer:
    """Texts -> (n, context_length) int64 ids, equal to open_clip's HFTokenizer/SigLipTokenizer
    for the model the spec was captured from."""

    def __init__(self, spec: dict[str, Any]) -> None:
        try:
            from tokenizers import Tokenizer
        except ImportError as err:
            raise ModelUnavailableError(
                f"this model's tokenizer needs the tokenizers library: {MULTILINGUAL_EXTRA}"
            ) from err
        self.context_length = _check_length(int(spec["context_length"]))
        self._clean = CLEANERS[spec["clean"]]
        self._pad_id = int(spec["pad_id"])
        self._pad_token = spec["pad_token"]
        self._padding_side = spec["padding_side"]
        self._truncation_side = spec["truncation_side"]
        self._strip_sep_id = spec["strip_sep_id"]
        self._backend = _exact_backend(Tokenizer, spec["backend"])
        self._length = 0
        # The backend's truncation and padding are settings of the object: one call at a time,
        # so a call with another context_length cannot change them under a running one (serve).
        self._lock = threading.Lock()
        self._configure(self.context_length)

    def _configure(self, length: int) -> None:
        """transformers' `max_length=length, padding="max_length", truncation=True`."""
        if length == self._length:
            return
        self._backend.enable_truncation(length, direction=self._truncation_side)
        self._backend.enable_padding(
            direction=self._padding_side,
            pad_id=self._pad_id,
            pad_token=self._pad_token,
            length=length,
        )
        self._length = length

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> Tokens:
        """Token ids padded to `context_length` (default: the model's), cut where open_clip
        cuts them."""
        if isinstance(texts, str):
            texts = [texts]
        length = _check_length(context_length or self.context_length)
        if not texts:
            return np.zeros((0, length), dtype=np.int64)
        cleaned = [self._clean(text) for text in texts]
        with self._lock:
            self._configure(length)
            encoded = self._backend.encode_batch(cleaned)
        ids = np.array([row.ids for row in encoded], dtype=np.int64)
        if self._strip_sep_id is not None:
            ids[ids == self._strip_sep_id] = 0
        return ids


def load(folder: Path) -> HfTokenizer | None:
    """The tokenizer saved in `folder`, or None when there is none of this FORMAT."""
    try:
        spec = json.loads((folder / SPEC_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(spec, dict) or spec.get("format") != FORMAT:
        return None
    return HfTokenizer(spec)
