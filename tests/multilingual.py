"""Tiny multilingual open_clip models built offline, as `local-dir:` folders the way open_clip
loads them: XLM-R- and NLLB-style models (Hugging Face text towers; Unigram and BPE tokenizers
trained with `tokenizers`) and a SigLIP-i18n-style model (open_clip's own text tower, a
sentencepiece model trained with `sentencepiece`, read through transformers' T5 tokenizer).
Random weights, fixed seeds; plus the texts in many scripts that train and test the tokenizers."""

from __future__ import annotations

import io
import json
import random
from pathlib import Path
from typing import Any

from testdata import TINY_MODEL_CONFIG

# The tokenizers' training text: the same scenes in the scripts the tests query in.
SENTENCES = [
    "a cat sleeping on a sofa", "一只猫在沙发上睡觉", "ソファで眠る猫", "소파에서 자는 고양이",
    "قطة نائمة على الأريكة", "सोफे पर सोती हुई बिल्ली", "Кошка спит на диване",
    "a red silk dress", "红色真丝连衣裙", "赤いシルクのドレス", "빨간 실크 드레스",
    "فستان حريري أحمر", "लाल रेशमी पोशाक", "Красное шёлковое платье",
    "a dog running on the beach", "一只狗在海滩上奔跑", "浜辺を走る犬", "해변을 달리는 개",
    "كلب يركض على الشاطئ", "समुद्र तट पर दौड़ता कुत्ता", "Собака бежит по пляжу",
    "the night view of Tokyo Tower", "东京塔的夜景", "東京タワーの夜景", "도쿄 타워의 야경",
    "a bowl of noodles 🍜", "一碗面条 🍜", "ラーメン一杯 🍜", "국수 한 그릇 🍜",
    "mountains and a lake at sunrise", "日出时的山和湖", "日の出の山と湖", "해돋이의 산과 호수",
    "بحيرة وجبال عند الشروق", "सूर्योदय के समय पहाड़ और झील", "Горы и озеро на рассвете",
    "Café crème & croissant", "Straße in München", "señor niño año", "Ελληνικά γράμματα",
    "עברית כתובה מימין", "ภาษาไทยไม่มีช่องว่าง", "Tiếng Việt có dấu", "12345 67890 3.14",
]  # fmt: skip
# Pieces the random strings of the equality test are drawn from: words of every script above,
# emoji (with skin tones and ZWJ sequences), punctuation, HTML entities, odd whitespace.
PIECES = [
    *" ".join(SENTENCES).split(),
    "👍🏽", "👨‍👩‍👧", "🇨🇳", "😀", "&amp;", "&lt;b&gt;", "'s", "e\u0301", "Ⅻ", "①", "ｶﾀｶﾅ",
    "ＡＢＣ", "\u00a0", "\t", "  ", "\n", ",", "。", "、", "!?", "...", "-", "_", "(", ")", "#",
    "漢字", "かな", "カナ", "한글", "中", "文", "😀😀😀", "x" * 40, "超長" * 30,
]  # fmt: skip


def random_texts(count: int, seed: int = 0) -> list[str]:
    """`count` strings mixing scripts, emoji and punctuation; some longer than any context."""
    rng = random.Random(seed)
    texts = []
    for number in range(count):
        size = rng.choice([1, 2, 3, 5, 8, 13]) if number % 20 else rng.randint(60, 120)
        glue = rng.choice(["", " ", " ", "  "])
        texts.append(glue.join(rng.choice(PIECES) for _ in range(size)))
    return texts + ["", " ", "\u3000", "🐱"]


def _tiny_vision() -> dict[str, Any]:
    return dict(TINY_MODEL_CONFIG["model_cfg"]["vision_cfg"])


