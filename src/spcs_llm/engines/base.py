"""The narrow engine boundary: one method per capability.

An engine knows one inference backend. It receives requests already validated by functions/, translates
backend failures into :mod:`spcs_llm.errors` in one place, and never knows HTTP wire formats of the
Snowflake side or Cortex semantics.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import orjson

from ..errors import InvalidInput

if TYPE_CHECKING:
    from .labels import ChoiceRequest, LabelChoices, LabelScores, NextToken, Plan, ScoreRequest


@dataclass(frozen=True)
class Message:
    role: str
    content: str


@dataclass(frozen=True)
class ChatRequest:
    """One generation. Frozen and hashable so identical requests can be computed once.

    ``json_schema`` is a canonical JSON string (sorted keys) of the schema the output must match, or None.
    ``max_tokens`` is the cap on generated tokens; the engine also stops where the context is full.
    """

    messages: tuple[Message, ...]
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    json_schema: str | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    top_logprobs: int = 0  # > 0: return that many alternatives (with log-probabilities) for each generated token

    @property
    def deterministic(self) -> bool:
        """Greedy decoding gives the same answer every time, so identical requests may share one."""
        return self.temperature == 0.0

    @staticmethod
    def schema_key(schema: Mapping[str, Any] | None) -> str | None:
        """``json.dumps(schema, sort_keys=True, ensure_ascii=False)``, remembered: the rows of a query mostly
        share one schema, and orjson finds it again ~10x faster than json writes it."""
        if schema is None:
            return None
        try:
            found = orjson.dumps(schema, option=orjson.OPT_SORT_KEYS)
        except TypeError:  # not plain JSON data (non-string keys, huge integers): no memo
            found = b"null"
        if b"null" in found:  # orjson writes NaN and Infinity as null, so null may stand for several values
            return json.dumps(schema, sort_keys=True, ensure_ascii=False)
        key = _SCHEMA_KEYS.get(found)
        if key is None:
            if len(_SCHEMA_KEYS) >= 1024:  # bounded; schemas are per query, not per row
                _SCHEMA_KEYS.clear()
            # the key copied at its own length: orjson's buffer is larger (cache_forms.kept)
            key = _SCHEMA_KEYS[b"".join((found, b""))] = json.dumps(schema, sort_keys=True, ensure_ascii=False)
        return key


# orjson's sorted form of a schema -> json's (the canonical string): both write one JSON value in one way, except
# that orjson writes NaN and Infinity as null, so a form with null in it is not remembered
_SCHEMA_KEYS: dict[bytes, str] = {}


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens the engine reused from its prefix cache (when it reports them)

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def usage_of(raw: Mapping[str, Any] | None) -> Usage:
    """Usage from an OpenAI-shaped ``usage`` object; ``prompt_tokens_details.cached_tokens`` is the prefix-cache
    hit that llama.cpp and vLLM (``--enable-prompt-tokens-details``) report."""
    if not raw:
        return Usage()
    details = raw.get("prompt_tokens_details") or {}
    return Usage(
        int(raw.get("prompt_tokens") or 0),
        int(raw.get("completion_tokens") or 0),
        int(details.get("cached_tokens") or 0),
    )


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token, its log-probability, and the likeliest alternatives at that position
    (``top``: (token text, log-probability) pairs, most likely first)."""

    token: str
    logprob: float
    top: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class ChatResult:
    text: str
    finish_reason: str = "stop"
    usage: Usage = field(default_factory=Usage)
    logprobs: tuple[TokenLogprob, ...] = ()  # filled when the request asked for top_logprobs


@dataclass(frozen=True)
class StreamDelta:
    """A piece of a streamed answer. The last one carries ``finish_reason`` and ``usage``."""

    text: str = ""
    finish_reason: str | None = None
    usage: Usage | None = None


