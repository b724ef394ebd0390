"""Tiny random sentence-transformers model directories (BERT, XLM-RoBERTa), built the same way by the tests and by
``tests/fixtures/make_embed_reference.py``, which ran them through Hugging Face transformers (torch) once to
record the reference vectors in ``tests/fixtures/embed_reference.json``. Seeded, so both sides get the same
weights; small, so no weights are committed."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
from tokenizers.models import WordPiece

WORDS = (
    "the cat dog sat on mat a rug stock market fell today price rose bank river money water tree green "
    "happy sad good bad film movie great awful"
).split()
HIDDEN, LAYERS, HEADS, FFN = 32, 2, 4, 64

TINY = {  # name -> (model_type, pooling, extra config)
    "tiny-bert": ("bert", "cls", {"type_vocab_size": 2, "max_position_embeddings": 64, "pad_token_id": 0}),
    "tiny-xlmr": ("xlm-roberta", "mean", {"type_vocab_size": 1, "max_position_embeddings": 66, "pad_token_id": 1}),
}


def _tokenizer(pad_first: bool) -> Tokenizer:
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"] if pad_first else ["[UNK]", "[PAD]", "[CLS]", "[SEP]"]
    vocab = {w: i for i, w in enumerate(specials + list(WORDS))}
    tok = Tokenizer(WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])]
    )
    return tok


def _save_safetensors(path: Path, tensors: dict[str, np.ndarray]) -> None:
    header, offset, blobs = {}, 0, []
    for name, arr in tensors.items():
        data = np.ascontiguousarray(arr, dtype=np.float32).tobytes()
        header[name] = {"dtype": "F32", "shape": list(arr.shape), "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    head = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(head)) + head + b"".join(blobs))


def tiny_model(dest: Path, name: str = "tiny-bert", *, dimension: int | None = None) -> Path:
    """Write a seeded random model directory ``dest/name``; ``dimension`` overrides what the pooling config claims."""
    model_type, pooling, extra = TINY[name]
    out = dest / name
    (out / "1_Pooling").mkdir(parents=True, exist_ok=True)
    tok = _tokenizer(pad_first=extra["pad_token_id"] == 0)
    tok.save(str(out / "tokenizer.json"))
    vocab = tok.get_vocab_size()
    config = {
        "model_type": model_type,
        "hidden_size": HIDDEN,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "intermediate_size": FFN,
        "hidden_act": "gelu",
        "vocab_size": vocab,
        "layer_norm_eps": 1e-12,
        **extra,
    }
    (out / "config.json").write_text(json.dumps(config))
    (out / "1_Pooling" / "config.json").write_text(
        json.dumps(
            {
                "word_embedding_dimension": dimension or HIDDEN,
                "pooling_mode_cls_token": pooling == "cls",
                "pooling_mode_mean_tokens": pooling == "mean",
            }
        )
    )
    (out / "modules.json").write_text(
        json.dumps(
            [
                {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
                {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
            ]
        )
    )
    rng = np.random.default_rng(sum(map(ord, name)))

    def w(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape).astype(np.float32) * 0.2

    t = {
        "embeddings.word_embeddings.weight": w(vocab, HIDDEN),
        "embeddings.position_embeddings.weight": w(extra["max_position_embeddings"], HIDDEN),
        "embeddings.token_type_embeddings.weight": w(extra["type_vocab_size"], HIDDEN),
        "embeddings.LayerNorm.weight": 1 + w(HIDDEN),
        "embeddings.LayerNorm.bias": w(HIDDEN),
    }
    for i in range(LAYERS):
        p = f"encoder.layer.{i}."
        for n, (o, k) in {
            "attention.self.query": (HIDDEN, HIDDEN),
            "attention.self.key": (HIDDEN, HIDDEN),
            "attention.self.value": (HIDDEN, HIDDEN),
            "attention.output.dense": (HIDDEN, HIDDEN),
            "intermediate.dense": (FFN, HIDDEN),
            "output.dense": (HIDDEN, FFN),
        }.items():
            t[p + n + ".weight"], t[p + n + ".bias"] = w(o, k), w(o)
        for n in ("attention.output.LayerNorm", "output.LayerNorm"):
            t[p + n + ".weight"], t[p + n + ".bias"] = 1 + w(HIDDEN), w(HIDDEN)
    _save_safetensors(out / "model.safetensors", t)
    return out
