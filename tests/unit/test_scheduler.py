"""Fan-out, dedup and admission, asserted on engine call counts and row order (never on time)."""

from __future__ import annotations

import asyncio

import pytest

from spcs_llm.engines import ChatRequest, FakeEngine, Message
from spcs_llm.errors import Overloaded
from spcs_llm.metrics import Metrics
from spcs_llm.scheduler import Scheduler

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
    first.cancel()
    assert (await second).text == "echo:x"
    assert len(engine.calls) == 1


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
