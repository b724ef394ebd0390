"""The result cache keeps answers and label scores as flat tuples the garbage collector does not track
(spcs_llm/cache_forms.py)."""

from __future__ import annotations

import asyncio
import gc
import tracemalloc
from typing import Any

import orjson

from spcs_llm.cache_forms import (
    chat_key,
    choice_key,
    kept,
    pack_choices,
    pack_result,
    pack_scores,
    score_key,
    unpack_choices,
    unpack_result,
    unpack_scores,
)
from spcs_llm.engines import FakeEngine
from spcs_llm.engines.base import ChatRequest, ChatResult, Message, TokenLogprob, Usage
from spcs_llm.engines.labels import ChoiceRequest, LabelChoices, LabelScores, ScoreRequest
from spcs_llm.metrics import Metrics
from spcs_llm.scheduler import Scheduler

RESULTS = [
    ChatResult("plain"),
    ChatResult("two words", "length", Usage(7, 2, 3)),
    ChatResult(
        '{"sentiment": "positive"}',
        "stop",
        Usage(30, 1),
        (TokenLogprob('{"', -0.5, ()), TokenLogprob("positive", -0.1, (("positive", -0.1), ("neg", -2.5)))),
    ),
    ChatResult('{"a": null}', "stop", Usage(1, 1), (TokenLogprob("x", float("-inf"), (("x", float("-inf")),)),)),
]


def test_results_round_trip_field_by_field() -> None:
    for result in RESULTS:
        assert unpack_result(pack_result(result)) == result
    assert isinstance(pack_result(RESULTS[2]), bytes) and pack_result(RESULTS[3]) is RESULTS[3]  # null: kept


def test_keys_differ_where_requests_differ() -> None:
    base = ChatRequest((Message("system", "s"), Message("user", "u")), max_tokens=8)
    variants = [
        base,
        ChatRequest((Message("system", "s u"),), 8),
        ChatRequest((Message("user", "s"), Message("user", "u")), 8),
        ChatRequest(base.messages, 9),
        ChatRequest(base.messages, 8, json_schema="{}"),
        ChatRequest(base.messages, 8, top_logprobs=10),
        ChatRequest(base.messages, 8, stop=("x",)),
    ]
    keys = [chat_key(r) for r in variants]
    assert len(set(keys)) == len(keys)
    assert chat_key(ChatRequest((Message("system", "s"), Message("user", "u")), max_tokens=8)) == keys[0]


async def test_cached_answers_are_not_tracked_by_the_garbage_collector() -> None:
    scheduler = Scheduler(FakeEngine(record=False), Metrics())
    request = ChatRequest(
        (Message("system", "label it"), Message("user", "a text")), 16, json_schema='{"enum": ["a"]}', top_logprobs=10
    )
    first = await scheduler.chat(request)
    ((key, value),) = list(scheduler.cache.items())
    assert not gc.is_tracked(key) and not gc.is_tracked(value)  # from the start, not after a collection
    assert await scheduler.chat(request) == first  # a hit gives the same answer back


async def test_caching_many_answers_leaves_no_tracked_object_behind() -> None:
    """Each cached answer, score and vector adds nothing the collector tracks (its key, its value, the cache's
    own bookkeeping), so a young collection has nothing of the cache's to walk, however many rows were answered
    since the last one. (No collection runs here: untracked from the start, not after one.)"""
    from spcs_llm.engines import FakeEmbedder

    scheduler = Scheduler(FakeEngine(record=False), Metrics())
    embedder = FakeEmbedder(record=False)
    gc.disable()
    try:
        for i in range(300):
            messages = (Message("system", "answer"), Message("user", f"row {i}"))
            await scheduler.chat(ChatRequest(messages, 8, top_logprobs=2))
            await scheduler.score_labels(ScoreRequest(messages, '"', ("TRUE", "FALSE")))
            await scheduler.embed(embedder, f"text {i}")
        cache = scheduler.cache
        entries = list(cache.items())
        kinds = {type(k).__name__ + "->" + type(v).__name__ for k, v in entries}
        tracked = [(k, v) for k, v in entries if gc.is_tracked(k) or gc.is_tracked(v)]
        for shard in cache._shards:
            assert not gc.is_tracked(shard.meta) and all(type(m) is int for m in shard.meta.values())
    finally:
        gc.enable()
    assert len(entries) >= 600 and kinds == {"bytes->bytes", "str->ndarray"}  # answers+scores, vectors
    assert tracked == []


