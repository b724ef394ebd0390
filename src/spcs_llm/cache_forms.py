"""The forms in which the result cache keeps requests and answers: JSON bytes, which the collector never tracks.

Why: the cache lives long and holds up to hundreds of thousands of answers. Kept as dataclasses, each answer is
objects that CPython's cyclic garbage collector tracks (a request, its messages, the result, its usage, a
TokenLogprob and a tuple per generated token: 9 per SENTIMENT answer, 41 per EXTRACT_ANSWER one), and every full
collection walks all of them. With 20,000-75,000 cached answers a full collection took 0.2-1.7 s, a pause that
is the whole p99 of a batch. Even flat tuples of strings and numbers are tracked until a collection looks at
them, and they pile up to the young generation's threshold (three per cached row made a 15-25 ms young
collection every ~15,000 rows). Bytes are never tracked, so a cached answer costs the collector nothing.

A key is the JSON of one flat list: a chat request's messages (roles and contents) and its other fields in field
order (a field added to ChatRequest is part of the key without a change here); a scoring request's labels,
messages and other fields; a choice request's labels, slots, messages and other fields. An answer is the JSON of
the ChatResult, or of one flat list for label scores (steps, usage, each label and its probability) and label
choices (steps, usage, each chosen label). orjson writes each double as the shortest text that reads back as it.
What JSON would not give back exactly (a NaN or an infinity, written as null; a lone surrogate, refused) stays a
tuple or the object itself: tracked, still right.

Every form kept is :func:`kept`: a copy of orjson's bytes at their own length. orjson returns its output in the
buffer it wrote it into, which it never shrinks (its final resize is a no-op: home-assistant/core#181245): since
orjson 3.12 that buffer is at least ~4 KB and reserved ahead per container, so a 480-byte key held 4,089 bytes and
an EXTRACT_ANSWER answer of 2,283 bytes held ~8,200 (tracemalloc). Kept as they came, the cache's entries took
about four times the bytes it counts against ``result_cache_mb``, and every cached row touched ~12 KB of fresh
memory, three page faults (~11 us a row of EXTRACT_ANSWER on this VM, a quarter of the row).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import fields
from operator import attrgetter
from typing import Any

import orjson

from .engines.base import ChatRequest, ChatResult, Message, TokenLogprob, Usage
from .engines.labels import ChoiceRequest, LabelChoices, LabelScores, ScoreRequest

_REQUEST_REST = attrgetter(*(f.name for f in fields(ChatRequest) if f.name != "messages"))
# the float fields of a chat request (the rest are strings, integers, None and tuples of strings)
_REQUEST_FLOATS = attrgetter(*(f.name for f in fields(ChatRequest) if f.type in ("float", "float | None")))
_SCORE_REST = attrgetter(*(f.name for f in fields(ScoreRequest) if f.name not in ("messages", "labels")))
_CHOICE_REST = tuple(f.name for f in fields(ChoiceRequest) if f.name not in ("messages", "slots", "labels"))
_USAGE = attrgetter(*(f.name for f in fields(Usage)))
_USAGE_FIELDS = len(fields(Usage))


def kept(data: bytes) -> bytes:
    """``data`` in a bytes object of its own length (``bytes.join`` of two parts always copies; ~0.1 us for a
    key or an answer), for bytes that orjson made and that are kept: see the module's docstring."""
    return b"".join((data, b""))


def _frozen(key: list[Any], floats: tuple[Any, ...] = ()) -> bytes | tuple[Any, ...]:
    """A key as JSON bytes: never tracked by the collector, so a cached entry adds nothing to the young
    generation (a tuple would, until the next collection walks it), and equal exactly when the values are equal
    (strings, integers, finite floats, None and tuples of strings each write one way). What JSON cannot write
    one way (a lone surrogate, a NaN or an infinity, which orjson writes as null) stays a tuple: tracked, still
    right, and never equal to bytes. ``floats`` are the key's float values, checked for NaN and infinities."""
    if floats:
        try:
            finite = all(map(math.isfinite, floats))
        except TypeError:  # a None where a float was declared
            finite = all(not isinstance(v, float) or math.isfinite(v) for v in floats)
        if not finite:
            return tuple(key)
    try:
        return kept(orjson.dumps(key))
    except orjson.JSONEncodeError:
        return tuple(key)


