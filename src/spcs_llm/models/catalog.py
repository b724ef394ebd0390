"""Model names: what users write (Cortex names, open model names) and what this service actually serves."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import UnknownModel


@dataclass(frozen=True)
class ModelInfo:
    """An open model we know how to serve. ``context_window`` and ``max_output_tokens`` are the model's own."""

    name: str
    context_window: int
    max_output_tokens: int
    hf_repo: str = ""
    gguf_file: str = ""


CATALOG: dict[str, ModelInfo] = {
    m.name: m
    for m in (
        ModelInfo("smollm2-135m-instruct", 8192, 4096, "HuggingFaceTB/SmolLM2-135M-Instruct",
                  "SmolLM2-135M-Instruct.Q4_1.gguf"),
        ModelInfo("qwen2.5-0.5b-instruct", 32768, 8192, "Qwen/Qwen2.5-0.5B-Instruct"),
        ModelInfo("qwen2.5-1.5b-instruct", 32768, 8192, "Qwen/Qwen2.5-1.5B-Instruct"),
        ModelInfo("qwen2.5-7b-instruct", 32768, 8192, "Qwen/Qwen2.5-7B-Instruct"),
        ModelInfo("qwen3-8b", 32768, 8192, "Qwen/Qwen3-8B"),
        ModelInfo("llama-3.1-8b-instruct", 131072, 8192, "meta-llama/Llama-3.1-8B-Instruct"),
    )
}

# Cortex model names users already write in SQL (snowflake-contract.md §3.4). By default each is an alias of
# the served model, so existing SQL runs unchanged; the config can replace this list.
CORTEX_MODEL_NAMES: tuple[str, ...] = (
    "llama3.1-8b", "llama3.1-70b", "llama3.1-405b", "llama3.3-70b", "snowflake-llama-3.3-70b",
    "snowflake-llama-3.1-405b", "llama3.2-1b", "llama3.2-3b", "llama3-8b", "llama3-70b", "llama4-maverick",
    "llama4-scout", "mistral-7b", "mixtral-8x7b", "mistral-large", "mistral-large2", "mistral-large3",
    "qwen3-32b", "deepseek-r1", "snowflake-arctic", "gemma-7b", "jamba-instruct", "jamba-1.5-mini",
    "jamba-1.5-large", "reka-flash", "reka-core",
)

# Cortex embedding model names by dimension (snowflake-contract.md §3.1, §3.4). An embedding model configured
# with that dimension answers to these names unless its config lists its own.
CORTEX_EMBED_NAMES: dict[int, tuple[str, ...]] = {
    768: ("snowflake-arctic-embed-m-v1.5", "snowflake-arctic-embed-m", "e5-base-v2"),
    1024: ("snowflake-arctic-embed-l-v2.0", "snowflake-arctic-embed-l-v2.0-8k", "nv-embed-qa-4",
           "multilingual-e5-large", "voyage-multilingual-2"),
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

    def __init__(self, embedders: Iterable[tuple[object, Iterable[str]]] = ()) -> None:
        self.by_name: dict[str, object] = {}
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