def test_score_keys_differ_where_requests_differ_and_scores_round_trip() -> None:
    messages = (Message("system", "s"), Message("user", "u"))
    variants = [
        ScoreRequest(messages, '"', ("a", "b")),
        ScoreRequest((Message("system", "s u"),), '"', ("a", "b")),
        ScoreRequest((Message("user", "s"), Message("user", "u")), '"', ("a", "b")),
        ScoreRequest(messages, '{"x": "', ("a", "b")),
        ScoreRequest(messages, '"', ("a", "b", "c")),
        ScoreRequest(messages, '"', ("b", "a")),
        ScoreRequest(messages, '"', ("a", "b"), top_logprobs=10),
        ScoreRequest((*messages, Message("user", "a")), '"', ("b",)),  # labels spilling into messages: no clash
    ]
    keys = [score_key(r) for r in variants]
    assert len(set(keys)) == len(keys)
    assert score_key(ScoreRequest((Message("system", "s"), Message("user", "u")), '"', ("a", "b"))) == keys[0]
    request = ChatRequest(messages, max_tokens=8)
    assert chat_key(request) not in keys
    scores = LabelScores({"a": 0.1 + 0.2, "b\u00e9": 1e-300, "c": 0.0}, 2, Usage(7, 2, 3))
    back = unpack_scores(pack_scores(scores))
    assert back == scores and list(back.distribution) == list(scores.distribution)
    assert all(  # the same doubles, bit for bit
        x.hex() == y.hex() for x, y in zip(back.distribution.values(), scores.distribution.values(), strict=True)
    )


def test_choice_keys_differ_where_requests_differ_and_choices_round_trip() -> None:
    messages = (Message("system", "s"), Message("user", "u"))
    slots = ('{"overall": "', ', "food": "')
    variants = [
        ChoiceRequest(messages, slots, ("a", "b")),
        ChoiceRequest(messages, slots[:1], ("a", "b")),
        ChoiceRequest(messages, (slots[1], slots[0]), ("a", "b")),
        ChoiceRequest(messages, slots, ("a", "b", "c")),
        ChoiceRequest(messages, slots, ("a", "b"), top_logprobs=10),
        ChoiceRequest(messages[1:], slots, ("a", "b")),
        ChoiceRequest(messages, (*slots, "a"), ("b",)),  # labels spilling into slots: no clash
    ]
    keys = [choice_key(r) for r in variants]
    assert len(set(keys)) == len(keys) and all(isinstance(k, bytes) for k in keys)
    assert choice_key(ChoiceRequest((Message("system", "s"), Message("user", "u")), slots, ("a", "b"))) == keys[0]
    assert score_key(ScoreRequest(messages, slots[0], ("a", "b"))) not in keys
    assert chat_key(ChatRequest(messages, max_tokens=8)) not in keys
    for choices in (LabelChoices(("positive", "mixed"), 2, Usage(30, 2, 12)), LabelChoices(("n\u00e9",), 1)):
        packed = pack_choices(choices)
        assert isinstance(packed, bytes) and not gc.is_tracked(packed)
        assert unpack_choices(packed) == choices


def test_what_json_cannot_write_one_way_stays_a_tuple() -> None:
    """A NaN (which orjson writes as null, like None) or a lone surrogate (which it refuses) keeps the key a
    tuple: tracked, still right, never equal to a bytes key."""
    messages = (Message("user", "u"),)
    nan, none = ChatRequest(messages, 8, temperature=float("nan")), ChatRequest(messages, 8, temperature=None)
    assert isinstance(chat_key(nan), tuple) and isinstance(chat_key(none), bytes)
    assert chat_key(nan) != chat_key(none)
    odd = chat_key(ChatRequest((Message("user", "\ud800"),), 8))
    assert isinstance(odd, tuple) and odd != chat_key(ChatRequest((Message("user", "\ufffd"),), 8))
    scores = LabelScores({"a": float("nan"), "b": 0.5}, 1, Usage(1, 1))
    assert isinstance(pack_scores(scores), tuple) and unpack_scores(pack_scores(scores)).distribution["b"] == 0.5