class Engine(ABC):
    """One inference backend behind the narrowest interface that the functions need.

    Lifecycle: ``await start()`` loads the model (may take minutes), ``await health()`` says whether it answers,
    ``await aclose()`` releases it. ``model_name`` is the real model served; ``context_window`` is what one
    request may use (prompt + output) in tokens. ``max_concurrency`` is how many requests keep the engine's
    batch full; the scheduler bounds in-flight requests by it.
    """

    kind: ClassVar[str]
    model_name: str
    context_window: int
    max_concurrency: int = 8

    @abstractmethod
    async def start(self) -> None: ...

    @abstractmethod
    async def aclose(self) -> None: ...

    @abstractmethod
    async def health(self) -> bool: ...

    @abstractmethod
    async def chat(self, request: ChatRequest) -> ChatResult:
        """Generate one answer. Raises RowError for a bad request, EngineError for a backend failure."""

    async def chat_stream(self, request: ChatRequest) -> AsyncIterator[StreamDelta]:
        """Stream one answer. The default yields the whole answer at once; engines override it."""
        result = await self.chat(request)
        yield StreamDelta(text=result.text)
        yield StreamDelta(finish_reason=result.finish_reason, usage=result.usage)

    async def count_tokens(self, text: str) -> int:
        """Number of tokens in ``text`` with the served model's tokenizer."""
        raise InvalidInput(f"the {self.kind} engine serving {self.model_name} does not count tokens")

    def metrics_text(self) -> str:
        """The engine's own Prometheus metrics, appended to /metrics. Empty when it has none."""
        return ""

    # -- label scoring (engines/labels.py): engines that cannot do it keep these defaults ----------------------

    label_scoring: bool = True  # False: label functions generate under constraint even where scoring works

    async def score_labels(self, request: ScoreRequest) -> LabelScores | None:
        """The distribution over ``request.labels`` as the continuation of the assistant's ``request.prefix``,
        from the model's next-token probabilities (a walk of the labels' token trie). None: this engine cannot
        score, and the caller generates the answer under constraint instead."""
        if not self.label_scoring:
            return None
        return await labels.score_labels(self, request, self._label_plans())

    async def choose_labels(self, request: ChoiceRequest) -> LabelChoices | None:
        """The likeliest label of each of ``request.slots`` in turn (engines/labels.py :func:`choose_labels`).
        None: this engine cannot score, and the caller generates the answer under constraint instead."""
        if not self.label_scoring:
            return None
        return await labels.choose_labels(self, request, self._label_plans())

    def _label_plans(self) -> dict[tuple[str, ...], Plan]:
        """The label sets' plans (tokens and trie), remembered per engine: its tokenizer is its own."""
        plans: dict[tuple[str, ...], Plan] | None = self.__dict__.get("_label_plans_memo")
        if plans is None:
            plans = self.__dict__["_label_plans_memo"] = {}
        return plans

    async def next_token(self, messages: Sequence[Message], prefix: str, top: int) -> NextToken | None:
        """The ``top`` likeliest next tokens (text, log-probability) after the assistant's answer begins with
        ``prefix``: one forward step. None: not supported."""
        return None

    async def token_pieces(self, text: str) -> list[str] | None:
        """The texts of the tokens the model's tokenizer splits ``text`` into (None: not known)."""
        return None


@dataclass(frozen=True, slots=True)
class Embedded:
    """One embedding pass: a vector per text, in order (an ``(n, dimension)`` array, or a list whose rows may be
    the :class:`~spcs_llm.errors.RowError` of a text refused alone), and the input tokens the model read for each
    text (after truncation). Usage is counted from ``tokens``, as Cortex counts an embedding call's input tokens."""

    vectors: Any
    tokens: Sequence[int]


class Embedder(ABC):
    """One embedding model. ``dimension`` is the length of every vector it returns; ``max_input_tokens`` is what
    one text may hold (longer texts are truncated by the model, as Cortex's embedding functions do)."""

    kind: ClassVar[str]
    model_name: str
    dimension: int
    max_input_tokens: int = 512
    max_concurrency: int = 4

    @abstractmethod
    async def start(self) -> None: ...

    @abstractmethod
    async def aclose(self) -> None: ...

    @abstractmethod
    async def health(self) -> bool: ...

    @abstractmethod
    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """One L2-normalised vector of ``dimension`` floats per text, in order."""

    async def embed_array(self, texts: Sequence[str]) -> np.ndarray:
        """The vectors of :meth:`embed` as one ``(len(texts), dimension)`` float array, the form the SQL functions
        use from the embedder to the wire. Embedders that compute arrays override this to skip the lists."""
        return np.asarray(await self.embed(texts), dtype=np.float64)

    async def embed_counted(self, texts: Sequence[str]) -> Embedded:
        """:meth:`embed_array` with each text's input tokens. Embedders that tokenize anyway override this to
        report what they read; this default asks :meth:`count_tokens` (capped at ``max_input_tokens``), and
        counts 0 for an embedder that cannot count."""
        vectors = await self.embed_array(texts)
        try:
            tokens = [min(await self.count_tokens(t), self.max_input_tokens) for t in texts]
        except InvalidInput:
            tokens = [0] * len(texts)
        return Embedded(vectors, tokens)

    async def count_tokens(self, text: str) -> int:
        raise InvalidInput(f"the {self.kind} embedder serving {self.model_name} does not count tokens")


# Last, as labels.py imports this module's types: the walks above are label rows' hot path, where an import
# statement in the method would cost ~0.6 us a row.
from . import labels  # noqa: E402
