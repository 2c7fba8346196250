"""open_clip's default CLIP tokenizer (`SimpleTokenizer`, `open_clip.tokenize`) without torch.

Why hand-written: a cold `mmsearch query TEXT` must not pay ~3 s for `import torch`, and
`open_clip.tokenizer` imports torch at module level (so does `open_clip` itself). The obvious
libraries do not give the same ids: transformers' `CLIPTokenizer` skips the double
`html.unescape` ("&amp;" stays three tokens), `CLIPTokenizerFast` also skips ftfy (it only
NFC-normalises), both name and pad the special tokens differently, and transformers is a heavy
import of its own. `tokenizers` could run the BPE step, but the cleaning and the pre-tokenising
regex would stay here in Python to match open_clip, and with the per-word cache the BPE step is
not where the time goes. `instant-clip-tokenizer` has one release (2023) and no ftfy/html
cleaning. So this module re-implements the ~100 lines of open_clip's tokenizer, reads the very
same vocabulary file out of the installed open_clip package (found with `find_spec`, which does
not execute the package), and tests/test_tokenizer.py checks it id for id against open_clip.
"""

from __future__ import annotations

import gzip
import html
import json
import string
from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache
from importlib.util import find_spec
from itertools import islice
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import regex

from ..errors import InvalidQueryError, ModelUnavailableError

DEFAULT_CONTEXT_LENGTH = 77  # every OpenAI/LAION CLIP text tower; open_clip's default
BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
# open_clip keeps merges [1, 49152 - 256 - 2]: a 49152-entry vocabulary less the 256 byte
# symbols and 2 special tokens (line 0 of the file is a version header).
MERGES_END = 49152 - 256 - 2 + 1
SOT, EOT = "<start_of_text>", "<end_of_text>"
# The per-word id cache is bounded so a long-running server cannot grow it without limit;
# 200k distinct words is a few tens of MB.
MAX_CACHE_WORDS = 200_000
# Text that ftfy and html.unescape provably leave alone: printable ASCII, tab and newline,
# without "&" (entities) or ESC/CR/C0 controls (ftfy strips or rewrites those).
_UNTOUCHED_BY_FTFY = regex.compile(r"[\t\n\x20-\x25\x27-\x7e]*")
_PUNCTUATION = str.maketrans("", "", string.punctuation)

Tokens = npt.NDArray[np.int64]


class TextTokenizer(Protocol):
    """Texts -> (n, context_length) token ids, as open_clip's tokenizer of a model returns them
    (ClipTokenizer here, hf_tokenizer.HfTokenizer for multilingual models)."""

    context_length: int

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> Tokens: ...


def bpe_vocab_path() -> Path:
    """Where the installed open_clip package keeps its BPE merges file (without importing it).

    Raises:
        ModelUnavailableError: open_clip is not installed.
    """
    spec = find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailableError(
            "the CLIP tokenizer's vocabulary ships with open_clip, which is not installed; "
            "pip install open_clip_torch (or pip install -e . in the mmsearch checkout)."
        )
    return Path(next(iter(spec.submodule_search_locations))) / BPE_FILE


@lru_cache(maxsize=1)
def _byte_table() -> dict[int, str]:
    """open_clip's `bytes_to_unicode`: printable bytes map to themselves, the rest above 255."""
    kept = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    kept += range(ord("®"), ord("ÿ") + 1)
    chars = list(kept)
    extra = 0
    for byte in range(256):
        if byte not in kept:
            kept.append(byte)
            chars.append(256 + extra)
            extra += 1
    return {byte: chr(char) for byte, char in zip(kept, chars, strict=True)}


@lru_cache(maxsize=4)
def _load_vocab(path: str) -> tuple[dict[str, int], dict[tuple[str, ...], int], int]:
    """(encoder, bpe_ranks, vocabulary list length) exactly as SimpleTokenizer builds them,
    special tokens excluded."""
    try:
        # Only the first ~49k of the file's 262k lines are used; newline="\n" splits exactly
        # where open_clip's str.split("\n") does.
        with gzip.open(path, "rt", encoding="utf-8", newline="\n") as lines:
            merges = [tuple(line.split()) for line in islice(lines, 1, MERGES_END)]
    except OSError as err:
        raise ModelUnavailableError(
            f"cannot read the CLIP vocabulary {path}: {err}; reinstall open_clip_torch."
        ) from err
    symbols = list(_byte_table().values())
    vocab = symbols + [symbol + "</w>" for symbol in symbols] + ["".join(m) for m in merges]
    encoder = dict(zip(vocab, range(len(vocab)), strict=True))
    ranks = dict(zip(merges, range(len(merges)), strict=True))
    return encoder, ranks, len(vocab)