def write_xlmr_tokenizer(
    folder: Path, vocab_size: int = 600, corpus: list[str] | None = None
) -> None:
    """An XLM-R-style tokenizer (Unigram over Metaspace pieces, <s> ... </s>) trained with
    `tokenizers` on `corpus` (default: SENTENCES and random mixtures of them) and saved as
    transformers saves XLMRobertaTokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.Unigram())
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    specials = ["<s>", "<pad>", "</s>", "<unk>"]
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size, special_tokens=specials, unk_token="<unk>"
    )
    tokenizer.train_from_iterator(corpus or SENTENCES * 4 + random_texts(300, seed=99), trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>",
        pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", 0), ("</s>", 2)],
    )
    tokenizer.save(str(folder / "tokenizer.json"))
    config = {
        "tokenizer_class": "XLMRobertaTokenizer",
        "bos_token": "<s>", "eos_token": "</s>", "sep_token": "</s>", "cls_token": "<s>",
        "unk_token": "<unk>", "pad_token": "<pad>", "mask_token": "<mask>",
        "model_max_length": 512,
    }  # fmt: skip
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))


def write_tiny_xlmr_model(
    folder: Path,
    seed: int = 0,
    corpus: list[str] | None = None,
    vocab_size: int = 600,
    context_length: int | None = None,
) -> Path:
    """A tiny open_clip model with an XLM-R text tower (random weights) as a local-dir folder:
    open_clip_config.json naming this folder as hf_model_name and hf_tokenizer_name, the
    transformers config.json beside it, the tokenizer files and open_clip_model.safetensors."""
    folder.mkdir(parents=True, exist_ok=True)
    write_xlmr_tokenizer(folder, vocab_size, corpus)
    vocab = json.loads((folder / "tokenizer.json").read_text())["model"]["vocab"]
    hf_config = {
        "model_type": "xlm-roberta",
        "architectures": ["XLMRobertaModel"],
        "vocab_size": len(vocab) + 1,  # + <mask>, which transformers appends
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "max_position_embeddings": 80,  # the 77 positions after XLM-R's padding offset (2)
        "type_vocab_size": 1,
        "pad_token_id": 1,
        "bos_token_id": 0,
        "eos_token_id": 2,
    }
    (folder / "config.json").write_text(json.dumps(hf_config, indent=2))
    text_cfg = {
        "hf_model_name": str(folder),
        "hf_tokenizer_name": str(folder),
        "hf_pooler_type": "mean_pooler",
        "hf_proj_type": "mlp",
    }
    if context_length:  # tokens per text (open_clip's default: 77)
        text_cfg["context_length"] = context_length
    config = {
        "model_cfg": {"embed_dim": 32, "vision_cfg": _tiny_vision(), "text_cfg": text_cfg},
        "preprocess_cfg": TINY_MODEL_CONFIG["preprocess_cfg"],
    }
    return _write_weights(folder, config, seed)


def write_nllb_tokenizer(folder: Path, vocab_size: int = 600) -> None:
    """An NLLB-style tokenizer (BPE over Metaspace pieces) trained with `tokenizers`; the
    transformers NllbTokenizer adds the 202 language codes and puts `eng_Latn` first."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>", fuse_unk=True))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    specials = ["<s>", "<pad>", "</s>", "<unk>"]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials)
    tokenizer.train_from_iterator(SENTENCES * 4 + random_texts(300, seed=97), trainer)
    tokenizer.save(str(folder / "tokenizer.json"))
    config = {
        "tokenizer_class": "NllbTokenizer",
        "bos_token": "<s>", "eos_token": "</s>", "sep_token": "</s>", "cls_token": "<s>",
        "unk_token": "<unk>", "pad_token": "<pad>", "mask_token": "<mask>",
        "src_lang": "eng_Latn", "model_max_length": 1024,
    }  # fmt: skip
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))


def write_tiny_nllb_model(folder: Path, seed: int = 0) -> Path:
    """A tiny open_clip model laid out like nllb-clip-base: the encoder of an M2M100 (NLLB)
    model as text tower, pooled at its first token (the language code), linear projection."""
    from transformers import AutoTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    write_nllb_tokenizer(folder)
    vocab_size = len(AutoTokenizer.from_pretrained(str(folder)))
    hf_config = {
        "model_type": "m2m_100",
        "vocab_size": vocab_size,
        "d_model": 32,
        "encoder_layers": 2,
        "decoder_layers": 1,
        "encoder_attention_heads": 2,
        "decoder_attention_heads": 2,
        "encoder_ffn_dim": 64,
        "decoder_ffn_dim": 64,
        "max_position_embeddings": 80,
        "pad_token_id": 1,
        "bos_token_id": 0,
        "eos_token_id": 2,
        "decoder_start_token_id": 2,
        "scale_embedding": True,
    }
    (folder / "config.json").write_text(json.dumps(hf_config, indent=2))
    text_cfg = {
        "hf_model_name": str(folder),
        "hf_tokenizer_name": str(folder),
        "hf_proj_type": "linear",
        "hf_pooler_type": "cls_pooler",
    }
    config = {
        "model_cfg": {"embed_dim": 32, "vision_cfg": _tiny_vision(), "text_cfg": text_cfg},
        "preprocess_cfg": TINY_MODEL_CONFIG["preprocess_cfg"],
    }
    return _write_weights(folder, config, seed)


