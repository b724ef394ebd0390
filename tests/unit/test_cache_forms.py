"""The result cache keeps answers and label scores as flat tuples the garbage collector does not track
(spcs_llm/cache_forms.py)."""

from __future__ import annotations

import gc

from spcs_llm.cache_forms import chat_key, pack_result, pack_scores, score_key, unpack_result, unpack_scores
from spcs_llm.engines import FakeEngine
from spcs_llm.engines.base import ChatRequest, ChatResult, Message, TokenLogprob, Usage
from spcs_llm.engines.labels import LabelScores, ScoreRequest
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
    gc.collect()  # a cached answer outlives one collection before it is old
    (key,) = list(scheduler.cache._items)
    value, _size = scheduler.cache._items[key]
    assert not gc.is_tracked(key) and not gc.is_tracked(value)
    assert await scheduler.chat(request) == first  # a hit gives the same answer back


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
    assert all(x is y for x, y in zip(back.distribution.values(), scores.distribution.values(), strict=True))


async def test_cached_scores_are_not_tracked_by_the_garbage_collector() -> None:
    engine = FakeEngine(record=False)
    scheduler = Scheduler(engine, Metrics())
    messages = (Message("system", "Answer TRUE or FALSE."), Message("user", "Is it TRUE?"))
    request = ScoreRequest(messages, '"', ("TRUE", "FALSE"))
    first = await scheduler.score_labels(request)
    assert first is not None
    gc.collect()  # a cached answer outlives one collection before it is old
    (key,) = list(scheduler.cache._items)
    value, _size = scheduler.cache._items[key]
    assert not gc.is_tracked(key) and not gc.is_tracked(value)
    again = await scheduler.score_labels(request)  # a hit gives the same scores back, in a dict of its own
    assert again == first and again is not first and again.distribution is not first.distribution
