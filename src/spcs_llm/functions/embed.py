"""EMBED_TEXT_768, EMBED_TEXT_1024, AI_EMBED and AI_SIMILARITY (snowflake-contract.md §3.1).

The service functions return an ARRAY of floats (VECTOR cannot cross the service-function wire); the deploy step
wraps EMBED_TEXT_768/1024 in SQL UDFs that cast to ``VECTOR(FLOAT, 768|1024)``. The model name must be one an
embedder of that dimension serves (its own name or a Cortex name it answers to); anything else is
``unknown model "<name>"``. Rows of a batch are embedded together (the scheduler batches them).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Sequence
from typing import Any, cast

import numpy as np

from ..engines.base import Embedder
from ..errors import InvalidInput, SpcsLlmError, UnknownModel
from .registry import Grouped, Overload, RowJob, Runtime, SqlFunction, json_arg, register

DIGITS = 7  # float32 carries about 7 significant digits; more only makes the 10 MB batch answer fill sooner
SIMILARITY_DEFAULT = "snowflake-arctic-embed-l-v2.0"  # Cortex's default; else the first configured embedder
_SCALE = 10.0**DIGITS
_NEAR_HALF = 0.5 - 1e-6  # |x * 1e7 - rint(x * 1e7)| above this: a (near) tie, rounded by Python itself
_BIG = 100.0  # values this large lose the margin above to x * 1e7's own rounding; rounded by Python too


def round_vector(vector: np.ndarray) -> np.ndarray:
    """``[round(v, DIGITS) for v in vector]`` as a float64 array, bit for bit (of any shape: a batch's vectors
    are stacked and rounded in one call).

    Python's round() is correctly rounded (the exact binary value, rounded half-even to 7 decimals, then the
    nearest double). ``rint(x * 1e7) / 1e7`` gives the same double whenever ``x * 1e7`` is not within rounding
    error of a half: the division is correctly rounded too, and for float32 inputs ``x * 1e7`` is exact (24 + 17
    bits). The few values near a half, or too large for that margin, go through round() itself.

    Every step is per value, so the values go :data:`BLOCK` at a time, which stay in the core's cache, rather than
    a 1,000-row batch of 768-d vectors (6 MB) through memory at each of the eight steps: ~1 us less a row in the
    gateway's flow (3.4-4.0 against 2.7-3.8 us), and 256 KB of scratch instead of the batch's size."""
    x = np.asarray(vector, dtype=np.float64)  # float32 -> float64 is exact
    out = np.empty(x.shape)
    flat_x, flat_out = x.reshape(-1), out.reshape(-1)  # flat_out: a view of the fresh C-contiguous out
    for start in range(0, flat_x.size, BLOCK):
        _round_block(flat_x[start : start + BLOCK], flat_out[start : start + BLOCK])
    return out


BLOCK = 32_768  # values rounded at a time: 256 KB of doubles, and as much again of scratch


def _round_block(x: np.ndarray, out: np.ndarray) -> None:
    """:func:`round_vector` of the 1-d ``x``, written into ``out``."""
    scaled = np.multiply(x, _SCALE)
    np.rint(scaled, out=out)
    np.subtract(scaled, out, out=scaled)
    np.abs(scaled, out=scaled)
    np.divide(out, _SCALE, out=out)
    # written so that a NaN (whose max is NaN, and every comparison False) sends the block to the exact test too
    if not (scaled.max(initial=0.0) <= _NEAR_HALF and x.max(initial=0.0) < _BIG and x.min(initial=0.0) > -_BIG):
        for i in np.flatnonzero((scaled > _NEAR_HALF) | (np.abs(x) >= _BIG)):
            out[i] = round(float(x[i]), DIGITS)


class _Embedding(Grouped):
    """One row's text to embed. The rows of a batch are embedded together: per embedder, one call that submits
    every text before awaiting any (so they share forward passes), and the vectors rounded in one go."""

    __slots__ = ("embedder", "rt", "text")

    def __init__(self, rt: Runtime, embedder: Embedder, text: str) -> None:
        self.rt, self.embedder, self.text = rt, embedder, text

    @classmethod
    async def run_group(cls, jobs: Sequence[_Embedding]) -> list[Any]:
        outcomes: list[Any] = [None] * len(jobs)

        def finish(rows: list[int], got: list[Any]) -> None:
            ok = [k for k, v in enumerate(got) if not isinstance(v, BaseException)]
            rounded = round_vector(np.stack([cast(np.ndarray, got[k]) for k in ok])) if ok else ()
            for k, vector in zip(ok, rounded, strict=True):  # rows of one C-contiguous array: orjson writes them
                got[k] = vector
            for i, outcome in zip(rows, got, strict=True):
                outcomes[i] = outcome

        await _embed_by_embedder(jobs, lambda job: (job.text,), finish)
        return outcomes


async def _embed_by_embedder(
    jobs: Sequence[Any], texts: Callable[[Any], tuple[str, ...]], finish: Callable[[list[int], list[Any]], None]
) -> None:
    """For each embedder among ``jobs`` (they hold ``rt`` and ``embedder``): one ``embed_outcomes`` call with the
    texts of its jobs, in order, then ``finish(rows, outcomes)`` with those jobs' indices and one vector or error
    per text (a spent budget: its error for every text)."""
    by_embedder: dict[int, list[int]] = {}
    for i, job in enumerate(jobs):
        by_embedder.setdefault(id(job.embedder), []).append(i)

    async def embed(rows: list[int]) -> None:
        first = jobs[rows[0]]
        wanted = [t for i in rows for t in texts(jobs[i])]
        try:
            got: list[Any] = await first.rt.scheduler.embed_outcomes(first.embedder, wanted)
        except SpcsLlmError as exc:
            got = [exc] * len(wanted)
        finish(rows, got)

    await asyncio.gather(*(embed(rows) for rows in by_embedder.values()))


def _embed_with(dimension: int | None) -> Any:
    def prepare(rt: Runtime, args: list[Any]) -> RowJob:
        model, text = args
        embedder = rt.embedders.resolve(model, dimension)
        if not isinstance(text, str):
            raise InvalidInput("text must be a string")
        return _Embedding(rt, embedder, text)  # serialised as a JSON array by the wire (OPT_SERIALIZE_NUMPY)

    return prepare


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """The cosine of two vectors, rounded to 6 decimals: the same double as the loop over Python floats this
    replaced (products and sums in float64, each sum left to right from 0, as CPython 3.11's sum() adds floats).

    Fast path: BLAS dot products sum in another order, but any two summation orders of n products differ by at
    most about 2·n·2^-53 times ||a||·||b|| (the classic bound, Cauchy-Schwarz for the dot), so the two cosines are
    within ~4·n·2^-53 of each other. Unless the BLAS cosine lies within 16 times that of a rounding midpoint of the
    6th decimal (or of 0, where the sign of a rounded zero is decided), both round to the same double; otherwise
    (about 1 row in 10^5) the sums are redone in the old order."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"vectors of different shapes: {x.shape} and {y.shape}")
    if not len(x):
        return 0.0
    norm = math.sqrt(float(x @ x)) * math.sqrt(float(y @ y))
    if norm == 0:  # sums of squares are 0 in any order exactly when every value is 0
        return 0.0
    c = float(x @ y) / norm
    margin = 64 * len(x) * 2.0**-53
    scaled = c * 1e6
    if abs(c) > margin and abs(scaled - math.floor(scaled) - 0.5) > margin * 1e6:
        return round(max(-1.0, min(1.0, c)), 6)
    return _cosine_in_order(x, y)


def _cosine_in_order(x: np.ndarray, y: np.ndarray) -> float:
    """The cosine with every sum left to right from 0 (cumsum accumulates in that order; + 0.0 turns a -0.0 into
    the 0.0 that sum()'s integer start gives)."""
    products = np.stack((x * y, x * x, y * y))
    dot, xx, yy = (float(v) + 0.0 for v in np.cumsum(products, axis=1)[:, -1])
    norm = math.sqrt(xx) * math.sqrt(yy)
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


class _Similarity(Grouped):
    """One row's two texts. The rows of a batch are embedded together (per embedder, every text submitted
    before any is awaited); each row's cosine is then its own."""

    __slots__ = ("embedder", "first", "rt", "second")

    def __init__(self, rt: Runtime, embedder: Embedder, first: str, second: str) -> None:
        self.rt, self.embedder, self.first, self.second = rt, embedder, first, second

    @classmethod
    async def run_group(cls, jobs: Sequence[_Similarity]) -> list[Any]:
        outcomes: list[Any] = [None] * len(jobs)

        def finish(rows: list[int], got: list[Any]) -> None:
            for k, i in enumerate(rows):
                a, b = got[2 * k], got[2 * k + 1]
                if isinstance(a, BaseException):
                    outcomes[i] = a
                elif isinstance(b, BaseException):
                    outcomes[i] = b
                else:
                    outcomes[i] = cosine(a, b)

        await _embed_by_embedder(jobs, lambda job: (job.first, job.second), finish)
        return outcomes


def _similarity(rt: Runtime, args: list[Any]) -> RowJob:
    first, second = args[0], args[1]
    if not isinstance(first, str) or not isinstance(second, str):
        raise InvalidInput("both inputs must be strings")
    return _Similarity(rt, _similarity_embedder(rt, args[2] if len(args) > 2 else None), first, second)


_ARGS = (("model", "VARCHAR"), ("text", "VARCHAR"))
_EMBED_DOC = (
    "An ARRAY of {0} floats; the deploy wraps it to return `VECTOR(FLOAT, {0})`. The model name must be served at "
    "that dimension (its own name or a Cortex name it answers to), else `unknown model`."
)
register(SqlFunction("embed_text_768", (Overload(_ARGS, "ARRAY", _embed_with(768)),), doc=_EMBED_DOC.format(768)))
register(SqlFunction("embed_text_1024", (Overload(_ARGS, "ARRAY", _embed_with(1024)),), doc=_EMBED_DOC.format(1024)))
register(
    SqlFunction(
        "ai_embed",
        (Overload(_ARGS, "ARRAY", _embed_with(None)),),
        null_on_error=True,
        doc="The embedding of a text (no images) by any served embedding model.",
    )
)
register(
    SqlFunction(
        "ai_similarity",
        (
            Overload((("input1", "VARCHAR"), ("input2", "VARCHAR")), "FLOAT", _similarity),
            Overload(
                (("input1", "VARCHAR"), ("input2", "VARCHAR"), ("config", "OBJECT")),
                "FLOAT",
                _similarity,
                frozenset({"config"}),
            ),
        ),
        null_on_error=True,
        doc=(
            "Cosine similarity of the two embeddings, in [-1, 1]; default "
            "model `snowflake-arctic-embed-l-v2.0` if served, "
            "else the first configured."
        ),
    )
)
