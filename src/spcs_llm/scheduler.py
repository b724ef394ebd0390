"""Turns many row calls into engine requests: a full engine batch, fair across queries, nothing computed twice.

- **Bounded fan-out.** Every admitted row's request goes to the engine as soon as one of ``max_concurrency``
  places is free; all concurrent batches share that bound, so the engine's batch stays full without flooding it.
- **Fairness.** Requests waiting for a place queue per query (:data:`query_key`, the Snowflake query id), and a
  freed place goes to the queries in turn, so a 10-row query never waits behind all of a 100k-row one.
- **Computed once.** Identical deterministic requests (temperature 0) in flight at the same time share one engine
  call, within a batch and across batches; finished ones are kept in a bounded LRU result cache (the key is the
  whole request: the function's instruction and the row's arguments are its messages; options and sampling are
  its fields; the model is this scheduler's engine). Sampled requests are never shared or cached. A shared call
  runs in the first caller's own task (a task per row would cost more than the rest of the gateway); if that
  caller is cancelled, a waiter runs the request again.
- **Embeddings.** Texts that rows ask for while the embedder is busy are sent together as one call, so a batch
  costs one forward pass per ``embed_batch`` texts, not one per row; vectors are cached like chat results.
- **Admission.** A batch is refused with 429 before any of its rows starts when the queue would hold more than
  ``max_queue_rows`` rows or take longer than ``max_queue_seconds`` to drain at the measured row rate (before
  any row has finished: more than four times ``max_concurrency`` rows), so an accepted batch is never dropped
  half-way and a refused one is retried by Snowflake after a back-off.
"""

from __future__ import annotations

import asyncio
import contextvars
import sys
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable, Hashable, Iterator
from contextlib import contextmanager
from typing import Any

from .engines.base import ChatRequest, ChatResult, Embedder, Engine, StreamDelta, Usage
from .engines.labels import LabelScores, ScoreRequest
from .errors import EngineUnavailable, Overloaded
from .metrics import Metrics

# Whose turn a request waits in: set to the Snowflake query id for the rows of a batch. Unset (OpenAI calls,
# direct use), every call is a query of its own.
query_key: contextvars.ContextVar[Hashable | None] = contextvars.ContextVar("query_key", default=None)


class FairSlots:
    """``n`` engine places, handed out in turn across queries: a freed place goes to the query at the head of
    the rotation, which then moves to the back. Within one query, requests go first come first served."""

    def __init__(self, n: int) -> None:
        self.free = n
        self._waiting: OrderedDict[Hashable, deque[asyncio.Future[None]]] = OrderedDict()

    @property
    def waiting(self) -> int:
        return sum(len(q) for q in self._waiting.values())

    async def acquire(self, key: Hashable | None) -> None:
        """Wait for a place in ``key``'s turn (None: a turn of its own)."""
        if self.free > 0 and not self._waiting:
            self.free -= 1
            return
        if key is None:
            key = object()
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(key, deque()).append(future)
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release()  # the place was handed to us as we were cancelled: pass it on
            else:
                queue = self._waiting.get(key)
                if queue is not None and future in queue:
                    queue.remove(future)
                    if not queue:
                        del self._waiting[key]
            raise

    def release(self) -> None:
        while self._waiting:
            key, queue = next(iter(self._waiting.items()))
            future = queue.popleft()
            if queue:
                self._waiting.move_to_end(key)
            else:
                del self._waiting[key]
            if not future.done():
                future.set_result(None)
                return
        self.free += 1


