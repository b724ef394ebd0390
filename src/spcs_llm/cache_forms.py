"""The forms in which the result cache keeps chat requests and results: tuples of strings and numbers only.

Why: the cache lives long and holds up to hundreds of thousands of answers. Kept as dataclasses, each answer is
5-120 objects that CPython's cyclic garbage collector tracks (a request, its messages, the result, its usage, a
TokenLogprob and a tuple per generated token), and every full collection walks all of them: with SENTIMENT's
answers (10 alternatives per label token) a filled cache made full collections of ~2.7 million objects, pauses
of hundreds of milliseconds that were the whole p99 of a batch (bench/bench_gateway.py --gc-stats). A tuple
holding only strings, numbers and such tuples is untracked by the collector the first time it survives one, so
a cached answer costs the collector nothing. Nested tuples are untracked one level per collection they live
through, and a cached answer lives through two before it is old; so the forms are flat: one tuple each.

The forms follow the dataclasses' fields (a field added to a request or a result is part of the key and of the
stored answer without a change here); an answer holding something else is kept as it is (tracked, still right).
"""

from __future__ import annotations

from dataclasses import fields
from operator import attrgetter
from typing import Any

from .engines.base import ChatRequest, ChatResult, TokenLogprob, Usage

_REQUEST_REST = attrgetter(*(f.name for f in fields(ChatRequest) if f.name != "messages"))
_RESULT_FIELDS = tuple(f.name for f in fields(ChatResult))
_PACKED = ("text", "finish_reason", "usage", "logprobs")
_TOKEN_FIELDS = tuple(f.name for f in fields(TokenLogprob))


def chat_key(request: ChatRequest) -> tuple[Any, ...]:
    """The request as one flat tuple: the number of messages, each message's role and content, then its other
    fields in field order."""
    key: list[Any] = [len(request.messages)]
    for m in request.messages:
        key += (m.role, m.content)
    key += _REQUEST_REST(request)
    return tuple(key)


def pack_result(result: ChatResult) -> tuple[Any, ...] | ChatResult:
    """The result as one flat tuple of strings and numbers (see the module docstring), or itself when its
    fields are not the four this knows: text, finish reason, the usage fields, the number of tokens, then per
    token its text, log-probability, number of alternatives and each alternative's text and log-probability."""
    if _RESULT_FIELDS != _PACKED or _TOKEN_FIELDS != ("token", "logprob", "top") or type(result) is not ChatResult:
        return result
    usage = tuple(vars(result.usage).values())
    flat: list[Any] = [result.text, result.finish_reason, len(usage), *usage, len(result.logprobs)]
    for t in result.logprobs:
        flat += (t.token, t.logprob, len(t.top))
        for alternative in t.top:
            flat += alternative
    return tuple(flat)


def unpack_result(packed: tuple[Any, ...] | ChatResult) -> ChatResult:
    """The ChatResult that :func:`pack_result` packed (equal to the original, field by field)."""
    if isinstance(packed, ChatResult):
        return packed
    n_usage = packed[2]
    i = 3 + n_usage
    usage = Usage(*packed[3:i])
    tokens: list[TokenLogprob] = []
    for _ in range(packed[i]):
        token, logprob, n_top = packed[i + 1:i + 4]
        i += 3
        top = tuple([(packed[j], packed[j + 1]) for j in range(i + 1, i + 1 + 2 * n_top, 2)])
        i += 2 * n_top
        tokens.append(TokenLogprob(token, logprob, top))
    return ChatResult(packed[0], packed[1], usage, tuple(tokens))
