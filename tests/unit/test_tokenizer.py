"""retrieval.embedders.tokenizer gives open_clip's token ids exactly, without importing torch."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import open_clip
import pytest

from retrieval.embedders.tokenizer import ClipTokenizer, load_tokenizer

REPO = Path(__file__).resolve().parents[2]

# No word holds whitespace, so one string split on it lists them compactly.
WORDS = """
    a photo of the Goldfish DOG cAt running antidisestablishment it's we're they'll I'd
    you've I'm don't O'Neil rock'n'roll café naïve Straße ÅNGSTRÖM façade cafe\u0301
    n\u0303o e\u0308\u0301 İstanbul ﬁsh ＡＢＣ１２３ Ǆemal Σίσυφος Москва שלום مرحبا नमस्ते สวัสดี
    汉字 日本語のテキスト 한국어 中文，标点。 😀 👍🏽 👨‍👩‍👧‍👦 🏳️‍🌈 🇫🇷🇯🇵 1️⃣ ❤️ 🧑🏿‍💻
    2024 3.14 1,000,000 ١٢٣ x² Ⅻ ½
    !!! ... ?!? -- «» “curly” ‘single’ `tick` #hashtag @user a_b_c C++ e-mail
    http://example.com/a?b=c&d=e $5.00 100% *** <start_of_text> <END_OF_TEXT> <b> </w>
""".split()  # noqa: SIM905
ENTITIES = """
    &amp; &#39; &lt;b&gt; &quot; &nbsp; &amp;amp; &amp;lt; &#x27; &copy; &bogus; & &#128512;
    &eacute; AT&T &lt;/i&gt;
