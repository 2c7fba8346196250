"""cli/environment.py: the one reader of mmsearch's MMSEARCH_* settings, and how they reach an
EmbedConfig (the library below reads none of them; tests/unit/test_layout.py keeps it so)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from retrieval.cli.environment import Settings, read_settings
from retrieval.errors import InvalidOptionError


def test_an_empty_environment_leaves_the_library_defaults() -> None:
    settings = read_settings({})
    assert settings == Settings()
    config = settings.embed_config(device="cpu")
    assert (config.backend, config.threads, config.export_cache, config.hash_cache) == (
        "auto",
        None,
        None,
        None,
    )


def test_the_variables_fill_what_the_caller_left_open(tmp_path: Path) -> None:
    settings = read_settings(
        {
            "MMSEARCH_BACKEND": "torch",
            "MMSEARCH_THREADS": " 3 ",
            "MMSEARCH_EXPORT_CACHE": str(tmp_path / "exports"),
            "MMSEARCH_HASH_CACHE": "~/hashes.json",
        }
    )
    config = settings.embed_config(device="cpu", precision="fp32")
    assert config.backend == "torch" and config.threads == 3 and config.precision == "fp32"
    assert config.export_cache == tmp_path / "exports"
    assert config.hash_cache == Path("~/hashes.json").expanduser()
    # What the caller names wins, as a command-line flag wins over its variable.
    explicit = settings.embed_config(backend="openvino", threads=1, hash_cache=tmp_path / "h")
    assert (explicit.backend, explicit.threads, explicit.hash_cache) == (
        "openvino",
        1,
        tmp_path / "h",
    )


def is_thread_count(raw: str) -> bool:
    raw = raw.strip()
    return raw.isascii() and raw.isdigit() and int(raw) >= 1


@given(st.text(max_size=8).filter(lambda raw: not is_thread_count(raw)))
@example("abc")
@example("0")
@example("-2")
@example("²")  # a digit to str.isdigit, not to int()
def test_a_bad_thread_count_is_an_option_error_naming_the_variable(raw: str) -> None:
    if not raw.strip():
        assert read_settings({"MMSEARCH_THREADS": raw}).threads is None  # unset: every core
        return
    with pytest.raises(InvalidOptionError, match="MMSEARCH_THREADS=.* is not a thread count"):
        read_settings({"MMSEARCH_THREADS": raw})


@given(st.integers(min_value=1, max_value=10**6))
def test_a_thread_count_is_read(count: int) -> None:
    assert read_settings({"MMSEARCH_THREADS": str(count)}).threads == count
