"""Turns many row calls into engine requests: bounded fan-out, dedup of identical requests, admission control.

- Every admitted row's request goes to the engine as soon as one of ``max_concurrency`` places is free; all
  concurrent batches share the same bound, so the engine's batch stays full without being flooded.
- Identical deterministic requests (temperature 0) in flight at the same time are computed once, within a
  batch and across batches.
- Admission: a batch whose rows would push the queue past ``max_queue_rows`` is refused with 429 before any
  of its rows starts, so an accepted batch is never dropped half-way.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager

from .engines.base import ChatRequest, ChatResult, Engine, StreamDelta
from .errors import Overloaded
from .metrics import Metrics


class Scheduler:
    def __init__(self, engine: Engine, metrics: Metrics, *, max_concurrency: int | None = None,
                 max_queue_rows: int = 20_000) -> None:
        self.engine = engine
        self.metrics = metrics
        self.max_concurrency = max_concurrency or engine.max_concurrency
        self.max_queue_rows = max_queue_rows
        self._slots = asyncio.Semaphore(self.max_concurrency)
        self._in_flight: dict[ChatRequest, asyncio.Task[ChatResult]] = {}
        self.queued_rows = 0

    @contextmanager
    def admit(self, rows: int) -> Iterator[None]:
        """Reserve room for ``rows`` rows for the duration of the block, or raise Overloaded (429) now."""
        # An empty queue admits any batch, however large: it could never be admitted later either.
        if self.queued_rows + rows > self.max_queue_rows and self.queued_rows > 0:
            raise Overloaded()
        self.queued_rows += rows
        self.metrics.queue_depth.set(self.queued_rows)
        try:
            yield
        finally:
            self.queued_rows -= rows
            self.metrics.queue_depth.set(self.queued_rows)

    async def chat(self, request: ChatRequest) -> ChatResult:
        """The engine's answer to ``request``; identical deterministic requests in flight share one call."""
        if not request.deterministic:
            return await self._run(request)
        task = self._in_flight.get(request)
        if task is None:
            task = asyncio.ensure_future(self._run(request))
            self._in_flight[request] = task
            task.add_done_callback(lambda _t: self._in_flight.pop(request, None))
        else:
            self.metrics.dedup_hits.inc()
        # shield: one waiter giving up (a cancelled batch) must not cancel the call others are waiting on
        return await asyncio.shield(task)

    async def _run(self, request: ChatRequest) -> ChatResult:
        async with self._slots:
            self.metrics.in_flight.inc()
            self.metrics.engine_requests.inc()
            start = time.perf_counter()
            try:
                result = await self.engine.chat(request)
            finally:
                self.metrics.engine_latency.observe(time.perf_counter() - start)
                self.metrics.in_flight.dec()
        self._count_tokens(result.usage.prompt_tokens, result.usage.completion_tokens)
        return result

    async def stream(self, request: ChatRequest) -> AsyncIterator[StreamDelta]:
        """Stream one answer, holding one of the engine places for the whole stream."""
        async with self._slots:
            self.metrics.in_flight.inc()
            self.metrics.engine_requests.inc()
            try:
                async for delta in self.engine.chat_stream(request):
                    if delta.usage is not None:
                        self._count_tokens(delta.usage.prompt_tokens, delta.usage.completion_tokens)
                    yield delta
            finally:
                self.metrics.in_flight.dec()

    def _count_tokens(self, prompt: int, completion: int) -> None:
        self.metrics.tokens.labels("in").inc(prompt)
        self.metrics.tokens.labels("out").inc(completion)
