"""Overload as Snowflake retries it (issue 19): hold instead of 429, the 202 + polling GET protocol, unknown and
expired batch ids, retried POSTs of held batches, abandoned queries. The engine waits on a gate the test opens,
so what is held, running or answered is decided by the test, never by time."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from spcs_llm.config import Settings
from spcs_llm.engines import ChatRequest, FakeEngine
from spcs_llm.engines.base import ChatResult
from spcs_llm.errors import Overloaded
from spcs_llm.metrics import Metrics
from spcs_llm.scheduler import Scheduler, query_key
from spcs_llm.server import create_app

from ..conftest import batch, in_process, sf_headers, wait_ready


class GatedEngine(FakeEngine):
    """The fake engine, but every call waits until the test opens ``gate``; ``entered`` counts calls begun."""

    def __init__(self) -> None:
        super().__init__("fake-model", context_window=64, max_concurrency=4)
        self.gate = asyncio.Event()
        self.entered = 0

    async def chat(self, request: ChatRequest) -> ChatResult:
        self.entered += 1
        await self.gate.wait()
        return await super().chat(request)


@contextlib.asynccontextmanager
async def served(**server: Any) -> AsyncIterator[tuple[Any, httpx.AsyncClient, GatedEngine]]:
    engine = GatedEngine()
    settings = Settings.load(
        overrides={"engine": {"kind": "fake", "max_output_tokens": 32}, "server": server}
    ).model_copy(update={"embeddings": []})
    app = create_app(settings, engine=engine, embedders=[])
    async with in_process(app) as client:
        await wait_ready(app)
        yield app, client, engine


def rows(n: int, tag: str = "q") -> list[list[str]]:
    return [["fake-model", f"{tag}{i}"] for i in range(n)]


def expected(n: int, tag: str = "q") -> list[list[Any]]:
    return [[i, f"echo:{tag}{i}"] for i in range(n)]


async def until(condition: Any, what: str) -> None:
    """Let the event loop run until ``condition()`` holds (bounded by iterations, not by a clock)."""
    for _ in range(10_000):
        if condition():
            return
        await asyncio.sleep(0.001)
    raise AssertionError(f"never happened: {what}")


def metric(app: Any, name: str, **labels: str) -> float:
    value = app.state.metrics.registry.get_sample_value(name, labels or None)
    return 0.0 if value is None else value


# -- holding instead of 429 -----------------------------------------------------------------------------------------


async def test_a_busy_pool_holds_batches_that_the_old_admission_refused() -> None:
    """Ten queries of 8 rows each against 4 engine places: the old rule (before any rate: 4 x 4 = 16 rows) refused
    most of them with 429; holding admits them all, and every row comes back in order."""

    async def load(admission: str) -> tuple[list[httpx.Response], Any]:
        async with served(admission=admission, async_responses=False) as (app, client, engine):
            posts = [
                asyncio.ensure_future(
                    client.post("/functions/complete", **batch(*rows(8, f"b{k}-"), query_id=f"query-{k}"))
                )
                for k in range(10)
            ]
            await until(
                lambda: sum(p.done() for p in posts) + app.state.runtime.scheduler.queued_rows // 8 >= 10,
                "every batch was admitted or refused",
            )
            engine.gate.set()
            return list(await asyncio.gather(*posts)), app

    held, app = await load("hold")
    assert [r.status_code for r in held] == [200] * 10
    for k, r in enumerate(held):
        assert r.json()["data"] == expected(8, f"b{k}-")
    assert metric(app, "spcs_llm_refused_batches_total", reason="wait") == 0

    refused, app = await load("refuse")
    statuses = [r.status_code for r in refused]
    assert statuses.count(200) == 2 and statuses.count(429) == 8  # 16 rows admitted, the rest refused
    assert metric(app, "spcs_llm_refused_batches_total", reason="wait") == 8


async def test_only_what_cannot_fit_in_memory_gets_429() -> None:
    async with served(max_queue_rows=20, async_responses=False) as (app, client, engine):
        first = asyncio.ensure_future(client.post("/functions/complete", **batch(*rows(12))))
        await until(lambda: app.state.runtime.scheduler.queued_rows == 12, "the first batch is held")
        refused = await client.post("/functions/complete", **batch(*rows(12)))
        assert refused.status_code == 429 and refused.text == "too many requests"
        assert metric(app, "spcs_llm_refused_batches_total", reason="rows") == 1
        engine.gate.set()
        assert (await first).status_code == 200


def test_the_byte_bound_and_the_batch_timeout_bound_admission() -> None:
    now = [0.0]
    sched = Scheduler(
        FakeEngine(),
        Metrics(),
        max_queue_rows=10**6,
        max_queue_bytes=1000,
        max_queue_seconds=1800,
        cold_limit=False,
        clock=lambda: now[0],
    )
    with sched.admit(5000, nbytes=600):  # no rate yet: only rows and bytes bound the queue
        with pytest.raises(Overloaded):
            with sched.admit(1, nbytes=500):
                pass
        assert sched.refusal(1, nbytes=400) is None
    assert sched.queued_bytes == 0
    sched = Scheduler(
        FakeEngine(), Metrics(), max_queue_rows=10**6, max_queue_seconds=1800, cold_limit=False, clock=lambda: now[0]
    )
    with sched.admit(10) as row_done:
        now[0] = 1.0
        for _ in range(10):
            row_done()  # 10 rows/s
    with sched.admit(17_000):  # 1,700 s of work at 10 rows/s, held: under half of a 3600 s BATCH_TIMEOUT_SECS
        assert sched.refusal(1000) is None  # 1,800 s: still fits
        assert sched.refusal(1001) == "wait"  # beyond half the batch timeout: it could not finish in time
    assert sched.metrics.refused_batches.labels("wait")._value.get() == 0  # refusal() only asks


def test_a_query_refused_for_room_gets_the_room_that_frees_up() -> None:
    """Starvation at the memory bound: while a refused query's retry is due, others keep to an even share."""
    sched = Scheduler(FakeEngine(), Metrics(), max_queue_rows=10, cold_limit=False)

    def admit(query: str, rows: int) -> contextlib.AbstractContextManager[Any]:
        query_key.set(query)
        return sched.admit(rows)

    def scenario() -> None:  # in a context of its own: query_key must not leak into other tests
        with admit("big", 5):
            with admit("big", 5):
                with pytest.raises(Overloaded):
                    with admit("small", 4):  # no room: "small" is owed room
                        pass
            with pytest.raises(Overloaded):
                with admit("big", 5):  # room for it, but "big" already holds its share while "small" waits
                    pass
            with admit("small", 4):  # the retry finds the room
                with admit("big", 1):  # nobody is owed room now
                    assert sched.queued_rows == 10

    contextvars.copy_context().run(scenario)
    assert sched.metrics.refused_batches.labels("rows")._value.get() == 1
    assert sched.metrics.refused_batches.labels("share")._value.get() == 1
    assert sched._held == {} and sched._owed == {}


