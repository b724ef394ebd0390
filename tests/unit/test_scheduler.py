"""Fan-out, fairness, dedup, the result cache, retried batches and admission, asserted on engine call counts
and row order (never on time)."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from spcs_llm.engines import ChatRequest, FakeEngine, Message
from spcs_llm.engines.base import ChatResult
from spcs_llm.errors import EngineUnavailable, Overloaded
from spcs_llm.metrics import Metrics
from spcs_llm.scheduler import Scheduler, query_key
from spcs_llm.server.batches import BatchMemory

from ..conftest import batch


def req(text: str, temperature: float = 0.0) -> ChatRequest:
    return ChatRequest((Message("user", text),), max_tokens=8, temperature=temperature)


async def test_identical_rows_in_a_batch_are_computed_once(client, fake_engine) -> None:
    rows = [["fake-model", f"prompt {i % 50}"] for i in range(200)]
    r = await client.post("/functions/complete", **batch(*rows))
    assert r.status_code == 200
    data = r.json()["data"]
    assert [n for n, _ in data] == list(range(200))
    assert all(v == f"echo:prompt {i % 50}" for i, (_, v) in enumerate(data))
    assert len(fake_engine.calls) == 50


async def test_sampled_rows_are_not_deduplicated(client, fake_engine) -> None:
    row = ["fake-model", [{"content": "same"}], {"temperature": 0.7}]
    await client.post("/functions/complete", **batch(row, row, row))
    assert len(fake_engine.calls) == 3


async def test_rows_fan_out_up_to_the_bound_and_no_further() -> None:
    engine = FakeEngine(delay=0.01, max_concurrency=4)
    sched = Scheduler(engine, Metrics(), max_concurrency=4)
    results = await asyncio.gather(*(sched.chat(req(f"p{i}")) for i in range(40)))
    assert [r.text for r in results] == [f"echo:p{i}" for i in range(40)]
    assert engine.peak_in_flight == 4


async def test_concurrent_batches_share_one_bound_and_dedup_across_batches() -> None:
    engine = FakeEngine(delay=0.01)
    sched = Scheduler(engine, Metrics(), max_concurrency=3)
    a = [sched.chat(req(f"p{i}")) for i in range(10)]
    b = [sched.chat(req(f"p{i}")) for i in range(10)]
    out = await asyncio.gather(*a, *b)
    assert [r.text for r in out] == [f"echo:p{i}" for i in range(10)] * 2
    assert len(engine.calls) == 10
    assert engine.peak_in_flight == 3


async def test_a_cancelled_waiter_does_not_cancel_the_shared_call() -> None:
    engine = FakeEngine(delay=0.02)
    sched = Scheduler(engine, Metrics(), max_concurrency=2)
    first = asyncio.ensure_future(sched.chat(req("x")))
    second = asyncio.ensure_future(sched.chat(req("x")))
    await asyncio.sleep(0)
    second.cancel()  # a waiter gives up: the call it shared goes on for the caller that runs it
    assert (await first).text == "echo:x"
    assert len(engine.calls) == 1 and second.cancelled()


async def test_when_the_caller_running_a_shared_call_is_cancelled_a_waiter_runs_it() -> None:
    engine = FakeEngine(delay=0.02)
    sched = Scheduler(engine, Metrics(), max_concurrency=2)
    first = asyncio.ensure_future(sched.chat(req("x")))
    second = asyncio.ensure_future(sched.chat(req("x")))
    await asyncio.sleep(0)
    first.cancel()  # the shared call ran in this caller (no task of its own), so it stops with it
    assert (await second).text == "echo:x"
    assert len(engine.calls) == 2 and first.cancelled()
    assert sched._in_flight == {} and sched._slots.free == 2


def test_admission_refuses_what_would_overflow_the_queue() -> None:
    sched = Scheduler(FakeEngine(), Metrics(), max_queue_rows=10)
    with sched.admit(8):
        with pytest.raises(Overloaded, match="^too many requests$"):
            with sched.admit(3):
                pass
        with sched.admit(2):
            assert sched.queued_rows == 10
    assert sched.queued_rows == 0
    with sched.admit(50):  # an empty queue admits a batch of any size: it could never fit later either
        assert sched.queued_rows == 50


async def test_overload_is_429_and_no_row_of_an_admitted_batch_is_lost(app, client) -> None:
    app.state.runtime.scheduler.max_queue_rows = 30
    app.state.engine.delay = 0.02
    rows = [["fake-model", f"q{i}"] for i in range(20)]
    responses = await asyncio.gather(*(client.post("/functions/complete", **batch(*rows)) for _ in range(4)))
    statuses = sorted(r.status_code for r in responses)
    assert statuses[0] == 200 and 429 in statuses and set(statuses) <= {200, 429}
    for r in responses:
        if r.status_code == 429:
            assert r.text == "too many requests"
        else:
            assert r.json()["data"] == [[i, f"echo:q{i}"] for i in range(20)]


# -- fairness ---------------------------------------------------------------------------------------------------


async def test_a_small_query_takes_turns_with_a_big_one_instead_of_waiting_behind_it() -> None:
    engine = FakeEngine(delay=0.001)
    sched = Scheduler(engine, Metrics(), max_concurrency=1)

    async def query(name: str, n: int) -> list[ChatResult]:
        query_key.set(name)
        return await asyncio.gather(*(sched.chat(req(f"{name}{i}")) for i in range(n)))

    big = asyncio.ensure_future(query("big", 20))
    await asyncio.sleep(0)  # the big query's rows are all queued first
    small = asyncio.ensure_future(query("small", 3))
    await asyncio.gather(big, small)
    order = [c.messages[-1].content for c in engine.calls]
    # one place, handed out in turn: big0 was running, then big1, small0, big2, small1, big3, small2, ...
    assert order[:7] == ["big0", "big1", "small0", "big2", "small1", "big3", "small2"]
    assert sorted(order) == sorted([f"big{i}" for i in range(20)] + [f"small{i}" for i in range(3)])


async def test_without_a_query_id_each_call_is_its_own_turn() -> None:
    engine = FakeEngine(delay=0.001)
    sched = Scheduler(engine, Metrics(), max_concurrency=1)
    query_key.set("sql")
    sql = asyncio.ensure_future(asyncio.gather(*(sched.chat(req(f"row{i}")) for i in range(10))))
    await asyncio.sleep(0)
    query_key.set(None)  # an OpenAI chat, say
    chat = asyncio.ensure_future(sched.chat(req("chat")))
    await asyncio.gather(sql, chat)
    assert [c.messages[-1].content for c in engine.calls].index("chat") == 2


async def test_a_cancelled_waiter_gives_its_turn_away_and_the_bound_holds() -> None:
    engine = FakeEngine(delay=0.005)
    sched = Scheduler(engine, Metrics(), max_concurrency=2)
    tasks = [asyncio.ensure_future(sched.chat(req(f"p{i}", temperature=0.5))) for i in range(10)]
    await asyncio.sleep(0)
    for t in tasks[2:6]:
        t.cancel()
    done = await asyncio.gather(*tasks, return_exceptions=True)
    assert [r.text for r in done if isinstance(r, ChatResult)] == [f"echo:p{i}" for i in (0, 1, 6, 7, 8, 9)]
    assert len(engine.calls) == 6 and engine.peak_in_flight == 2
    assert sched._slots.free == 2 and sched._slots.waiting == 0


async def test_big_and_small_batches_of_two_queries_over_http(app, client, fake_engine) -> None:
    fake_engine.delay = 0.002
    sched = app.state.runtime.scheduler
    sched.max_queue_seconds = None  # admission is not what this test is about
    big = asyncio.ensure_future(
        client.post(
            "/functions/complete", **batch(*[["fake-model", f"big {i}"] for i in range(60)], query_id="query-big")
        )
    )
    for _ in range(5000):  # the big batch's rows are queued before the small batch arrives
        if sched._slots.waiting >= 40:
            break
        await asyncio.sleep(0.001)
    small = await client.post(
        "/functions/complete", **batch(*[["fake-model", f"small {i}"] for i in range(4)], query_id="query-small")
    )
    assert small.json()["data"] == [[i, f"echo:small {i}"] for i in range(4)]
    assert (await big).json()["data"] == [[i, f"echo:big {i}"] for i in range(60)]
    order = [c.messages[-1].content for c in fake_engine.calls]
    last_small = max(order.index(f"small {i}") for i in range(4))
    assert last_small < order.index("big 59") - 30  # the small query did not wait for the big one's tail


# -- result cache -----------------------------------------------------------------------------------------------


async def test_a_repeated_deterministic_request_is_answered_from_the_cache() -> None:
    engine, metrics = FakeEngine(), Metrics()
    sched = Scheduler(engine, metrics)
    first = await sched.chat(req("same"))
    again = await sched.chat(req("same"))
    assert again == first and len(engine.calls) == 1
    await sched.chat(req("same", temperature=0.7))
    await sched.chat(req("same", temperature=0.7))
    assert len(engine.calls) == 3  # sampled requests are never served from the cache
    await sched.chat(ChatRequest((Message("user", "same"),), max_tokens=9))  # another option: another key
    assert len(engine.calls) == 4
    assert metrics.cache_hits.labels("chat")._value.get() == 1


async def test_the_cache_is_bounded_and_forgets_the_least_recently_used() -> None:
    engine = FakeEngine()
    sched = Scheduler(engine, Metrics(), cache_bytes=3000)
    for i in range(20):
        await sched.chat(req(f"prompt {i}"))
    assert 0 < len(sched.cache) < 20 and sched.cache.bytes <= 3000
    calls = len(engine.calls)
    await sched.chat(req("prompt 19"))  # recent: still cached
    await sched.chat(req("prompt 0"))  # the oldest: forgotten, computed again
    assert len(engine.calls) == calls + 1


async def test_a_zero_cache_keeps_nothing() -> None:
    engine = FakeEngine()
    sched = Scheduler(engine, Metrics(), cache_bytes=0)
    await sched.chat(req("x"))
    await sched.chat(req("x"))
    assert len(engine.calls) == 2 and len(sched.cache) == 0


async def test_engine_errors_are_not_cached() -> None:
    engine = FakeEngine()
    sched = Scheduler(engine, Metrics())
    with pytest.raises(EngineUnavailable):
        await sched.chat(req("<<engine-down>>"))
    engine.fail_marker = "never"
    assert (await sched.chat(req("<<engine-down>>"))).text == "echo:<<engine-down>>"


async def test_repeated_rows_across_queries_cost_nothing_the_second_time(client, fake_engine) -> None:
    rows = [["fake-model", f"row {i % 25}"] for i in range(100)]
    first = await client.post("/functions/complete", **batch(*rows))
    assert len(fake_engine.calls) == 25  # 50% ... 75% repeats within the batch are computed once
    second = await client.post("/functions/complete", **batch(*rows, query_id="another-query"))
    assert second.json() == first.json() and len(fake_engine.calls) == 25


async def test_embeddings_are_cached_per_model(client, fake_embedders) -> None:
    rows = [["fake-embed-768", f"text {i % 3}"] for i in range(6)]
    await client.post("/functions/embed_text_768", **batch(*rows))
    await client.post("/functions/embed_text_768", **batch(*rows))
    assert sum(len(c) for c in fake_embedders[0].calls) == 3


# -- retried batches (same batch id) ------------------------------------------------------------------------------


SAMPLED = {"temperature": 0.7}


def sampled_rows(n: int, text: str = "row") -> list[list]:
    return [["fake-model", [{"content": f"{text} {i}"}], SAMPLED] for i in range(n)]


def texts(response) -> list[str]:
    """The answer texts of a COMPLETE batch in the messages + options form (a detail object per row)."""
    return [orjson.loads(v)["choices"][0]["messages"] for _, v in response.json()["data"]]


async def test_a_retried_batch_is_answered_from_what_was_computed(app, client, fake_engine) -> None:
    rows = sampled_rows(10)  # sampled: the result cache does not hold them, only the batch memory does
    first = await client.post("/functions/complete", **batch(*rows, batch_id="b-1"))
    retry = await client.post("/functions/complete", **batch(*rows, batch_id="b-1"))
    assert first.status_code == retry.status_code == 200
    assert retry.content == first.content and len(fake_engine.calls) == 10
    assert app.state.metrics.batch_retries_answered._value.get() == 1
    await client.post("/functions/complete", **batch(*rows, batch_id="b-2"))  # a new batch is computed
    assert len(fake_engine.calls) == 20


async def test_the_same_batch_id_with_another_body_is_computed_afresh(client, fake_engine) -> None:
    await client.post("/functions/complete", **batch(*sampled_rows(3), batch_id="b-1"))
    other = await client.post("/functions/complete", **batch(*sampled_rows(3, "other"), batch_id="b-1"))
    assert texts(other) == [f"echo:other {i}" for i in range(3)]
    assert len(fake_engine.calls) == 6


async def test_a_retry_while_the_batch_runs_waits_for_the_same_work(client, fake_engine) -> None:
    fake_engine.delay = 0.01
    rows = sampled_rows(12)
    first = asyncio.ensure_future(client.post("/functions/complete", **batch(*rows, batch_id="b-1")))
    while not fake_engine.calls:
        await asyncio.sleep(0.001)
    retry = await client.post("/functions/complete", **batch(*rows, batch_id="b-1"))
    assert retry.content == (await first).content and len(fake_engine.calls) == 12


async def test_work_goes_on_when_snowflake_drops_the_connection(app, client, fake_engine) -> None:
    fake_engine.delay = 0.01
    rows = sampled_rows(8)
    first = asyncio.ensure_future(client.post("/functions/complete", **batch(*rows, batch_id="b-1")))
    while not fake_engine.calls:
        await asyncio.sleep(0.001)
    first.cancel()  # Snowflake gave up waiting
    with pytest.raises(asyncio.CancelledError):
        await first
    retry = await client.post("/functions/complete", **batch(*rows, batch_id="b-1"))
    assert texts(retry) == [f"echo:row {i}" for i in range(8)]
    assert len(fake_engine.calls) == 8


async def test_a_batch_that_failed_part_way_computes_only_its_missing_rows_on_retry(client, fake_engine) -> None:
    rows = sampled_rows(6)
    rows[4] = ["fake-model", [{"content": "row 4 <<engine-down>>"}], SAMPLED]
    failed = await client.post("/functions/complete", **batch(*rows, batch_id="b-1"))
    assert failed.status_code == 503  # the engine failed on one row: the batch fails, Snowflake retries it
    assert len(fake_engine.calls) == 6
    fake_engine.fail_marker = "never again"  # the engine is back
    retry = await client.post("/functions/complete", **batch(*rows, batch_id="b-1"))
    assert retry.status_code == 200
    assert texts(retry)[4] == "echo:row 4 <<engine-down>>"
    assert len(fake_engine.calls) == 7  # only row 4 went to the engine again


async def test_a_refused_batch_is_computed_in_full_on_retry(app, client, fake_engine) -> None:
    sched = app.state.runtime.scheduler
    with sched.admit(1):  # something is running
        sched.max_queue_rows = 5
        refused = await client.post("/functions/complete", **batch(*sampled_rows(10), batch_id="b-1"))
    assert refused.status_code == 429 and fake_engine.calls == []
    retry = await client.post("/functions/complete", **batch(*sampled_rows(10), batch_id="b-1"))
    assert retry.status_code == 200 and len(fake_engine.calls) == 10


def test_batch_memory_is_bounded() -> None:
    memory = BatchMemory(Metrics(), max_bytes=1000, max_batches=3)

    async def fill() -> None:
        for i in range(5):
            await memory.answer(f"b-{i}", "complete", b"{}", lambda done, i=i: _body(i, 300))

    asyncio.run(fill())
    assert len(memory) == 3 and memory.bytes <= 1000
    assert list(memory._batches) == ["b-2", "b-3", "b-4"]


async def _body(i: int, size: int) -> bytes:
    return str(i).encode() * size


# -- admission by time ---------------------------------------------------------------------------------------------


def test_a_batch_that_would_wait_too_long_is_refused() -> None:
    now = [0.0]
    sched = Scheduler(FakeEngine(), Metrics(), max_queue_rows=10_000, max_queue_seconds=5, clock=lambda: now[0])
    with sched.admit(10) as row_done:  # nothing measured yet: only the row limit applies
        now[0] = 1.0
        for _ in range(10):
            row_done()  # 10 rows in 1 busy second: 10 rows/s
    assert sched.rate.per_second == pytest.approx(10)
    now[0] = 100.0  # idle time does not count
    with sched.admit(40):
        assert sched.drain_seconds() == pytest.approx(4)
        with sched.admit(5):  # 45 rows at 10/s: 4.5 s
            with pytest.raises(Overloaded):
                with sched.admit(10):  # 55 rows: 5.5 s
                    pass
    assert sched.queued_rows == 0
    assert sched.metrics.rejected_rows._value.get() == 10


def test_before_any_row_has_finished_a_few_engine_fulls_are_admitted() -> None:
    sched = Scheduler(FakeEngine(), Metrics(), max_concurrency=4, max_queue_seconds=60)
    with sched.admit(10), sched.admit(6):  # 16 rows: four times the engine's 4 places
        with pytest.raises(Overloaded):
            with sched.admit(1):
                pass
    without_time_limit = Scheduler(FakeEngine(), Metrics(), max_concurrency=4, max_queue_seconds=None)
    with without_time_limit.admit(10), without_time_limit.admit(100):
        assert without_time_limit.queued_rows == 110


def test_the_rate_follows_the_engine_when_it_slows_down() -> None:
    now = [0.0]
    sched = Scheduler(FakeEngine(), Metrics(), max_queue_seconds=5, clock=lambda: now[0])
    with sched.admit(100) as row_done:
        for _ in range(100):
            now[0] += 0.01
            row_done()
    fast = sched.rate.per_second
    with sched.admit(100) as row_done:
        for _ in range(100):
            now[0] += 1.0  # a hundred times slower, for 100 s (over three half-lives)
            row_done()
    assert fast == pytest.approx(100)
    assert sched.rate.per_second < 2


# -- prefix cache ------------------------------------------------------------------------------------------------


async def test_prompt_tokens_the_engine_reused_are_counted_in_metrics(client) -> None:
    rows = [
        ["fake-model", [{"role": "system", "content": "one shared instruction"}, {"content": f"row {i}"}], {}]
        for i in range(4)
    ]
    assert (await client.post("/functions/complete", **batch(*rows))).status_code == 200
    text = (await client.get("/metrics")).text
    # the fake engine caches the 4-token system message after the first row: 3 rows reuse it
    assert "spcs_llm_prompt_tokens_cached_total 12.0" in text
