"""A BERT-family text encoder in plain numpy: the forward pass of BERT (e5, bge, arctic-embed-m, MiniLM),
XLM-RoBERTa and MPNet, read from a safetensors file.

Why numpy: an encoder of this size is a dozen matmuls per layer, which numpy hands to its multi-threaded BLAS;
ONNX Runtime or torch would add hundreds of megabytes for no gain on the CPU, and the registry ships these
models as safetensors, not ONNX. Weights are memory-mapped, not copied. The maths follows the Hugging Face
implementations (post-LayerNorm blocks; MPNet adds a T5-style relative position bias shared by all layers).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "I64": np.int64}
_PREFIXES = ("", "bert.", "mpnet.", "roberta.", "model.", "0.auto_model.")


def load_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of a safetensors file as a float32 array, memory-mapped where the file holds float32."""
    with path.open("rb") as f:
        header_len = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(header_len))
    raw = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + header_len)
    out: dict[str, np.ndarray] = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        if meta["dtype"] not in _DTYPES:
            raise ValueError(f"{path.name}: tensor {name} has unsupported dtype {meta['dtype']}")
        start, end = meta["data_offsets"]
        arr = raw[start:end].view(_DTYPES[meta["dtype"]]).reshape(meta["shape"])
        if meta["dtype"] == "BF16":  # bfloat16 is the top half of a float32
            arr = (arr.astype(np.uint32) << 16).view(np.float32)
        out[name] = arr if arr.dtype in (np.float32, np.int64) else arr.astype(np.float32)
    return out


def _gelu(x: np.ndarray) -> np.ndarray:
    """Exact (erf) GELU, x * Phi(x). numpy has no erf and scipy is big: erf is Abramowitz & Stegun 7.1.26 (error
    1.5e-7, below float32 noise), computed in place because this runs on the largest activations of the model."""
    z = x * np.float32(1 / math.sqrt(2))
    a = np.abs(z)
    t = a * np.float32(0.3275911)
    t += 1
    np.reciprocal(t, out=t)
    y = t * np.float32(1.061405429)
    for c in (-1.453152027, 1.421413741, -0.284496736, 0.254829592):
        y += np.float32(c)
        y *= t
    np.square(a, out=a)
    np.negative(a, out=a)
    np.exp(a, out=a)
    y *= a  # 1 - erf(|z|)
    np.subtract(1, y, out=y)
    np.copysign(y, z, out=y)  # erf(z)
    y += 1
    y *= x
    y *= np.float32(0.5)
    return y


def _act(name: str) -> Any:
    if name == "gelu":
        return _gelu
    if name in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"):
        c = np.float32(math.sqrt(2 / math.pi))
        return lambda x: 0.5 * x * (1.0 + np.tanh(c * (x + np.float32(0.044715) * x * x * x)))
    if name == "relu":
        return lambda x: np.maximum(x, 0)
    raise ValueError(f"unsupported activation {name!r}")


def _layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    var = np.square(x - mean).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * w + b