# -- the asynchronous protocol --------------------------------------------------------------------------------------


async def test_a_long_batch_is_answered_202_and_its_answer_comes_on_the_polling_get() -> None:
    async with served(async_after_secs=0.01) as (app, client, engine):
        headers = batch(*rows(6), batch_id="b-async", query_id="query-a")
        accepted = await client.post("/functions/complete", **headers)
        assert accepted.status_code == 202 and accepted.content == b""
        pending = await client.get("/functions/complete", headers=headers["headers"])
        assert pending.status_code == 202
        assert metric(app, "spcs_llm_async_held") == 1
        engine.gate.set()
        await until(lambda: app.state.batches.get("b-async").body is not None, "the batch is computed")
        ready = await client.get("/functions/complete", headers=headers["headers"])
        assert ready.status_code == 200 and ready.json()["data"] == expected(6)
        assert metric(app, "spcs_llm_async_accepted_total") == 1
        assert metric(app, "spcs_llm_async_polls_total", outcome="pending") == 1
        assert metric(app, "spcs_llm_async_polls_total", outcome="ready") == 1
        assert metric(app, "spcs_llm_batches_total", function="complete", status="202") == 2
        assert metric(app, "spcs_llm_async_held") == 0
        assert metric(app, "spcs_llm_queue_wait_seconds_count") == 1
        assert engine.entered == 6