""".split()  # noqa: SIM905
# fmt: off
SPACES = [" ", "  ", "\t", "\n", "\r\n", "\r", " \t\n ", "\u00a0", "\u2003", "\u3000",
          "\x0b", "\x0c", "\x1c", "\x1f", "\u2028", "\x85", "\u200b", "\ufeff", "\xad"]
CONTROLS = ["\x00", "\x1b[31m", "\x1b[0m", "\x7f", "\x08", "\ufffd", "\x9d", "\u202e"]
# fmt: on
EMPTY_AFTER_CLEANING = ["", " ", "   ", "\n\t\r\n", "&nbsp;", "&nbsp;&nbsp;", "\u3000", "&#32;"]


def _mojibake(text: str) -> str:
    """UTF-8 read as Windows-1252, the mix-up ftfy exists to undo."""
    return text.encode("utf-8").decode("cp1252", errors="replace")


def _random_text(rng: random.Random) -> str:
    kind = rng.random()
    pieces = []
    for _ in range(rng.choice([1, 2, 3, 5, 8, 13])):
        roll = rng.random()
        if roll < 0.55:
            word = rng.choice(WORDS)
            pieces.append(word.upper() if rng.random() < 0.1 else word)
        elif roll < 0.7:
            pieces.append(rng.choice(ENTITIES))
        elif roll < 0.8:
            pieces.append(rng.choice(CONTROLS))
        else:
            pieces.append("".join(rng.choice(string_pool) for _ in range(rng.randint(1, 6))))
        pieces.append(rng.choice(SPACES) if rng.random() < 0.4 else " ")
    text = "".join(pieces)
    if kind < 0.1:
        text = _mojibake(text)
    elif kind < 0.15:
        text = " ".join([text] * rng.randint(20, 60))  # far past 77 tokens
    return text


ASCII_POOL = [chr(c) for c in range(128)] + list("  aaeeiiss\t\n&;")
string_pool = "abcXYZ09 '&;#!?.,-_~^|\\/()[]{}<>\"ééü中😀\u0301\u200d\ufe0f"


def varied_texts(count: int = 3000, seed: int = 7) -> list[str]:
    """Deterministic mix of the hard cases, plus each fixed case on its own."""
    rng = random.Random(seed)
    fixed = WORDS + ENTITIES + SPACES + CONTROLS + EMPTY_AFTER_CLEANING
    fixed += [_mojibake(w) for w in WORDS if not w.isascii()]
    fixed += ["cafÃ©", "doesnâ€™t", "â€œquotedâ€\x9d", "Ã¼ber"]
    fixed += ["The Mona Lisa doesnÃƒÂ¢Ã¢â€šÂ¬Ã¢â€žÂ¢t"]  # mojibake twice over
    fixed += ["\ud800", "a\udc00b"]  # lone surrogates: both end up as the same bytes
    fixed += ["word " * 200, "😀" * 100, "汉" * 300, "a" * 5000, "!" * 500, "x" * 75]
    # Plain ASCII skips ftfy (retrieval.embedders.tokenizer's fast path): hammer that path too.
    ascii_texts = [
        "".join(rng.choice(ASCII_POOL) for _ in range(rng.randint(0, 40)))
        for _ in range(count // 5)
    ]
    return fixed + ascii_texts + [_random_text(rng) for _ in range(count)]


@pytest.fixture(scope="module")
def ours() -> ClipTokenizer:
    tokenizer = load_tokenizer("ViT-B-32")
    assert tokenizer is not None
    return tokenizer


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return varied_texts()


def test_ids_equal_open_clip_tokenize_on_varied_texts(ours: ClipTokenizer, texts: list[str]):
    expected = open_clip.tokenize(texts).numpy()
    got = ours(texts)
    assert got.dtype == np.int64 and got.shape == (len(texts), 77)
    mismatched = [texts[i] for i in np.flatnonzero((got != expected).any(axis=1))]
    assert not mismatched, f"{len(mismatched)} differ, e.g. {mismatched[:5]!r}"


def test_ids_equal_get_tokenizer_vit_b_32(ours: ClipTokenizer, texts: list[str]):
    reference = open_clip.get_tokenizer("ViT-B-32")
    sample = texts[::7]
    np.testing.assert_array_equal(ours(sample), reference(sample).numpy())
    assert (ours.sot_token_id, ours.eot_token_id, ours.vocab_size) == (49406, 49407, 49408)


def test_fixture_texts_cover_truncation_and_empty(ours: ClipTokenizer, texts: list[str]):
    ids = ours(texts)
    lengths = (ids != 0).sum(axis=1)
    assert (lengths == 77).sum() > 100 and (ids[lengths == 77, -1] == 49407).all()
    assert (lengths == 2).sum() >= len(EMPTY_AFTER_CLEANING)


@pytest.mark.parametrize("context_length", [1, 2, 5, 16, 32, 76, 100])
def test_other_context_lengths_truncate_like_open_clip(
    ours: ClipTokenizer, texts: list[str], context_length: int
):
    sample = texts[::29]
    expected = open_clip.tokenize(sample, context_length=context_length).numpy()
    np.testing.assert_array_equal(ours(sample, context_length=context_length), expected)


@pytest.mark.parametrize("clean", ["whitespace", "canonicalize"])
def test_clean_options_match_simple_tokenizer(texts: list[str], clean: str):
    sample = texts[::11]
    reference = open_clip.SimpleTokenizer(clean=clean)
    np.testing.assert_array_equal(ClipTokenizer(clean=clean)(sample), reference(sample).numpy())


def test_additional_special_tokens_match_simple_tokenizer(texts: list[str]):
    extra = ["<mask>", "<pad_token>"]
    sample = texts[::13] + ["a <mask> of a <PAD_TOKEN> cat", "<mask><mask>"]
    reference = open_clip.SimpleTokenizer(additional_special_tokens=extra)
    ours = ClipTokenizer(additional_special_tokens=extra)
    np.testing.assert_array_equal(ours(sample), reference(sample).numpy())
    assert ours.vocab_size == reference.vocab_size


def _expected_kind(name: str) -> str:
    text_cfg = open_clip.get_model_config(name)["text_cfg"]
    if text_cfg.get("hf_tokenizer_name") or "siglip" in name.lower():
        return "other"
    if (text_cfg.get("tokenizer_kwargs") or {}).get("reduction_mask"):
        return "other"
    return "clip"


def test_builtin_configs_pick_the_same_tokenizer_kind_and_length():
    names = open_clip.list_models()
    by_setup: dict[tuple[int, str], str] = {}
    for name in names:
        tokenizer = load_tokenizer(name)
        assert (tokenizer is None) == (_expected_kind(name) == "other"), name
        if tokenizer is not None:
            text_cfg = open_clip.get_model_config(name)["text_cfg"]
            assert tokenizer.context_length == text_cfg.get("context_length", 77), name
            clean = (text_cfg.get("tokenizer_kwargs") or {}).get("clean", "lower")
            by_setup.setdefault((tokenizer.context_length, clean), name)
    assert len(by_setup) >= 3  # 77, 76 (CoCa) and 32 (PE-Core) at least
    sample = varied_texts(200, seed=3)
    for name in by_setup.values():
        reference = open_clip.get_tokenizer(name)
        np.testing.assert_array_equal(load_tokenizer(name)(sample), reference(sample).numpy())


def test_unknown_names_get_the_default_tokenizer_like_open_clip():
    for name in ["", "no-such-model", "ViT-B/32", "my-siglip-thing"]:
        tokenizer = load_tokenizer(name)
        assert tokenizer is not None and tokenizer.context_length == 77
        assert isinstance(open_clip.get_tokenizer(name), open_clip.SimpleTokenizer)


def test_local_dir_model_matches_open_clip(tiny_model: str):
    sample = varied_texts(300, seed=5)
    tokenizer = load_tokenizer(tiny_model)
    np.testing.assert_array_equal(tokenizer(sample), open_clip.get_tokenizer(tiny_model)(sample))


def _write_config(folder: Path, text_cfg: dict) -> str:
    folder.mkdir(parents=True)
    config = {"model_cfg": {"embed_dim": 8, "vision_cfg": {}, "text_cfg": text_cfg}}
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    return f"local-dir:{folder}"


def test_configs_naming_other_tokenizers_fall_back(tmp_path: Path):
    hf = _write_config(tmp_path / "hf", {"hf_tokenizer_name": "bert-base-uncased"})
    masked = _write_config(tmp_path / "m", {"tokenizer_kwargs": {"reduction_mask": "random"}})
    unknown = _write_config(tmp_path / "u", {"tokenizer_kwargs": {"strip_sep_token": True}})
    for model in [hf, masked, unknown, f"local-dir:{tmp_path / 'missing'}", "ViT-B-16-SigLIP"]:
        assert load_tokenizer(model) is None, model
    assert load_tokenizer({"text_cfg": {"hf_tokenizer_name": "x"}}) is None


def test_config_dicts_and_context_override(tmp_path: Path):
    short = _write_config(tmp_path / "short", {"context_length": 16})
    assert load_tokenizer(short).context_length == 16
    assert load_tokenizer(short, context_length=40)("a cat").shape == (1, 40)
    whole = {"model_cfg": {"text_cfg": {"context_length": 64}}}
    assert load_tokenizer(whole).context_length == 64
    assert load_tokenizer({"text_cfg": {}}).context_length == 77


def test_hf_hub_reads_only_the_local_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert load_tokenizer("hf-hub:someone/not-cached") is None
    repo = tmp_path / "hub" / "models--someone--clip"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    _write_config(repo / "snapshots" / "abc123", {"context_length": 32})
    assert load_tokenizer("hf-hub:someone/clip").context_length == 32


def test_cold_import_and_tokenize_leave_torch_and_open_clip_unimported(tiny_model: str):
    script = (
        "import sys\n"
        "from retrieval.embedders.tokenizer import load_tokenizer\n"
        f"for model in ['ViT-B-32', {tiny_model!r}]:\n"
        "    texts = ['a photo of a goldfish', 'caf\\u00e9 &amp; \\U0001f600']\n"
        "    ids = load_tokenizer(model)(texts)\n"
        "    assert ids.shape == (2, 77), ids.shape\n"
        "heavy = sorted(m for m in ('torch', 'open_clip', 'faiss', 'transformers') "
        "if m in sys.modules)\n"
        "print(heavy)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_bad_settings_raise_errors_that_say_what_to_use():
    from retrieval.errors import InvalidQueryError, ModelUnavailableError

    with pytest.raises(ModelUnavailableError, match="lower, whitespace, canonicalize"):
        ClipTokenizer(clean="nope")
    with pytest.raises(InvalidQueryError, match="at least 1"):
        ClipTokenizer(context_length=-3)
    assert load_tokenizer({"text_cfg": {"tokenizer_kwargs": {"clean": "nope"}}}) is None


def test_word_cache_stays_bounded_and_correct_when_full(
    texts: list[str], monkeypatch: pytest.MonkeyPatch
):
    import retrieval.embedders.tokenizer as module

    monkeypatch.setattr(module, "MAX_CACHE_WORDS", 50)
    tokenizer = ClipTokenizer()
    sample = texts[::3] + ["<start_of_text> after a full cache"]
    np.testing.assert_array_equal(tokenizer(sample), open_clip.tokenize(sample).numpy())
    assert len(tokenizer._cache) <= 50