class ResultCache:
    """Finished deterministic answers, least recently used first out, bounded by an estimate of their bytes."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._items: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: Hashable) -> Any | None:
        item = self._items.get(key)
        if item is None:
            return None
        self._items.move_to_end(key)
        return item[0]

    def put(self, key: Hashable, value: Any, size: int) -> None:
        if size > self.max_bytes:
            return
        old = self._items.pop(key, None)
        if old is not None:
            self.bytes -= old[1]
        self._items[key] = (value, size)
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, (_, evicted) = self._items.popitem(last=False)
            self.bytes -= evicted


def _chat_size(request: ChatRequest, result: ChatResult) -> int:
    """Rough bytes held by a cached answer: its texts plus a fixed cost per object."""
    text = sum(len(m.content) for m in request.messages) + len(request.json_schema or "") + len(result.text)
    return 2 * text + 200 * (len(request.messages) + len(result.logprobs) + 2)


class RowRate:
    """Rows finished per second while the queue is busy, averaged with a half-life of ``half_life_s`` of busy
    time. Idle time does not count: it says what the engine can do, not how busy users are."""

    def __init__(self, half_life_s: float = 30.0) -> None:
        self.half_life_s = half_life_s
        self._rows = 0.0
        self._seconds = 0.0

    def add(self, rows: int, busy_seconds: float) -> None:
        decay = 0.5 ** (busy_seconds / self.half_life_s)
        self._rows = self._rows * decay + rows
        self._seconds = self._seconds * decay + busy_seconds

    @property
    def per_second(self) -> float | None:
        """None until something has been measured."""
        if self._rows <= 0 or self._seconds <= 0:
            return None
        return self._rows / self._seconds


class Scheduler:
    def __init__(self, engine: Engine, metrics: Metrics, *, max_concurrency: int | None = None,
                 max_queue_rows: int = 20_000, max_queue_seconds: float | None = None,
                 cache_bytes: int = 256 * 2**20, clock: Callable[[], float] = time.monotonic) -> None:
        self.engine = engine
        self.metrics = metrics
        self.max_concurrency = max_concurrency or engine.max_concurrency
        self.max_queue_rows = max_queue_rows
        self.max_queue_seconds = max_queue_seconds
        self.cold_queue_rows = 4 * self.max_concurrency  # the time limit's stand-in until a rate is measured
        self.cache = ResultCache(cache_bytes)
        self.rate = RowRate()
        self._clock = clock
        self._slots = FairSlots(self.max_concurrency)
        self._in_flight: dict[ChatRequest, asyncio.Future[ChatResult]] = {}
        self._scoring: dict[ScoreRequest, asyncio.Future[LabelScores | None]] = {}
        self._embed_batchers: dict[int, _EmbedBatcher] = {}
        self.queued_rows = 0
        self.engine_in_flight = 0
        self._unaccounted_rows = 0  # finished since the rate was last fed
        self._busy_since = 0.0
        # Gauges read these plain numbers when /metrics is scraped instead of being set on every row.
        metrics.queue_depth.set_function(lambda: self.queued_rows)
        metrics.in_flight.set_function(lambda: self.engine_in_flight)
        metrics.cache_bytes.set_function(lambda: self.cache.bytes)
        self._tokens_in, self._tokens_out = metrics.tokens.labels("in"), metrics.tokens.labels("out")
        self._chat_hits, self._embed_hits = metrics.cache_hits.labels("chat"), metrics.cache_hits.labels("embed")

    # -- admission --------------------------------------------------------------------------------------------

    def drain_seconds(self, extra_rows: int = 0) -> float | None:
        """How long the admitted rows plus ``extra_rows`` would take at the measured rate (None: not measured)."""
        self._feed_rate()
        rate = self.rate.per_second
        return None if rate is None else (self.queued_rows + extra_rows) / rate

    @contextmanager
    def admit(self, rows: int) -> Iterator[Callable[[], None]]:
        """Reserve room for ``rows`` rows for the duration of the block, or raise Overloaded (429) now.

        The block gets a function to call as each row finishes, so the queue and the measured rate follow rows
        as they finish; rows not reported are counted as finished when the block ends."""
        # An empty queue admits any batch, however large: it could never be admitted later either.
        if self.queued_rows > 0:
            too_slow = False
            if self.max_queue_seconds is not None:
                drain = self.drain_seconds(rows)
                # Before any row has finished there is no rate: hold a few engine-fulls, not a flood that could
                # never finish in time (every batch of a query's first burst arrives at once).
                too_slow = (self.queued_rows + rows > self.cold_queue_rows if drain is None
                            else drain > self.max_queue_seconds)
            if self.queued_rows + rows > self.max_queue_rows or too_slow:
                self.metrics.rejected_rows.inc(rows)
                raise Overloaded()
        self._feed_rate()
        self.queued_rows += rows
        remaining = rows

        def row_done() -> None:  # once per row: keep it to a few additions
            nonlocal remaining
            if remaining > 0:
                remaining -= 1
                self.queued_rows -= 1
                self._unaccounted_rows += 1

        try:
            yield row_done
        finally:
            self._unaccounted_rows += remaining
            self._feed_rate()
            self.queued_rows -= remaining

    def _feed_rate(self) -> None:
        """Give the rate the rows finished since the last call and the time since then, if the queue was busy
        meanwhile (the queue only empties at the end of an admitted block, which calls this; idle time is skipped)."""
        now = self._clock()
        if self.queued_rows > 0 or self._unaccounted_rows:
            self.rate.add(self._unaccounted_rows, now - self._busy_since)
        self._unaccounted_rows = 0
        self._busy_since = now

    # -- chat ---------------------------------------------------------------------------------------------------

    async def chat(self, request: ChatRequest) -> ChatResult:
        """The engine's answer to ``request``. Deterministic requests come from the cache, or share a call
        with an identical request in flight, before they cost a new engine call."""
        if not request.deterministic:
            return await self._run(request)
        while True:
            cached = self.cache.get(request)
            if cached is not None:
                self._chat_hits.inc()
                return cached
            shared = self._in_flight.get(request)
            if shared is None:
                return await self._run_shared(request)
            self.metrics.dedup_hits.inc()
            try:
                # shield: this waiter giving up (a cancelled batch) must not cancel the call others wait on
                return await asyncio.shield(shared)
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if not shared.cancelled() or (current is not None and current.cancelling()):
                    raise
                # the caller that ran it was cancelled, not this one: run it here instead

    async def _run_shared(self, request: ChatRequest) -> ChatResult:
        """Run ``request`` in this caller, letting identical requests that arrive meanwhile wait for its answer
        (no task of its own: that would cost more than the engine call itself on a cached or fake engine)."""
        shared: asyncio.Future[ChatResult] = asyncio.get_running_loop().create_future()
        self._in_flight[request] = shared
        try:
            result = await self._run(request)
        except BaseException as exc:
            del self._in_flight[request]
            if isinstance(exc, asyncio.CancelledError):
                shared.cancel()  # waiters run it themselves (see chat)
            else:
                shared.set_exception(exc)
                shared.exception()  # retrieved: nobody may be waiting
            raise
        del self._in_flight[request]
        self.cache.put(request, result, _chat_size(request, result))
        shared.set_result(result)
        return result

    async def _run(self, request: ChatRequest) -> ChatResult:
        await self._slots.acquire(query_key.get())
        self.engine_in_flight += 1
        self.metrics.engine_requests.inc()
        start = time.perf_counter()
        try:
            result = await self.engine.chat(request)
        finally:
            self.metrics.engine_latency.observe(time.perf_counter() - start)
            self.engine_in_flight -= 1
            self._slots.release()
        self._count_tokens(result.usage)
        return result

    async def score_labels(self, request: ScoreRequest) -> LabelScores | None:
        """The label distribution of ``request`` (engines/labels.py) in one engine place, cached and shared
        like a deterministic chat answer; None when the engine cannot score (the caller generates instead)."""
        cached = self.cache.get(request)
        if cached is not None:
            self._chat_hits.inc()
            return cached  # type: ignore[no-any-return]
        shared = self._scoring.get(request)
        if shared is not None:
            self.metrics.dedup_hits.inc()
            try:
                return await asyncio.shield(shared)
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if not shared.cancelled() or (current is not None and current.cancelling()):
                    raise
                return await self._score(request)  # the caller that ran it was cancelled, not this one
        future: asyncio.Future[LabelScores | None] = asyncio.get_running_loop().create_future()
        self._scoring[request] = future
        try:
            scores = await self._score(request)
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError):
                future.cancel()
            else:
                future.set_exception(exc)
                future.exception()  # retrieved: nobody may be waiting
            raise
        finally:
            del self._scoring[request]
        future.set_result(scores)
        if scores is not None:
            self.cache.put(request, scores, 200 + 2 * sum(len(m.content) for m in request.messages)
                           + 100 * len(request.labels))
        return scores

    async def _score(self, request: ScoreRequest) -> LabelScores | None:
        await self._slots.acquire(query_key.get())
        self.engine_in_flight += 1
        start = time.perf_counter()
        try:
            scores = await self.engine.score_labels(request)
        finally:
            self.engine_in_flight -= 1
            self._slots.release()
        if scores is not None:
            self.metrics.engine_requests.inc(scores.steps)
            self.metrics.engine_latency.observe(time.perf_counter() - start)
            self._count_tokens(scores.usage)
        return scores

    async def stream(self, request: ChatRequest) -> AsyncIterator[StreamDelta]:
        """Stream one answer, holding one of the engine places for the whole stream."""
        await self._slots.acquire(query_key.get())
        self.engine_in_flight += 1
        self.metrics.engine_requests.inc()
        try:
            async for delta in self.engine.chat_stream(request):
                if delta.usage is not None:
                    self._count_tokens(delta.usage)
                yield delta
        finally:
            self.engine_in_flight -= 1
            self._slots.release()

    async def count_tokens(self, text: str) -> int:
        """Tokens in ``text`` with the served chat model's tokenizer."""
        return await self.engine.count_tokens(text)

    def _count_tokens(self, usage: Usage) -> None:
        self._tokens_in.inc(usage.prompt_tokens)
        self._tokens_out.inc(usage.completion_tokens)
        if usage.cached_tokens:
            self.metrics.prompt_tokens_cached.inc(usage.cached_tokens)

    # -- embeddings ---------------------------------------------------------------------------------------------

    async def embed(self, embedder: Embedder, text: str) -> list[float]:
        """``text``'s vector; concurrent calls for one embedder are batched into one forward pass."""
        key = ("embed", embedder.model_name, text)
        cached = self.cache.get(key)
        if cached is not None:
            self._embed_hits.inc()
            return cached
        batcher = self._embed_batchers.get(id(embedder))
        if batcher is None:
            batcher = self._embed_batchers[id(embedder)] = _EmbedBatcher(embedder, self)
        vector = await batcher.embed(text)
        # a list of Python floats costs ~32 bytes a value (the float and its pointer)
        self.cache.put(key, vector, sys.getsizeof(text) + 32 * len(vector) + 64)
        return vector


class _EmbedBatcher:
    """Collects the texts asked for while a forward pass runs, and embeds them together in the next one.

    No timer: the first text starts a pass at once; texts that arrive meanwhile wait for it to finish and go
    in the next pass (up to ``max_batch`` texts each). Equal texts in a pass are computed once.
    """

    def __init__(self, embedder: Embedder, scheduler: Scheduler, max_batch: int = 64) -> None:
        self.embedder, self.scheduler, self.max_batch = embedder, scheduler, max_batch
        self.metrics = scheduler.metrics
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
            self.scheduler.engine_in_flight += 1
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
                self.scheduler.engine_in_flight -= 1
            for f, vector in zip(futures, vectors, strict=True):
                if not f.done():
                    f.set_result(vector)