def write_sentencepiece_tokenizer(folder: Path, vocab_size: int = 500) -> None:
    """A T5-style sentencepiece model (pad 0, eos 1, unk 2, as SigLIP's mc4 vocabulary) trained
    with `sentencepiece`, saved as spiece.model with the config transformers' T5 tokenizer
    reads; no tokenizer.json, so transformers converts it (the path of a sentencepiece-only
    tokenizer folder)."""
    import sentencepiece

    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(SENTENCES * 4 + random_texts(300, seed=98)),
        model_writer=model,
        vocab_size=vocab_size,
        model_type="unigram",
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        character_coverage=1.0,
        minloglevel=2,
    )
    (folder / "spiece.model").write_bytes(model.getvalue())
    config = {
        "tokenizer_class": "T5Tokenizer",
        "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>",
        "extra_ids": 0, "legacy": False, "model_max_length": 64,
    }  # fmt: skip
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))


def write_tiny_siglip_i18n_model(folder: Path, seed: int = 0) -> Path:
    """A tiny model laid out like ViT-B-16-SigLIP-i18n-256: open_clip's non-causal text tower
    pooled at the last token, a sentencepiece vocabulary read as an HF tokenizer (canonicalize
    cleaning, context 64), with the tiny ViT for images."""
    folder.mkdir(parents=True, exist_ok=True)
    write_sentencepiece_tokenizer(folder)
    text_cfg = {
        "context_length": 64,
        "vocab_size": 500,
        "hf_tokenizer_name": str(folder),
        "tokenizer_kwargs": {"clean": "canonicalize"},
        "width": 32,
        "heads": 2,
        "layers": 2,
        "no_causal_mask": True,
        "proj_bias": True,
        "pool_type": "last",
        "norm_kwargs": {"eps": 1e-6},
    }
    model_cfg = {"embed_dim": 32, "init_logit_bias": -10, "custom_text": True,
                 "vision_cfg": _tiny_vision(), "text_cfg": text_cfg}  # fmt: skip
    config = {"model_cfg": model_cfg, "preprocess_cfg": TINY_MODEL_CONFIG["preprocess_cfg"]}
    return _write_weights(folder, config, seed)


def _write_weights(folder: Path, config: dict[str, Any], seed: int) -> Path:
    import open_clip
    import torch
    from safetensors.torch import save_file

    (folder / "open_clip_config.json").write_text(json.dumps(config, indent=2))
    torch.manual_seed(seed)
    model = open_clip.create_model(f"local-dir:{folder}", load_weights=False, pretrained_text=False)
    state = {name: tensor.contiguous() for name, tensor in model.state_dict().items()}
    save_file(state, str(folder / "open_clip_model.safetensors"))
    return folder


TEXTS = ["一只猫在沙发上睡觉", "a cat sleeping on a sofa", "红色真丝连衣裙", "a red silk dress",
         "東京タワーの夜景", "Кошка спит на диване", "소파에서 자는 고양이"]  # fmt: skip
QUERIES = ["猫在沙发上", "a red dress", "夜景", "кошка", "🐱 고양이"]
WRITERS = {
    "xlmr": write_tiny_xlmr_model,
    "nllb": write_tiny_nllb_model,
    "siglip": write_tiny_siglip_i18n_model,
}


def exported_tokenizer(model: str, folder: Path) -> Any:
    """open_clip's tokenizer of `model` captured, saved into `folder` and loaded back."""
    import open_clip

    from retrieval.embedders import hf_tokenizer

    spec = hf_tokenizer.capture(open_clip.get_tokenizer(model))
    assert spec is not None
    hf_tokenizer.save(spec, folder)
    loaded = hf_tokenizer.load(folder)
    assert loaded is not None
    return loaded