def _linear(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    return x @ w.T + b  # w is (out, in) as stored; .T is a free view that BLAS reads transposed


# Names of each layer's tensors, per architecture: q, k, v, attention out, its LayerNorm, FFN in, FFN out, its LN.
_LAYER_NAMES = {
    "bert": (
        "attention.self.query",
        "attention.self.key",
        "attention.self.value",
        "attention.output.dense",
        "attention.output.LayerNorm",
        "intermediate.dense",
        "output.dense",
        "output.LayerNorm",
    ),
    "mpnet": (
        "attention.attn.q",
        "attention.attn.k",
        "attention.attn.v",
        "attention.attn.o",
        "attention.LayerNorm",
        "intermediate.dense",
        "output.dense",
        "output.LayerNorm",
    ),
}
_ARCH = {"bert": "bert", "xlm-roberta": "bert", "roberta": "bert", "mpnet": "mpnet"}


@dataclass(frozen=True)
class EncoderConfig:
    model_type: str
    hidden_size: int
    num_layers: int
    num_heads: int
    layer_norm_eps: float
    hidden_act: str
    max_positions: int
    pad_token_id: int
    relative_buckets: int = 32

    @classmethod
    def from_json(cls, cfg: dict[str, Any]) -> EncoderConfig:
        model_type = cfg.get("model_type", "")
        if model_type not in _ARCH:
            raise ValueError(f"unsupported model_type {model_type!r} (supported: {', '.join(sorted(_ARCH))})")
        if cfg.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError(f"unsupported position_embedding_type {cfg['position_embedding_type']!r} (absolute only)")
        return cls(
            model_type=model_type,
            hidden_size=cfg["hidden_size"],
            num_layers=cfg["num_hidden_layers"],
            num_heads=cfg["num_attention_heads"],
            layer_norm_eps=cfg.get("layer_norm_eps", 1e-12),
            hidden_act=cfg.get("hidden_act", "gelu"),
            max_positions=cfg["max_position_embeddings"],
            pad_token_id=cfg.get("pad_token_id", 0) or 0,
            relative_buckets=cfg.get("relative_attention_num_buckets", 32),
        )

    @property
    def position_offset(self) -> int:
        """RoBERTa-style models number positions from pad_token_id + 1, so fewer than max_positions are usable."""
        return self.pad_token_id + 1 if self.model_type != "bert" else 0

    @property
    def max_tokens(self) -> int:
        return self.max_positions - self.position_offset


class Encoder:
    """Token ids in, last hidden states out: ``forward(ids, mask) -> (batch, seq, hidden)`` float32."""

    def __init__(self, config: EncoderConfig, tensors: dict[str, np.ndarray]) -> None:
        self.config = config
        prefix = next((p for p in _PREFIXES if f"{p}embeddings.word_embeddings.weight" in tensors), None)
        if prefix is None:
            raise ValueError("no embeddings.word_embeddings.weight tensor: not a BERT-family checkpoint")
        self._t = {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}
        self._names = _LAYER_NAMES[_ARCH[config.model_type]]
        for i in range(config.num_layers):
            for n in self._names:
                self._get(f"encoder.layer.{i}.{n}.weight")
        self._act = _act(config.hidden_act)
        # q, k and v as one (3 * hidden, hidden) matrix per layer: one larger matmul is faster than three
        self._qkv = [
            tuple(
                np.concatenate([self._get(f"encoder.layer.{i}.{n}.{part}") for n in self._names[:3]])
                for part in ("weight", "bias")
            )
            for i in range(config.num_layers)
        ]

    @property
    def hidden_size(self) -> int:
        """The real width of the model, from its weights (the length of every vector it gives)."""
        return int(self._get("embeddings.word_embeddings.weight").shape[1])

    def _get(self, name: str) -> np.ndarray:
        for alias in (
            name,
            name.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"),
        ):
            if alias in self._t:
                return self._t[alias]
        raise ValueError(f"checkpoint has no tensor {name}")

    def _ln(self, x: np.ndarray, name: str) -> np.ndarray:
        return _layer_norm(x, self._get(f"{name}.weight"), self._get(f"{name}.bias"), self.config.layer_norm_eps)

    def _dense(self, x: np.ndarray, name: str) -> np.ndarray:
        return _linear(x, self._get(f"{name}.weight"), self._get(f"{name}.bias"))

    def _embed(self, ids: np.ndarray, mask: np.ndarray, type_ids: np.ndarray | None) -> np.ndarray:
        cfg = self.config
        if cfg.model_type == "bert":
            positions = np.broadcast_to(np.arange(ids.shape[1]), ids.shape)
        else:  # RoBERTa/MPNet: real tokens count from pad_token_id + 1, padding sits at pad_token_id
            positions = np.cumsum(mask, axis=1) * mask + cfg.pad_token_id
        x = (
            self._get("embeddings.word_embeddings.weight")[ids]
            + self._get("embeddings.position_embeddings.weight")[positions]
        )
        if "embeddings.token_type_embeddings.weight" in self._t:
            types = type_ids if type_ids is not None else np.zeros_like(ids)
            x = x + self._get("embeddings.token_type_embeddings.weight")[types]
        return self._ln(x.astype(np.float32, copy=False), "embeddings.LayerNorm")

    def _relative_bias(self, length: int) -> np.ndarray:
        """MPNet's (heads, length, length) attention bias from bucketed relative positions (T5's scheme)."""
        half = self.config.relative_buckets // 2
        max_exact, max_distance = half // 2, 128
        pos = np.arange(length)
        n = -(pos[None, :] - pos[:, None])  # context - memory
        bucket = (n < 0).astype(np.int64) * half
        n = np.abs(n)
        # float32 like the reference, so the buckets at exact powers (n = 16, 32, 64) round the same way
        ratio = np.log(np.maximum(n, 1).astype(np.float32) / np.float32(max_exact))
        large = max_exact + (
            ratio / np.float32(math.log(max_distance / max_exact)) * np.float32(half - max_exact)
        ).astype(np.int64)
        bucket += np.where(n < max_exact, n, np.minimum(large, half - 1))
        table = self._get("encoder.relative_attention_bias.weight")  # (buckets, heads)
        return np.ascontiguousarray(table[bucket].transpose(2, 0, 1))

    def forward(self, ids: np.ndarray, mask: np.ndarray, type_ids: np.ndarray | None = None) -> np.ndarray:
        cfg = self.config
        batch, length = ids.shape
        heads, head_dim = cfg.num_heads, cfg.hidden_size // cfg.num_heads
        x = self._embed(ids, mask, type_ids).reshape(batch * length, cfg.hidden_size)
        bias = np.where(mask[:, None, None, :] > 0, np.float32(0), np.float32(-1e9))  # (batch, 1, 1, length)
        if cfg.model_type == "mpnet":
            bias = bias + self._relative_bias(length)[None]
        scale = np.float32(1 / math.sqrt(head_dim))
        o_n, ln1, ff_in, ff_out, ln2 = self._names[3:]
        for i in range(cfg.num_layers):
            p = f"encoder.layer.{i}."
            qkv = _linear(x, *self._qkv[i]).reshape(batch, length, 3, heads, head_dim)
            # contiguous (batch, heads, length, head_dim) blocks, so the stacked matmuls below go to BLAS
            q, k, v = np.ascontiguousarray(qkv.transpose(2, 0, 3, 1, 4))
            q *= scale
            scores = q @ k.transpose(0, 1, 3, 2) + bias
            scores -= scores.max(-1, keepdims=True)
            probs = np.exp(scores, out=scores)
            probs /= probs.sum(-1, keepdims=True)
            ctx = (probs @ v).transpose(0, 2, 1, 3).reshape(batch * length, cfg.hidden_size)
            x = self._ln(self._dense(ctx, p + o_n) + x, p + ln1)
            x = self._ln(self._dense(self._act(self._dense(x, p + ff_in)), p + ff_out) + x, p + ln2)
        return x.reshape(batch, length, cfg.hidden_size)
