"""The open_clip embedder against open_clip's own outputs."""

from __future__ import annotations

import numpy as np
import open_clip
import torch
from testdata import cpu_config

from retrieval.compose import load_embedder
from retrieval.embedders.open_clip import encode_text_trimmed
from retrieval.types import ModelSpec

TEXTS = [
    "a cat on a sofa",
    "x",
    "a very long product description " * 20,  # past the 77-token context: truncated, EOT last
    "ünïcödé and emoji 🐈",
]


def test_trimmed_text_encoding_equals_full_context(tiny_model: str) -> None:
    model, _, _ = open_clip.create_model_and_transforms(tiny_model)
    model.eval()
    tokens = open_clip.get_tokenizer(tiny_model)(TEXTS)
    with torch.no_grad():
        full = model.encode_text(tokens)
        for rows in ([0], [1], [0, 1], [0, 1, 2, 3]):
            trimmed = encode_text_trimmed(model, tokens[rows])
            assert trimmed is not None
            np.testing.assert_allclose(trimmed.numpy(), full[rows].numpy(), atol=1e-5)


def test_encode_texts_matches_open_clip_normalised(tiny_model: str) -> None:
    embedder = load_embedder(ModelSpec(tiny_model, None), cpu_config())
    model, _, _ = open_clip.create_model_and_transforms(tiny_model)
    model.eval()
    with torch.no_grad():
        want = model.encode_text(open_clip.get_tokenizer(tiny_model)(TEXTS), normalize=True)
    got = embedder.encode_texts(TEXTS, batch_size=3)
    np.testing.assert_allclose(got, want.numpy(), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
