"""Turns many row calls into engine requests: bounded fan-out, dedup of identical requests, admission control.

- Every admitted row's request goes to the engine as soon as one of ``max_concurrency`` places is free; all
  concurrent batches share the same bound, so the engine's batch stays full without being flooded.
- Identical deterministic requests (temperature 0) in flight at the same time are computed once, within a
  batch and across batches.
- Embeddings: texts that rows ask for while the embedder is busy are sent together as one call, so a batch of
  rows costs one forward pass per ``embed_batch`` texts, not one per row.
- Admission: a batch whose rows would push the queue past ``max_queue_rows`` is refused with 429 before any
  of its rows starts, so an accepted batch is never dropped half-way.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager

from .engines.base import ChatRequest, ChatResult, Embedder, Engine, StreamDelta
from .errors import EngineUnavailable, Overloaded
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
        self._embed_batchers: dict[int, _EmbedBatcher] = {}
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

    async def count_tokens(self, text: str) -> int:
        """Tokens in ``text`` with the served chat model's tokenizer."""
        return await self.engine.count_tokens(text)

    async def embed(self, embedder: Embedder, text: str) -> list[float]:
        """``text``'s vector; concurrent calls for one embedder are batched into one forward pass."""
        batcher = self._embed_batchers.get(id(embedder))
        if batcher is None:
            batcher = self._embed_batchers[id(embedder)] = _EmbedBatcher(embedder, self.metrics)
        return await batcher.embed(text)

    def _count_tokens(self, prompt: int, completion: int) -> None:
        self.metrics.tokens.labels("in").inc(prompt)
        self.metrics.tokens.labels("out").inc(completion)


class _EmbedBatcher:
    """Collects the texts asked for while a forward pass runs, and embeds them together in the next one.

    No timer: the first text starts a pass at once; texts that arrive meanwhile wait for it to finish and go
    in the next pass (up to ``max_batch`` texts each). Equal texts in a pass are computed once.
    """

    def __init__(self, embedder: Embedder, metrics: Metrics, max_batch: int = 64) -> None:
        self.embedder, self.metrics, self.max_batch = embedder, metrics, max_batch
        self._pending: dict[str, asyncio.Future[list[float]]] = {}
        self._runner: asyncio.Task[None] | None = None

    async def embed(self, text: str) -> list[float]:
        future = self._pending.get(text)
        if future is None:
            future = self._pending[text] = asyncio.get_running_loop().create_future()
            if self._runner is None or self._runner.done():
                self._runner = asyncio.ensure_future(self._run())
        else:
            self.metrics.dedup_hits.inc()
        return await asyncio.shield(future)

    async def _run(self) -> None:
        while self._pending:
            texts = list(self._pending)[: self.max_batch]
            futures = [self._pending.pop(t) for t in texts]
            self.metrics.engine_requests.inc()
            self.metrics.in_flight.inc()
            start = time.perf_counter()
            try:
                vectors = await self.embedder.embed(texts)
                if len(vectors) != len(texts):
                    raise EngineUnavailable(f"{self.embedder.model_name} returned {len(vectors)} vectors "
                                            f"for {len(texts)} texts")
            except Exception as exc:  # every waiter of this pass gets the failure
                for f in futures:
                    if not f.done():
                        f.set_exception(exc)
                continue
            finally:
                self.metrics.engine_latency.observe(time.perf_counter() - start)
                self.metrics.in_flight.dec()
            for f, vector in zip(futures, vectors, strict=True):
                if not f.done():
                    f.set_result(vector)