def _with_messages(key: list[Any], messages: Sequence[Message]) -> list[Any]:
    """``key`` followed by the number of messages and each message's role and content (every key's middle)."""
    key.append(len(messages))
    for m in messages:
        key += (m.role, m.content)
    return key


def chat_key(request: ChatRequest) -> bytes | tuple[Any, ...]:
    """The request as one flat list (the number of messages, each message's role and content, then its other
    fields in field order), frozen by :func:`_frozen`."""
    key = _with_messages([], request.messages)
    key += _REQUEST_REST(request)
    return _frozen(key, _REQUEST_FLOATS(request))


def pack_result(result: ChatResult) -> bytes | ChatResult:
    """The result as JSON bytes (orjson writes the dataclasses, all their fields, in C; bytes are no work for
    the collector), or the result itself when JSON would not give it back exactly: a null in the JSON may be a
    NaN or an infinity (orjson writes those as null), so such a result is kept as it is."""
    try:
        packed = orjson.dumps(result)
    except TypeError:  # a field that is not JSON data
        return result
    return result if b"null" in packed else kept(packed)


def unpack_result(packed: bytes | ChatResult) -> ChatResult:
    """The ChatResult that :func:`pack_result` packed: equal to the original, field by field (JSON gives the
    same strings, integers and doubles back; tuples come back as lists and are made tuples again)."""
    if isinstance(packed, ChatResult):
        return packed
    fields_ = orjson.loads(packed)
    fields_["usage"] = Usage(**fields_["usage"])
    fields_["logprobs"] = tuple(
        [TokenLogprob(**{**t, "top": tuple(map(tuple, t["top"]))}) for t in fields_["logprobs"]]
    )
    return ChatResult(**fields_)


def score_key(request: ScoreRequest) -> bytes | tuple[Any, ...]:
    """The scoring request as one flat list, frozen by :func:`_frozen`: ``"labels"`` (no chat key begins with a
    string), the number of labels and each label, the number of messages and each message's role and content,
    then its other fields in field order."""
    key = _with_messages(["labels", len(request.labels), *request.labels], request.messages)
    key += _SCORE_REST(request)
    return _frozen(key)


def choice_key(request: ChoiceRequest) -> bytes | tuple[Any, ...]:
    """The choice request as one flat list, frozen by :func:`_frozen`: ``"choices"``, the number of labels and
    each label, the number of slots and each slot, the number of messages and each message's role and content,
    then its other fields in field order."""
    labels, slots = request.labels, request.slots
    key = _with_messages(["choices", len(labels), *labels, len(slots), *slots], request.messages)
    key += [getattr(request, name) for name in _CHOICE_REST]
    return _frozen(key)


def pack_choices(choices: LabelChoices) -> bytes | tuple[Any, ...]:
    """The choices as one flat list (steps, the usage's fields, then each chosen label), frozen by :func:`_frozen`."""
    return _frozen([choices.steps, *_USAGE(choices.usage), *choices.choices])


def unpack_choices(packed: bytes | tuple[Any, ...]) -> LabelChoices:
    """The LabelChoices that :func:`pack_choices` packed, equal field by field."""
    values = orjson.loads(packed) if isinstance(packed, bytes) else packed
    return LabelChoices(tuple(values[1 + _USAGE_FIELDS :]), values[0], Usage(*values[1 : 1 + _USAGE_FIELDS]))


def pack_scores(scores: LabelScores) -> bytes | tuple[Any, ...]:
    """The scores as one flat list (steps, the usage's fields, then each label and its probability in order),
    frozen by :func:`_frozen`: orjson writes each double as the shortest text that reads back as that double."""
    packed: list[Any] = [scores.steps, *_USAGE(scores.usage)]
    for label, p in scores.distribution.items():
        packed += (label, p)
    return _frozen(packed, tuple(scores.distribution.values()))


def unpack_scores(packed: bytes | tuple[Any, ...]) -> LabelScores:
    """The LabelScores that :func:`pack_scores` packed, equal field by field (the same doubles)."""
    values = orjson.loads(packed) if isinstance(packed, bytes) else packed
    flat = values[1 + _USAGE_FIELDS :]
    return LabelScores(dict(zip(flat[::2], flat[1::2], strict=True)), values[0], Usage(*values[1 : 1 + _USAGE_FIELDS]))