def _basic_clean(text: str) -> str:
    if not _UNTOUCHED_BY_FTFY.fullmatch(text):
        import ftfy  # ~50 ms to import; plain ASCII queries never need it

        text = html.unescape(html.unescape(ftfy.fix_text(text)))
    return text.strip()


def _whitespace(text: str) -> str:
    return " ".join(text.split()).strip()


def _clean_lower(text: str) -> str:
    return _whitespace(_basic_clean(text)).lower()


def _clean_whitespace(text: str) -> str:
    return _whitespace(_basic_clean(text))


def _clean_canonicalize(text: str) -> str:
    text = _basic_clean(text).replace("_", " ").translate(_PUNCTUATION).lower()
    return " ".join(text.split()).strip()


# open_clip's `clean` option of SimpleTokenizer (text_cfg.tokenizer_kwargs.clean).
CLEANERS: dict[str, Callable[[str], str]] = {
    "lower": _clean_lower,
    "whitespace": _clean_whitespace,
    "canonicalize": _clean_canonicalize,
}


def _check_length(context_length: int) -> int:
    if context_length < 1:
        raise InvalidQueryError(
            f"context_length must be at least 1 (it holds the end token), got {context_length}"
        )
    return context_length


class ClipTokenizer:
    """Texts -> (n, context_length) int64 token ids, equal to open_clip's SimpleTokenizer."""

    def __init__(
        self,
        context_length: int = DEFAULT_CONTEXT_LENGTH,
        *,
        clean: str = "lower",
        additional_special_tokens: Sequence[str] = (),
        bpe_path: str | Path | None = None,
    ) -> None:
        if clean not in CLEANERS:
            raise ModelUnavailableError(
                f"unknown tokenizer clean={clean!r}; use one of {', '.join(CLEANERS)}, or let "
                "load_tokenizer() return None and tokenize with open_clip."
            )
        _check_length(context_length)
        encoder, self._ranks, size = _load_vocab(str(bpe_path or bpe_vocab_path()))
        specials = [SOT, EOT, *additional_special_tokens]
        # open_clip appends the special tokens to its vocabulary list: ids follow the list.
        self._encoder = {**encoder, **{token: size + i for i, token in enumerate(specials)}}
        self.vocab_size = len(self._encoder)
        self.sot_token_id, self.eot_token_id = self._encoder[SOT], self._encoder[EOT]
        self.context_length = context_length
        self._clean = CLEANERS[clean]
        # Same pattern as open_clip, special tokens unescaped, so matches are identical.
        self._pattern = regex.compile(
            "|".join(specials) + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
            regex.IGNORECASE,
        )
        # latin-1 decoding turns each utf-8 byte into the char with that ordinal, so one
        # str.translate does open_clip's per-byte `byte_encoder` lookup.
        self._bytes = str.maketrans({chr(b): c for b, c in _byte_table().items()})
        self._specials = {token: [self._encoder[token]] for token in specials}
        self._cache: dict[str, list[int]] = dict(self._specials)

    def _bpe(self, word: str) -> list[int]:
        """Ids of one pre-token (byte-encoded), merging the lowest-ranked pair first."""
        symbols = [*word[:-1], word[-1] + "</w>"]
        ranks = self._ranks
        while len(symbols) > 1:
            pairs = zip(symbols, symbols[1:], strict=False)
            best = min(pairs, key=lambda pair: ranks.get(pair, MERGES_END))
            if best not in ranks:
                break
            first, second = best
            merged: list[str] = []
            i = 0
            while i < len(symbols):
                if i < len(symbols) - 1 and symbols[i] == first and symbols[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            symbols = merged
        return [self._encoder[symbol] for symbol in symbols]

    def encode(self, text: str) -> list[int]:
        """Token ids of one text, without start/end tokens or truncation."""
        ids: list[int] = []
        cache = self._cache
        for piece in self._pattern.findall(self._clean(text)):
            word = piece.encode("utf-8").decode("latin-1").translate(self._bytes)
            found = cache.get(word)
            if found is None:
                found = self._bpe(word)
                if len(cache) >= MAX_CACHE_WORDS:
                    # A new dict, not clear(): a thread mid-lookup in the old one must still
                    # find the special tokens there.
                    self._cache = cache = dict(self._specials)
                cache[word] = found
            ids.extend(found)
        return ids

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> Tokens:
        """Token ids padded with 0 to `context_length`; longer texts are cut, ending in EOT.

        Example:
            >>> load_tokenizer("ViT-B-32")(["a photo of a cat"])[0, :7].tolist()
            [49406, 320, 1125, 539, 320, 2368, 49407]
        """
        if isinstance(texts, str):
            texts = [texts]
        length = _check_length(context_length or self.context_length)
        out = np.zeros((len(texts), length), dtype=np.int64)
        for row, text in enumerate(texts):
            ids = [self.sot_token_id, *self.encode(text), self.eot_token_id]
            if len(ids) > length:
                ids = ids[:length]
                ids[-1] = self.eot_token_id
            out[row, : len(ids)] = ids
        return out


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _builtin_config(name: str) -> Mapping[str, Any] | None:
    """open_clip's get_model_config(name) for a built-in name, read from the package's JSON."""
    if "/" in name or "\\" in name:
        return None
    config = _read_json(bpe_vocab_path().parent / "model_configs" / f"{name}.json")
    required = ("embed_dim", "vision_cfg", "text_cfg")
    if isinstance(config, dict) and all(key in config for key in required):
        return config
    return None


def _hub_config(repo: str) -> Mapping[str, Any] | None:
    """model_cfg of an hf-hub model, from the local HF cache only (a query must not download)."""
    from huggingface_hub import try_to_load_from_cache

    try:
        path = try_to_load_from_cache(repo, "open_clip_config.json")
    except ValueError:  # not a valid repo id
        return None
    config = _read_json(Path(path)) if isinstance(path, str) else None
    return (config.get("model_cfg") or None) if isinstance(config, dict) else None


def _named_config(model: str) -> Mapping[str, Any] | None:
    """The model_cfg open_clip.get_tokenizer(model) reads, {} for its plain default, None where
    open_clip would build another tokenizer (or fail), so the caller must use open_clip."""
    if model.startswith("local-dir:"):
        config = _read_json(Path(model.removeprefix("local-dir:")) / "open_clip_config.json")
        return config.get("model_cfg") if isinstance(config, dict) else None
    if model.startswith("hf-hub:"):
        return _hub_config(model.removeprefix("hf-hub:"))  # None: open_clip uses HF's
    if not model:
        return {}
    config = _builtin_config(model)
    if config is None:
        return {}  # open_clip's default SimpleTokenizer for names it does not know
    if "siglip" in model.lower() and not config["text_cfg"].get("hf_tokenizer_name"):
        return None  # open_clip's SigLipTokenizer (sentencepiece)
    return config


def uses_hf_tokenizer(model: str) -> bool:
    """Whether open_clip tokenizes `model` with transformers (a Hugging Face tokenizer, as
    multilingual models do, or SigLIP's sentencepiece one), as far as its config is at hand."""
    if model.startswith("hf-hub:") and _hub_config(model.removeprefix("hf-hub:")) is None:
        return False  # not cached: unknown until downloaded (open_clip's ImportError then)
    config = _named_config(model)
    if config is None:
        return "siglip" in model.lower()  # open_clip's SigLipTokenizer, through transformers
    return bool((config.get("text_cfg") or {}).get("hf_tokenizer_name"))


def load_tokenizer(
    model: str | Mapping[str, Any] = "ViT-B-32", *, context_length: int | None = None
) -> ClipTokenizer | None:
    """The torch-free tokenizer open_clip.get_tokenizer(model) would build, or None when that
    would be another kind (HF or SigLIP tokenizer, a reduction mask, unknown options), so the
    caller falls back to open_clip.

    Args:
        model: a model name (ViT-B-32), `hf-hub:ORG/REPO` (read from the local HF cache only),
            `local-dir:PATH`, or a model config dict (`model_cfg`, or a whole
            open_clip_config.json holding one).
        context_length: overrides text_cfg.context_length, like get_tokenizer's argument.

    Example:
        >>> tokenizer = load_tokenizer("ViT-B-32")
        >>> tokenizer(["a dog", "a cat"]).shape
        (2, 77)
    """
    config = _named_config(model) if isinstance(model, str) else model.get("model_cfg", model)
    if config is None:
        return None
    text_cfg = config.get("text_cfg") or {}
    if text_cfg.get("hf_tokenizer_name"):
        return None
    options = dict(text_cfg.get("tokenizer_kwargs") or {})
    clean = options.pop("clean", "lower")
    specials = options.pop("additional_special_tokens", None) or ()
    if options.pop("reduction_mask", "") or options or clean not in CLEANERS:
        return None  # random/syntax masking or options this module does not implement
    length = context_length or text_cfg.get("context_length") or DEFAULT_CONTEXT_LENGTH
    return ClipTokenizer(length, clean=clean, additional_special_tokens=tuple(specials))
