"""Run many coroutines concurrently with a task only for each one that has to wait.

A batch's rows are one coroutine each. On a cached answer, a fake engine or a label step that needs no engine
call, a row finishes without ever waiting, and the task that ``asyncio.gather`` would make for it (its creation,
its scheduling, its done callback: ~4 µs) costs a large part of the row's own work. :func:`run_all` runs the
rows one after another in one task, each until it finishes or first waits. When one waits, a new task takes
over the rows not started yet, and the task that started the waiting row goes on with that row alone, so every
waiting row still has a task of its own (the concurrency of one task per row) and a row that never waits costs
no task of its own.

A row always runs in one task from its start to its end, so what depends on the current task (anyio's cancel
scopes, which httpx's connection pool enters; ``asyncio.current_task``) sees one task, as in a task of its own.
Python 3.12's eager tasks do the same for one coroutine, but make the task first; the project supports 3.11.
The rows that one task runs share its context (a row that set a context variable would set it for the rows after
it in that task; rows here only read the batch's).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Generator, Iterator
from typing import Any


async def run_all(coros: Iterator[Coroutine[Any, Any, None]]) -> None:
    """Run every coroutine ``coros`` gives (made as it is taken), started in order, concurrently where they
    wait; return when all have finished. The first exception from one (a bug: rows turn their errors into
    outcomes) is raised as soon as it happens, and a cancellation of the caller is; either way the ones still
    running are cancelled first."""
    rows = _Rows(coros)
    rows.spawn()
    try:
        await rows.outcome
    except BaseException:
        for task in rows.tasks:
            task.cancel()
        raise


class _Rows:
    """The state of one :func:`run_all`. A class, not closures: a closure that makes a task of itself is a
    reference cycle, which would keep the whole batch (its rows' requests and answers) alive until the garbage
    collector finds it, and fill the young generation with it."""

    __slots__ = ("coros", "loop", "outcome", "running", "tasks")

    def __init__(self, coros: Iterator[Coroutine[Any, Any, None]]) -> None:
        self.coros = coros
        self.loop = asyncio.get_running_loop()
        self.tasks: list[asyncio.Task[None]] = []
        self.running = 0  # tasks not finished: a task makes the next one before it can finish, so 0: all done
        self.outcome: asyncio.Future[None] = self.loop.create_future()

    async def take(self) -> None:
        for coro in self.coros:
            try:
                waits_on = coro.send(None)
            except StopIteration:
                continue  # finished without waiting: the next one, in this task
            self.spawn()  # the rest go on in a new task while this one waits (made before this one can finish)
            await _Resume(coro, waits_on)
            return

    def spawn(self) -> None:
        task = self.loop.create_task(self.take())
        self.tasks.append(task)
        self.running += 1
        task.add_done_callback(self.finished)

    def finished(self, task: asyncio.Task[None]) -> None:
        self.running -= 1
        error = None if task.cancelled() else task.exception()  # retrieved, whatever happens next
        outcome = self.outcome
        if outcome.done():
            return
        if error is not None:
            outcome.set_exception(error)
        elif task.cancelled():  # cancelled by someone else than run_all: as gather, the whole is cancelled
            outcome.cancel()
        elif self.running == 0:
            outcome.set_result(None)


class _Resume:
    """Awaiting it goes on with ``coro``, which was started by hand and yielded ``waits_on`` (the future it waits
    on, or None for a bare yield): the task gets that first, then every value and exception the task sends or
    throws (a cancellation included) goes to ``coro`` until it returns."""

    __slots__ = ("coro", "waits_on")

    def __init__(self, coro: Coroutine[Any, Any, None], waits_on: Any) -> None:
        self.coro, self.waits_on = coro, waits_on

    def __await__(self) -> Generator[Any, Any, None]:
        coro, yielded = self.coro, self.waits_on
        while True:
            try:
                sent = yield yielded
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:
                try:
                    yielded = coro.throw(exc)
                except StopIteration:
                    return
            else:
                try:
                    yielded = coro.send(sent)
                except StopIteration:
                    return
