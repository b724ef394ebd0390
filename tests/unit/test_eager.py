"""Rows run in the caller's task until one waits, and each waiting row goes on in a task of its own
(spcs_llm/eager.py): the concurrency of one task per row, one task for a row's whole life, and no task for a row
that never waits."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Coroutine, Iterator
from typing import Any

import anyio
import pytest

from spcs_llm.eager import run_all
from spcs_llm.engines.base import ChatRequest, Message
from spcs_llm.engines.fake import FakeEngine
from spcs_llm.metrics import Metrics
from spcs_llm.scheduler import Scheduler


async def test_rows_that_never_wait_run_one_after_another_in_one_task() -> None:
    ran: list[tuple[int, asyncio.Task[object] | None, int]] = []

    async def row(i: int) -> None:
        ran.append((i, asyncio.current_task(), len(asyncio.all_tasks())))

    tasks_before = len(asyncio.all_tasks())
    await run_all(map(row, range(5)))
    assert [i for i, _, _ in ran] == list(range(5))
    assert len({task for _, task, _ in ran}) == 1 and ran[0][1] is not asyncio.current_task()
    assert {count for _, _, count in ran} == {tasks_before + 1}  # one task for the five, not one each


async def test_rows_that_wait_run_concurrently_each_in_one_task_from_start_to_end() -> None:
    """Row 0 waits for row 2 to begin: with rows run one after another it would never finish. Each row sees
    the same task before and after its wait (an anyio cancel scope, which httpx's pool enters, demands it)."""
    started = [asyncio.Event() for _ in range(4)]
    order, tasks = [], {}

    async def row(i: int) -> None:
        order.append(i)
        started[i].set()
        with anyio.CancelScope():  # exiting it in another task than it was entered in raises RuntimeError
            before = asyncio.current_task()
            if i == 0:
                await started[2].wait()
            elif i == 2:
                await asyncio.sleep(0)  # a bare yield, not a future
            after = asyncio.current_task()
        tasks[i] = (before, after)

    await run_all(map(row, range(4)))
    assert order == [0, 1, 2, 3]  # started in the order given
    assert all(before is after for before, after in tasks.values())
    assert tasks[0][0] is not tasks[2][0]  # each waiting row had a task of its own


@pytest.mark.parametrize("early", [True, False])
async def test_cancelling_the_caller_cancels_every_waiting_row_where_it_waits(early: bool) -> None:
    started: list[int] = []
    cancelled: list[int] = []

    async def row(i: int) -> None:
        started.append(i)
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.append(i)
            raise

    runner = asyncio.ensure_future(run_all(map(row, range(3))))
    await asyncio.sleep(0 if early else 0.01)  # early: not every row has started yet (those never will)
    runner.cancel()
    with pytest.raises(asyncio.CancelledError):
        await runner
    await asyncio.sleep(0)  # the row tasks finish their cancellation
    assert started and sorted(cancelled) == started
    assert early or started == [0, 1, 2]


async def test_an_error_in_a_row_cancels_the_others_and_is_raised() -> None:
    cancelled: list[int] = []

    async def row(i: int) -> None:
        if i == 2:
            await asyncio.sleep(0.01)
            raise ValueError("a bug in row 2")
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.append(i)
            raise

    with pytest.raises(ValueError, match="a bug in row 2"):
        await run_all(map(row, range(4)))
    await asyncio.sleep(0)
    assert sorted(cancelled) == [0, 1, 3]


async def test_a_row_cancelled_while_it_runs_a_shared_call_leaves_no_flight_behind() -> None:
    """The scheduler's shared calls rely on the row seeing its cancellation (it clears its flight)."""
    engine = FakeEngine(delay=0.05)
    scheduler = Scheduler(engine, Metrics())
    request = ChatRequest((Message("user", "hello"),), max_tokens=4)

    async def row(_: int) -> None:
        await scheduler.chat(request)

    runner = asyncio.ensure_future(run_all(map(row, range(2))))  # the second row shares the first one's call
    await asyncio.sleep(0.01)
    assert len(scheduler._in_flight) == 1
    runner.cancel()
    with pytest.raises(asyncio.CancelledError):
        await runner
    assert scheduler._in_flight == {}
    assert (await scheduler.chat(request)).text and len(engine.calls) == 2


@pytest.mark.parametrize("waits", [False, True])
async def test_a_finished_run_leaves_no_cycle_for_the_garbage_collector(waits: bool) -> None:
    """A closure that makes a task of itself is a reference cycle: it kept a whole batch's requests and answers
    alive until a young collection found them (53,000 objects a collection in bench_gateway, 8-40 ms pauses)."""

    class Payload:  # stands for a row's request and answer
        pass

    def rows(n: int) -> Iterator[Coroutine[Any, Any, None]]:
        payloads = [Payload() for _ in range(n)]  # reachable only through the rows, as a batch's jobs are

        async def row(i: int) -> None:
            assert isinstance(payloads[i], Payload)
            if waits and i % 2:
                await asyncio.sleep(0)

        return map(row, range(n))

    await run_all(rows(10))  # asyncio's own first-use objects are made outside the measured run
    gc.collect()
    gc.disable()
    try:
        await run_all(rows(100))
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        kinds = {type(o).__name__ for o in gc.garbage}
        assert not any(isinstance(o, Payload) for o in gc.garbage), kinds
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
