"""EMBED_TEXT_768, EMBED_TEXT_1024, AI_EMBED and AI_SIMILARITY (snowflake-contract.md §3.1).

The service functions return an ARRAY of floats (VECTOR cannot cross the service-function wire); the deploy step
wraps EMBED_TEXT_768/1024 in SQL UDFs that cast to ``VECTOR(FLOAT, 768|1024)``. The model name must be one an
embedder of that dimension serves (its own name or a Cortex name it answers to); anything else is
``unknown model "<name>"``. Rows of a batch are embedded together (the scheduler batches them).
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

from ..engines.base import Embedder
from ..errors import InvalidInput, UnknownModel
from .registry import Overload, RowJob, Runtime, SqlFunction, json_arg, register

DIGITS = 7  # float32 carries about 7 significant digits; more only makes the 10 MB batch answer fill sooner
SIMILARITY_DEFAULT = "snowflake-arctic-embed-l-v2.0"  # Cortex's default; else the first configured embedder


def _embed_with(dimension: int | None) -> Any:
    def prepare(rt: Runtime, args: list[Any]) -> RowJob:
        model, text = args
        embedder = rt.embedders.resolve(model, dimension)
        if not isinstance(text, str):
            raise InvalidInput("text must be a string")

        async def run() -> list[float]:
            return [round(v, DIGITS) for v in await rt.scheduler.embed(embedder, text)]

        return run

    return prepare


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    norm = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    return 0.0 if norm == 0 else round(max(-1.0, min(1.0, dot / norm)), 6)


def _similarity_embedder(rt: Runtime, config: Any) -> Embedder:
    if config is not None:
        settings = json_arg(config, dict, "config")
        if set(settings) - {"model"}:
            raise InvalidInput(f"unknown config keys: {sorted(set(settings) - {'model'})}")
        if "model" in settings:
            return rt.embedders.resolve(settings["model"])
    try:
        return rt.embedders.resolve(SIMILARITY_DEFAULT)
    except UnknownModel:
        return rt.embedders.default()


def _similarity(rt: Runtime, args: list[Any]) -> RowJob:
    first, second = args[0], args[1]
    if not isinstance(first, str) or not isinstance(second, str):
        raise InvalidInput("both inputs must be strings")
    embedder = _similarity_embedder(rt, args[2] if len(args) > 2 else None)

    async def run() -> float:
        a, b = await asyncio.gather(rt.scheduler.embed(embedder, first), rt.scheduler.embed(embedder, second))
        return cosine(a, b)

    return run


_ARGS = (("model", "VARCHAR"), ("text", "VARCHAR"))
_EMBED_DOC = (
    "An ARRAY of {0} floats; the deploy wraps it to return `VECTOR(FLOAT, {0})`. The model name must be served at "
    "that dimension (its own name or a Cortex name it answers to), else `unknown model`."
)
register(SqlFunction("embed_text_768", (Overload(_ARGS, "ARRAY", _embed_with(768)),), doc=_EMBED_DOC.format(768)))
register(SqlFunction("embed_text_1024", (Overload(_ARGS, "ARRAY", _embed_with(1024)),), doc=_EMBED_DOC.format(1024)))
register(SqlFunction("ai_embed", (Overload(_ARGS, "ARRAY", _embed_with(None)),), null_on_error=True,
                     doc="The embedding of a text (no images) by any served embedding model."))
register(SqlFunction("ai_similarity", (
    Overload((("input1", "VARCHAR"), ("input2", "VARCHAR")), "FLOAT", _similarity),
    Overload((("input1", "VARCHAR"), ("input2", "VARCHAR"), ("config", "OBJECT")), "FLOAT", _similarity,
             frozenset({"config"})),
), null_on_error=True, doc=(
    "Cosine similarity of the two embeddings, in [-1, 1]; default model `snowflake-arctic-embed-l-v2.0` if served, "
    "else the first configured.")))
