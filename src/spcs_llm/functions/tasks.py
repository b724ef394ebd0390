"""What the task functions (SENTIMENT, SUMMARIZE, TRANSLATE, CLASSIFY_TEXT, ...) share.

- **Prompt layout**: the fixed instruction is the system message and the row's text is the last message, so
  every row of a function shares the longest possible prefix in the engine's prompt cache.
- **Constrained output**: labels, booleans and objects come from JSON-schema constrained decoding, so an answer
  is always one of the allowed values; :func:`json_answer` only decodes it.
- **Label probabilities**: :func:`label_distribution` reads the model's probabilities for each label at the
  token where the answer names it, which is what SENTIMENT's score is made of.
- **Label scoring**: :func:`label_scores` asks the engine for the label distribution in one forward step per
  branching of the labels' token trie (engines/labels.py) instead of generating the answer; None means the
  engine cannot, and the function generates under constraint as before.
- **Fitting the context**: :func:`fit` cuts a text that does not fit one request into pieces that do.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

import orjson

from ..engines.base import ChatRequest, ChatResult, Message
from ..engines.labels import LabelScores, Node, ScoreRequest, begun, normalised, step_mass
from ..errors import InvalidInput, MaxTokensExceeded
from .registry import Runtime
from .text import DEFAULT_SEPARATORS, recursive_split

T = TypeVar("T")
# Tokens a chat template adds around the system and user messages (role markers, BOS); generous on purpose.
TEMPLATE_TOKENS = 32


def task_request(
    rt: Runtime,
    instruction: str,
    text: str,
    *,
    schema: Mapping[str, Any] | None = None,
    max_tokens: int = 256,
    top_logprobs: int = 0,
    json_schema: str | None = None,
) -> ChatRequest:
    """A greedy request: the instruction first (shared by every row), the row's text last. ``json_schema``: the
    schema's canonical string (``ChatRequest.schema_key``) made once for a query's rows, instead of ``schema``."""
    return ChatRequest(
        messages=(Message("system", instruction), Message("user", text)),
        max_tokens=max(1, min(max_tokens, rt.max_output_tokens)),
        temperature=0.0,
        json_schema=json_schema if json_schema is not None else ChatRequest.schema_key(schema),
        top_logprobs=top_logprobs,
    )


PER_QUERY_MEMO = 256  # argument sets remembered: a query has one, a few queries run at once
_PER_QUERY: dict[str, Any] = {}


def per_query(kind: str, raw: Sequence[Any], make: Callable[[], T]) -> T:
    """``make()``, remembered by ``kind`` and the raw arguments it is made from: the rows of a query pass the same
    categories and options, so their labels, instruction and schema are made once, not once per row. Only what
    ``make`` returns is remembered (a row whose arguments are refused raises again); the key is the arguments'
    ``repr``, which tells apart every JSON value (and a NaN from a null, which JSON would not). What ``make``
    returns is shared by rows: it must not be changed (tuples and strings)."""
    key = repr((kind, *raw))
    found = _PER_QUERY.get(key)
    if found is None:
        found = make()
        if len(_PER_QUERY) >= PER_QUERY_MEMO:
            _PER_QUERY.clear()
        _PER_QUERY[key] = found
    return found


async def label_scores(
    rt: Runtime, request: ChatRequest, prefix: str, labels: Sequence[str], top_logprobs: int = 20
) -> LabelScores | None:
    """The distribution over ``labels`` as the continuation of the answer ``prefix`` to ``request``'s messages,
    or None when the engine cannot score (then generate ``request`` under its schema)."""
    return await rt.scheduler.score_labels(ScoreRequest(request.messages, prefix, tuple(labels), top_logprobs))


def json_answer(result: ChatResult) -> Any:
    """The decoded value of a constrained answer. It is valid JSON unless generation was cut at max_tokens."""
    try:
        return orjson.loads(result.text)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput("the model's answer did not fit in its token limit") from exc


def enum_schema(values: Sequence[str]) -> dict[str, Any]:
    return {"type": "string", "enum": list(values)}


def label_distribution(result: ChatResult, labels: Sequence[str]) -> dict[str, float]:
    """P(label) for each label, from the alternatives at the token where the answer names its label: the first
    generated token that begins a label (JSON punctuation and keys before it are skipped).

    A token counts toward a label when the label starts with it (case-insensitive, quotes and spaces stripped);
    a token that starts several labels is shared between them. Tokens that start none are ignored and the rest
    renormalised, so the result sums to 1. Without logprobs (an engine that gives none) the chosen label gets 1.
    That is the label walk's rule at its first step, so this reads the answer with the walk's own code: the root
    of a trie of the labels (one node; no token pieces are needed for one step), whose memo of what each token
    begins serves every row of a query.
    """
    root = _label_root(labels)
    position = next((t for t in result.logprobs if begun(root, t.token)), None)
    distribution = None
    if position is not None:
        distribution = normalised(step_mass(root, ((position.token, position.logprob), *position.top)))
    if distribution is None:  # no label has any probability: the one the text names gets it all
        chosen = next((label for label in labels if label in result.text), None)
        return {label: float(label == chosen) for label in labels}
    return distribution


LABEL_ROOTS = 64  # label sets remembered: a query has one, a few queries run at once
_LABEL_ROOTS: dict[tuple[str, ...], Node] = {}


def _label_root(labels: Sequence[str]) -> Node:
    """A label set's one-node trie, remembered (a node's memo is bounded by the walk's MATCHES_MEMO)."""
    key = tuple(labels)
    root = _LABEL_ROOTS.get(key)
    if root is None:
        if len(_LABEL_ROOTS) >= LABEL_ROOTS:
            _LABEL_ROOTS.clear()
        root = _LABEL_ROOTS[key] = Node("", list(labels))
    return root


async def gather_all(aws: Sequence[Awaitable[T]]) -> list[T]:
    """``asyncio.gather`` that awaits a single awaitable directly: most rows have one piece, and a task for it
    costs more than the gateway's whole per-row work."""
    if len(aws) == 1:
        return [await aws[0]]
    return list(await asyncio.gather(*aws))


async def budget(rt: Runtime, instruction: str, max_tokens: int) -> int:
    """Tokens left for the row's text in one request with this instruction and output allowance."""
    room = rt.context_window - min(max_tokens, rt.max_output_tokens) - TEMPLATE_TOKENS
    room -= await rt.scheduler.count_tokens(instruction)
    if room < 16:
        raise MaxTokensExceeded(rt.context_window)
    return room


async def fit(rt: Runtime, text: str, room: int) -> list[str]:
    """``text`` as pieces of at most ``room`` tokens each, cut at paragraph, line, then word boundaries.

    A byte-level tokenizer never makes more tokens than bytes, so short texts are not sent to the tokenizer.
    """
    if len(text.encode()) <= room:
        return [text]
    tokens = await rt.scheduler.count_tokens(text)
    if tokens <= room:
        return [text]
    chars = max(1, int(len(text) * room / tokens * 0.9))
    pieces = recursive_split(text, chars, 0, DEFAULT_SEPARATORS)
    if len(pieces) == 1:  # one unbreakable piece: halve it
        pieces = [text[: len(text) // 2], text[len(text) // 2 :]]
    out: list[str] = []
    for piece in pieces:
        out.extend(await fit(rt, piece, room))
    return out