async def test_cached_scores_are_not_tracked_by_the_garbage_collector() -> None:
    engine = FakeEngine(record=False)
    scheduler = Scheduler(engine, Metrics())
    messages = (Message("system", "Answer TRUE or FALSE."), Message("user", "Is it TRUE?"))
    request = ScoreRequest(messages, '"', ("TRUE", "FALSE"))
    first = await scheduler.score_labels(request)
    assert first is not None
    ((key, value),) = list(scheduler.cache.items())
    assert not gc.is_tracked(key) and not gc.is_tracked(value)
    again = await scheduler.score_labels(request)  # a hit gives the same scores back, in a dict of its own
    assert again == first and again is not first and again.distribution is not first.distribution


def test_a_sharded_cache_evicts_within_each_shard_and_keeps_its_budget() -> None:
    from spcs_llm.scheduler import ResultCache

    small = ResultCache(3000)
    assert len(small._shards) == 1  # a small cache is one exact LRU
    assert len(ResultCache(16 * 2**20)._shards) == 16  # one per MiB, up to 64
    big = ResultCache(256 * 2**20)
    assert len(big._shards) == 64 and all(s.max_bytes == 4 * 2**20 for s in big._shards)
    for i in range(40_000):
        big.put(f"k{i}".encode(), b"v", 10_000, tag=i % 7)
    assert big.bytes <= 256 * 2**20 and len(big) == sum(s.bytes // 10_000 for s in big._shards)
    assert big.get(b"k0") is None and big.get_tagged(b"k39999") == (b"v", 39999 % 7)  # oldest out, newest in
    assert max(s.bytes for s in big._shards) <= 4 * 2**20 and len(big) > 20_000  # most of the budget is used


def _held(make: Any) -> tuple[Any, int]:
    """What ``make()`` returns and the bytes still allocated for it once its temporaries are freed (tracemalloc)."""
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        value = make()
        return value, tracemalloc.get_traced_memory()[0] - before
    finally:
        if started:
            tracemalloc.stop()


def test_kept_forms_hold_their_own_length_not_orjsons_buffer() -> None:
    """orjson hands back the buffer it wrote into, which can be many times the JSON's length (4,089 bytes for a
    480-byte key with orjson 3.13); the cache counts len(key) + len(value), so what it keeps must be that long."""
    result = ChatResult(
        "a short answer",
        "stop",
        Usage(69, 33, 12),
        tuple(TokenLogprob(f" w{i}", -0.1 * i, ((f" w{i}", -0.1 * i),)) for i in range(33)),
    )
    request = ChatRequest(
        (Message("system", "Answer briefly."), Message("user", "What arrived late? " * 20)), max_tokens=64
    )
    choices = LabelChoices(("positive", "negative"), 2, Usage(50, 2))
    scores = LabelScores({"positive": 0.75, "negative": 0.25}, 1, Usage(50, 1))
    batch = {"data": [[i, 0.5] for i in range(1000)]}  # made outside: freed lists stay on CPython's free list
    for make in (
        lambda: pack_result(result),
        lambda: chat_key(request),
        lambda: pack_choices(choices),
        lambda: pack_scores(scores),
        lambda: kept(orjson.dumps(batch)),
    ):
        value, held = _held(make)
        assert isinstance(value, bytes)
        # a bytes object's header is 33 bytes; lists and tuples the packing made and freed may stay on CPython's
        # free lists (up to ~230 bytes seen); orjson's own buffer is at least ~4 KB
        assert held <= len(value) + 1024, (len(value), held)


def test_a_remembered_batch_answer_holds_its_own_length() -> None:
    """The batch memory counts a remembered answer at len(body) against batch_memory_mb: a SENTIMENT batch's
    body from orjson (~15 KB) held ~260 KB before it was copied at its own length."""
    from spcs_llm.server.batches import BatchMemory

    memory = BatchMemory(Metrics(), max_bytes=10**9)

    async def body(done: dict[int, Any]) -> bytes:
        return orjson.dumps({"data": [[i, 0.123456] for i in range(1000)]})

    async def remember() -> None:
        for i in range(20):
            await memory.answer(f"b-{i}", "sentiment", b"{}", body)

    # debug off whatever the environment says: debug mode's tracebacks fill linecache, which tracemalloc counts
    _, held = _held(lambda: asyncio.run(remember(), debug=False))
    assert 20 * 14_000 < memory.bytes < held < 1.5 * memory.bytes, (memory.bytes, held)