async def test_a_get_for_an_unknown_batch_id_makes_snowflake_resend_the_batch() -> None:
    async with served(async_after_secs=0.01) as (app, client, engine):
        unknown = await client.get("/functions/complete", headers=sf_headers("never-sent"))
        assert unknown.status_code == 404  # a status Snowflake retries: it re-sends the batch, never waits for ever
        assert "unknown or expired batch id" in unknown.text
        assert metric(app, "spcs_llm_async_polls_total", outcome="unknown") == 1
    async with served(async_after_secs=0.01, async_unknown_status=503) as (app, client, engine):
        assert (await client.get("/functions/complete", headers=sf_headers("never-sent"))).status_code == 503


async def test_a_get_for_an_expired_batch_id_is_unknown_and_a_resent_batch_is_answered() -> None:
    async with served(async_after_secs=0.01) as (app, client, engine):
        headers = batch(*rows(3), batch_id="b-expired")
        assert (await client.post("/functions/complete", **headers)).status_code == 202
        engine.gate.set()
        await until(lambda: app.state.batches.get("b-expired").body is not None, "the batch is computed")
        app.state.async_batches.keep_s = 0  # the answer waited longer than it is kept
        expired = await client.get("/functions/complete", headers=headers["headers"])
        assert expired.status_code == 404 and app.state.batches.get("b-expired") is None
        app.state.async_batches.keep_s = 600
        resent = await client.post("/functions/complete", **headers)  # Snowflake's retry: the batch again
        assert resent.status_code == 200 and resent.json()["data"] == expected(3)


async def test_a_get_names_the_function_of_its_batch() -> None:
    async with served(async_after_secs=0.01) as (app, client, engine):
        headers = batch(*rows(2), batch_id="b-fn")
        assert (await client.post("/functions/complete", **headers)).status_code == 202
        assert (await client.get("/functions/summarize", headers=headers["headers"])).status_code == 404
        engine.gate.set()


async def test_a_retried_post_of_a_held_batch_does_no_double_work() -> None:
    async with served(async_after_secs=0.01) as (app, client, engine):
        headers = batch(*rows(6), batch_id="b-retry", query_id="query-r")
        assert (await client.post("/functions/complete", **headers)).status_code == 202
        await until(lambda: engine.entered == 4, "the engine's places are taken")
        again = await client.post("/functions/complete", **headers)  # Snowflake gave up waiting and re-sent it
        assert again.status_code == 202
        assert app.state.runtime.scheduler.queued_rows == 6  # held once, not twice
        engine.gate.set()
        await until(lambda: app.state.batches.get("b-retry").body is not None, "the batch is computed")
        third = await client.post("/functions/complete", **headers)
        assert third.status_code == 200 and third.json()["data"] == expected(6)
        assert engine.entered == 6 and len(engine.calls) == 6


async def test_concurrent_synchronous_retries_of_a_held_batch_share_one_computation() -> None:
    async with served(async_responses=False) as (app, client, engine):
        headers = batch(*rows(5), batch_id="b-sync")
        posts = [asyncio.ensure_future(client.post("/functions/complete", **headers)) for _ in range(3)]
        await until(lambda: engine.entered == 4, "the engine's places are taken")
        engine.gate.set()
        answers = await asyncio.gather(*posts)
        assert {r.status_code for r in answers} == {200}
        assert all(r.json()["data"] == expected(5) for r in answers)
        assert len(engine.calls) == 5


async def test_an_abandoned_query_releases_its_memory() -> None:
    async with served(async_after_secs=0.01) as (app, client, engine):
        sched = app.state.runtime.scheduler
        headers = batch(*rows(10), batch_id="b-gone", query_id="query-aborted")
        assert (await client.post("/functions/complete", **headers)).status_code == 202
        assert sched.queued_rows == 10 and sched.queued_bytes == len(headers["content"])
        assert app.state.async_batches.sweep() == 0  # recently answered 202: kept
        app.state.async_batches.keep_s = 0  # no GET came for longer than batches are kept
        assert app.state.async_batches.sweep() == 1
        await until(lambda: sched.queued_rows == 0, "the held rows leave the queue")
        assert sched.queued_bytes == 0 and app.state.batches.get("b-gone") is None
        assert sched._slots.free == sched.max_concurrency and sched._slots.waiting == 0
        assert metric(app, "spcs_llm_async_abandoned_total") == 1
        assert (await client.get("/functions/complete", headers=headers["headers"])).status_code == 404
        engine.gate.set()
        entered = engine.entered
        other = await client.post("/functions/complete", **batch(*rows(2, "next")))
        assert other.status_code == 200 and engine.entered == entered + 2  # the abandoned rows never ran


async def test_a_batch_someone_still_waits_on_is_not_abandoned() -> None:
    async with served(async_responses=False) as (app, client, engine):
        post = asyncio.ensure_future(client.post("/functions/complete", **batch(*rows(3), batch_id="b-wait")))
        await until(lambda: engine.entered == 3, "the batch runs")
        app.state.async_batches.keep_s = 0
        assert app.state.async_batches.sweep() == 0  # its POST is still open
        engine.gate.set()
        assert (await post).status_code == 200


# -- observability --------------------------------------------------------------------------------------------------


async def test_the_batch_log_line_says_how_long_it_waited(caplog: pytest.LogCaptureFixture) -> None:
    async with served(async_responses=False) as (app, client, engine):
        engine.gate.set()
        with caplog.at_level(logging.INFO, logger="spcs_llm"):
            assert (await client.post("/functions/complete", **batch(*rows(2)))).status_code == 200
        lines = [r for r in caplog.records if r.getMessage() == "batch"]
        assert lines and "wait_ms" in lines[-1].fields and lines[-1].fields["wait_ms"] >= 0
        text = (await client.get("/metrics")).text
        for name in (
            "spcs_llm_queue_wait_seconds_bucket",
            "spcs_llm_queue_depth",
            "spcs_llm_queue_bytes",
            "spcs_llm_async_held",
        ):
            assert name in text


# -- MAX_BATCH_RETRIES ----------------------------------------------------------------------------------------------


def test_max_batch_retries_follow_from_the_batch_timeout() -> None:
    from spcs_llm.overload import backoff_seconds, max_batch_retries_for

    assert max_batch_retries_for(3600) == 10  # what the deploy renders by default
    shortest, longest = backoff_seconds(10)
    assert (shortest, longest) == (511.5, 1023.0)
    assert longest + 3600 / 2 <= 3600 < backoff_seconds(11)[1] + 3600 / 2  # the largest count that still fits
    assert max_batch_retries_for(60) >= 3  # never below Snowflake's default


def test_answers_a_polling_get_still_needs_are_evicted_last() -> None:
    from spcs_llm.server.batches import BatchMemory

    memory = BatchMemory(Metrics(), max_bytes=1000, max_batches=100)

    async def fill() -> None:
        for i in range(3):
            await memory.answer(f"b-{i}", "complete", b"{}", lambda done, i=i: _body(i, 300))
        memory.get("b-0").awaiting_get = True  # answered 202: its GET has not come yet
        await memory.answer("b-3", "complete", b"{}", lambda done: _body(3, 300))
        await memory.answer("b-4", "complete", b"{}", lambda done: _body(4, 300))

    asyncio.run(fill())
    assert sorted(k for k, _ in memory.items()) == ["b-0", "b-3", "b-4"] and memory.bytes <= 1000


async def _body(i: int, size: int) -> bytes:
    return str(i).encode() * size
