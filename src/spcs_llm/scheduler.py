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
  ``max_queue_rows`` rows or ``max_queue_bytes`` request bytes, or take longer than ``max_queue_seconds`` to
  drain at the measured row rate, so an accepted batch is never dropped half-way. The server sets the time limit
  to half the functions' BATCH_TIMEOUT_SECS (admission = hold: admitted rows wait their turn, held by memory, not
  by a short time limit), or to the old short limit with ``cold_limit`` (admission = refuse: before any row has
  finished, at most four times ``max_concurrency`` rows). Starvation at the memory bound: a query refused for
  room is owed it, and until its batch comes back no other query is admitted beyond an even share of
  ``max_queue_rows``. See docs/overload.md.
- **Queue wait.** A batch's :class:`BatchTicket` (set in :data:`batch_ticket` by the server) records when it was
  admitted and when its first row got an engine place; the wait goes to a histogram and the batch's log line.
"""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import sys
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from .cache_forms import (
    chat_key,
    choice_key,
    pack_choices,
    pack_result,
    pack_scores,
    score_key,
    unpack_choices,
    unpack_result,
    unpack_scores,
)
from .engines.base import ChatRequest, ChatResult, Embedder, Engine, StreamDelta, Usage
from .engines.labels import ChoiceRequest, LabelChoices, LabelScores, ScoreRequest
from .errors import EngineUnavailable, Overloaded
from .metrics import Metrics

if TYPE_CHECKING:
    from .usage.meter import Meter

T = TypeVar("T")
S = TypeVar("S", LabelScores, LabelChoices)  # what a scoring job gives: its steps and their usage

# One text's answer from an embedding pass: its vector, its share of the pass's engine seconds (None for a caller
# that joined an identical text already submitted) and the input tokens the model read.
Embedding = tuple[np.ndarray, float | None, int]

# Whose turn a request waits in: set to the Snowflake query id for the rows of a batch. Unset (OpenAI calls,
# direct use), every call is a query of its own.
query_key: contextvars.ContextVar[Hashable | None] = contextvars.ContextVar("query_key", default=None)


class BatchTicket:
    """A batch's request bytes (counted against ``max_queue_bytes``), when it was admitted and when its first
    row got an engine place (``time.monotonic``)."""

    __slots__ = ("admitted_at", "nbytes", "started_at")

    def __init__(self, nbytes: int = 0) -> None:
        self.nbytes = nbytes
        self.admitted_at: float | None = None
        self.started_at: float | None = None

    @property
    def wait_s(self) -> float | None:
        """Seconds from admission to the first row's start (or until now); None before admission."""
        if self.admitted_at is None:
            return None
        return (self.started_at if self.started_at is not None else time.monotonic()) - self.admitted_at

    def start(self) -> None:
        if self.started_at is None:
            self.started_at = time.monotonic()


# A query refused for room (rows or bytes) is owed room for this long: meanwhile no other query takes more than
# its fair share, so the room that frees up is there when the refused batch comes back (Snowflake's longest
# back-off sleep at MAX_BATCH_RETRIES = 10 is 512 s).
OWED_S = 600.0

# The ticket of the batch whose rows run in this context (None: not a Snowflake batch).
batch_ticket: contextvars.ContextVar[BatchTicket | None] = contextvars.ContextVar("batch_ticket", default=None)


class FairSlots:
    """``n`` engine places, handed out in turn across queries: a freed place goes to the query at the head of
    the rotation, which then moves to the back. Within one query, requests go first come first served."""

    def __init__(self, n: int) -> None:
        self.free = n
        self._waiting: OrderedDict[Hashable, deque[asyncio.Future[None]]] = OrderedDict()

    @property
    def waiting(self) -> int:
        return sum(len(q) for q in self._waiting.values())

    def take(self) -> bool:
        """A place now if one is free and nobody waits (True), without a coroutine: the common case of every
        engine call; else False, and the caller waits its turn with :meth:`acquire`."""
        if self.free > 0 and not self._waiting:
            self.free -= 1
            return True
        return False

    async def acquire(self, key: Hashable | None) -> None:
        """Wait for a place in ``key``'s turn (None: a turn of its own)."""
        if self.take():
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


class _Shard:
    """One part of the result cache: least recently used first out within its own share of the bytes."""

    __slots__ = ("bytes", "items", "max_bytes", "meta")

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self.items: OrderedDict[Hashable, Any] = OrderedDict()
        self.meta: dict[Hashable, int] = {}  # size << TAG_BITS | tag


class ResultCache:
    """Finished deterministic answers, least recently used first out, bounded by an estimate of their bytes.

    An entry adds no object that the garbage collector tracks when its key and value are not tracked (bytes,
    strings, numbers, numpy arrays: see cache_forms): the value is stored as it is and its size, with an optional
    small ``tag`` (an embedding's token count), as one int in a second dict. A tuple per entry would be tracked
    until the next young collection, and a young collection walks every tracked object made since the last
    one: with ~3 per cached row, a pause of 15-25 ms every ~15,000 rows.

    The entries are spread over up to 64 shards by their keys' hashes (one per MiB of the budget, so a small
    cache is one exact LRU), each evicting its own least recently used within its share. A dict grows by copying
    itself whole, and one dict of a million entries takes ~100-170 ms to do so: a stall of every batch in flight.
    A shard holds a 64th of them."""

    TAG_BITS = 24  # tags below 2**24
    MAX_SHARDS = 64

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        count = 1
        while count < self.MAX_SHARDS and max_bytes // (2 * count) >= 2**20:
            count *= 2
        self._mask = count - 1
        self._shards = [_Shard(max_bytes // count) for _ in range(count)]

    def __len__(self) -> int:
        return sum(len(shard.items) for shard in self._shards)

    @property
    def bytes(self) -> int:
        return sum(shard.bytes for shard in self._shards)

    def items(self) -> Iterator[tuple[Hashable, Any]]:
        """Every (key, value), shard by shard (for tests and inspection)."""
        for shard in self._shards:
            yield from shard.items.items()

    def get(self, key: Hashable) -> Any | None:
        items = self._shards[hash(key) & self._mask].items
        value = items.get(key)
        if value is None:
            return None
        items.move_to_end(key)
        return value

    def get_tagged(self, key: Hashable) -> tuple[Any, int] | None:
        """The value and the tag it was put with."""
        shard = self._shards[hash(key) & self._mask]
        value = shard.items.get(key)
        if value is None:
            return None
        shard.items.move_to_end(key)
        return value, shard.meta[key] & ((1 << self.TAG_BITS) - 1)

    def put(self, key: Hashable, value: Any, size: int, tag: int = 0) -> None:
        shard = self._shards[hash(key) & self._mask]
        if size > shard.max_bytes:
            return
        items, meta = shard.items, shard.meta
        old = meta.pop(key, None)
        if old is not None:
            del items[key]
            shard.bytes -= old >> self.TAG_BITS
        items[key] = value
        meta[key] = size << self.TAG_BITS | min(tag, (1 << self.TAG_BITS) - 1)
        shard.bytes += size
        while shard.bytes > shard.max_bytes:
            evicted, _ = items.popitem(last=False)
            shard.bytes -= meta.pop(evicted) >> self.TAG_BITS


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
    def __init__(
        self,
        engine: Engine,
        metrics: Metrics,
        *,
        max_concurrency: int | None = None,
        max_queue_rows: int = 20_000,
        max_queue_seconds: float | None = None,
        max_queue_bytes: int | None = None,
        cold_limit: bool = True,
        cache_bytes: int = 256 * 2**20,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.engine = engine
        self.metrics = metrics
        self.max_concurrency = max_concurrency or engine.max_concurrency
        self.max_queue_rows = max_queue_rows
        self.max_queue_seconds = max_queue_seconds
        self.max_queue_bytes = max_queue_bytes
        # the time limit's stand-in until a rate is measured (None: none, only rows and bytes bound the queue)
        self.cold_queue_rows: int | None = 4 * self.max_concurrency if cold_limit else None
        self.cache = ResultCache(cache_bytes)
        self.rate = RowRate()
        self._clock = clock
        self._slots = FairSlots(self.max_concurrency)
        # keyed by chat_key(request): a flat tuple of strings hashes in far less time than the request's dataclasses
        self._in_flight: dict[Hashable, asyncio.Future[ChatResult]] = {}
        self._scoring: dict[Hashable, asyncio.Future[Any]] = {}  # label scores and choices, by their keys
        self._embed_batchers: dict[int, _EmbedBatcher] = {}
        self.queued_rows = 0
        self.queued_bytes = 0
        self._held: dict[Hashable | None, int] = {}  # rows admitted per query (until their batch ends)
        self._owed: dict[Hashable | None, float] = {}  # queries refused for room, and since when
        self.engine_in_flight = 0
        self._unaccounted_rows = 0  # finished since the rate was last fed
        self._busy_since = 0.0
        # Usage metering (spcs_llm.usage): budgets checked before each engine call, tokens and busy time counted
        # after it. None: not metered.
        self.meter: Meter | None = None
        # Gauges read these plain numbers when /metrics is scraped instead of being set on every row.
        metrics.queue_depth.set_function(lambda: self.queued_rows)
        metrics.queue_bytes.set_function(lambda: self.queued_bytes)
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

    def refusal(self, rows: int, nbytes: int = 0, key: Hashable | None = None) -> str | None:
        """Why a batch of ``rows`` rows and ``nbytes`` request bytes of query ``key`` cannot be admitted now
        (None: it can)."""
        if self.queued_rows + rows > self.max_queue_rows:
            return "rows"
        if self.max_queue_bytes is not None and self.queued_bytes + nbytes > self.max_queue_bytes:
            return "bytes"
        if self._owed_to_others(key) and self._held.get(key, 0) + rows > self._fair_share(key):
            return "share"
        if self.max_queue_seconds is None:
            return None
        drain = self.drain_seconds(rows)
        if drain is None:
            # No rate yet (admission = refuse): hold a few engine-fulls, not a flood that could never finish in
            # time (every batch of a query's first burst arrives at once).
            cold = self.cold_queue_rows
            return "wait" if cold is not None and self.queued_rows + rows > cold else None
        return "wait" if drain > self.max_queue_seconds else None

    def _owed_to_others(self, key: Hashable | None) -> bool:
        """Whether another query was refused for room recently (its retry is due): then no query takes more
        than its share of the room, so the room that frees up waits for the refused one."""
        if not self._owed:
            return False
        now = self._clock()
        for k in [k for k, t in self._owed.items() if now - t > OWED_S]:
            del self._owed[k]
        return any(k != key for k in self._owed)

    def _fair_share(self, key: Hashable | None) -> float:
        """``max_queue_rows`` split evenly across the queries holding rows or owed room, and ``key``."""
        return self.max_queue_rows / len(self._held.keys() | self._owed.keys() | {key})

    @contextmanager
    def admit(self, rows: int, nbytes: int = 0) -> Iterator[Callable[[], None]]:
        """Reserve room for ``rows`` rows (``nbytes`` request bytes) for the duration of the block, or raise
        Overloaded (429) now.

        The block gets a function to call as each row finishes, so the queue and the measured rate follow rows
        as they finish; rows not reported are counted as finished when the block ends."""
        ticket = batch_ticket.get()
        if ticket is not None:
            nbytes += ticket.nbytes
        key = query_key.get()
        # An empty queue admits any batch, however large: it could never be admitted later either.
        if self.queued_rows > 0:
            reason = self.refusal(rows, nbytes, key)
            if reason is not None:
                self.metrics.rejected_rows.inc(rows)
                self.metrics.refused_batches.labels(reason).inc()
                if reason in ("rows", "bytes") and len(self._owed) < 10_000:
                    self._owed.setdefault(key, self._clock())
                raise Overloaded()
        self._owed.pop(key, None)
        self._held[key] = self._held.get(key, 0) + rows
        self._feed_rate()
        self.queued_rows += rows
        self.queued_bytes += nbytes
        if ticket is not None:
            ticket.admitted_at = time.monotonic()
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
            self.queued_bytes -= nbytes
            held = self._held[key] - rows
            if held:
                self._held[key] = held
            else:
                del self._held[key]
            if ticket is not None:
                self.metrics.queue_wait.observe(ticket.wait_s or 0.0)

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
        return await self._once(
            chat_key(request),  # bytes: the garbage collector need not walk cached answers (cache_forms)
            self._in_flight,
            unpack_result,
            lambda: self._run(request),
            pack_result,
            lambda result: _chat_size(request, result),
        )

    async def _once(
        self,
        key: Hashable,
        flights: dict[Hashable, asyncio.Future[Any]],
        unpack: Callable[[Any], T],
        compute: Callable[[], Awaitable[T]],
        pack: Callable[[T], Any],
        estimate: Callable[[T], int],
    ) -> T:
        """``key``'s answer from the cache, or shared with the identical call in flight, else computed in this
        caller (no task of its own: that would cost more than the engine call itself on a cached or fake engine)
        while identical calls that arrive meanwhile wait for it, then cached as ``pack(answer)`` (None: not
        cached). Its size is its key's and value's bytes when both are bytes, else ``estimate(answer)``. A waiter
        whose call was given up (the caller running it was cancelled) looks again, and may run it itself."""
        while True:
            cached = self.cache.get(key)
            if cached is not None:
                self._reused(answered=True)
                self._chat_hits.inc()
                return unpack(cached)
            shared = flights.get(key)
            if shared is None:
                break
            self._reused(answered=False)
            self.metrics.dedup_hits.inc()
            try:
                # shield: this waiter giving up (a cancelled batch) must not cancel the call others wait on
                return await asyncio.shield(shared)
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if not shared.cancelled() or (current is not None and current.cancelling()):
                    raise
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        flights[key] = future
        try:
            answer = await compute()
        except BaseException as exc:
            del flights[key]
            if isinstance(exc, asyncio.CancelledError):
                future.cancel()  # its waiters look again (above)
            else:
                future.set_exception(exc)
                future.exception()  # retrieved: nobody may be waiting
            raise
        del flights[key]
        value = pack(answer)
        if value is not None:
            if type(key) is bytes and type(value) is bytes:  # the bytes held, and ~200 for the entry's own slots
                self.cache.put(key, value, len(key) + len(value) + 200)
            else:
                self.cache.put(key, value, estimate(answer))
        future.set_result(answer)
        return answer

    def _reused(self, *, answered: bool) -> None:
        """A cached (``answered``) or shared answer costs no engine call, but a spent budget still refuses it."""
        meter = self.meter
        if meter is not None:
            meter.check(self.engine.model_name)
            if answered:
                meter.seen_model(self.engine.model_name)

    async def _take_place(self) -> None:
        """One of the engine places, in the query's fair turn. The batch's queue wait ends here, and a spent budget
        refuses the call now: once it is, no engine call starts (after the slot wait)."""
        if not self._slots.take():
            await self._slots.acquire(query_key.get())
        ticket = batch_ticket.get()
        if ticket is not None and ticket.started_at is None:
            ticket.start()
        meter = self.meter
        if meter is not None:
            try:
                meter.check(self.engine.model_name)
            except BaseException:
                self._slots.release()
                raise

    async def _run(self, request: ChatRequest) -> ChatResult:
        await self._take_place()
        self.engine_in_flight += 1
        self.metrics.engine_requests.inc()
        start = time.perf_counter()
        result = None
        try:
            result = await self.engine.chat(request)
        finally:
            busy = time.perf_counter() - start
            self.metrics.engine_latency.observe(busy)
            self.engine_in_flight -= 1
            self._slots.release()
            if self.meter is not None:  # a failed call counts its busy time, without tokens
                self.meter.engine_call(self.engine.model_name, result.usage if result else None, busy)
        self._count_tokens(result.usage)
        return result

    async def score_labels(self, request: ScoreRequest) -> LabelScores | None:
        """The label distribution of ``request`` (engines/labels.py) in one engine place, cached and shared
        like a deterministic chat answer; None when the engine cannot score (the caller generates instead).
        Cached in the flat forms of cache_forms (nothing for the garbage collector to walk), keyed like chat."""
        return await self._once(
            score_key(request),
            self._scoring,
            unpack_scores,
            lambda: self._score(lambda: self.engine.score_labels(request)),
            lambda scores: None if scores is None else pack_scores(scores),
            lambda _: 200 + 2 * sum(len(m.content) for m in request.messages) + 100 * len(request.labels),
        )

    async def choose_labels(self, request: ChoiceRequest) -> LabelChoices | None:
        """Each slot's likeliest label (engines/labels.py :func:`choose_labels`) in one engine place: the whole
        answer's choices are one engine job, cached, shared, budgeted and metered once, as the constrained
        generation of the same answer would be. None: the engine cannot score (the caller generates instead)."""
        return await self._once(
            choice_key(request),
            self._scoring,
            unpack_choices,
            lambda: self._score(lambda: self.engine.choose_labels(request)),
            lambda choices: None if choices is None else pack_choices(choices),
            lambda _: 200 + 2 * sum(len(m.content) for m in request.messages) + 100 * len(request.slots),
        )

    async def _score(self, scoring: Callable[[], Awaitable[S | None]]) -> S | None:
        """One scoring job (``scoring()``: the engine's walk) in one engine place, metered by its steps' usage."""
        await self._take_place()
        self.engine_in_flight += 1
        start = time.perf_counter()
        scores = None
        try:
            scores = await scoring()
        finally:
            busy = time.perf_counter() - start
            self.engine_in_flight -= 1
            self._slots.release()
            if self.meter is not None and scores is not None:  # None: no engine work counted, the caller generates
                self.meter.engine_call(self.engine.model_name, scores.usage, busy)
        if scores is not None:
            self.metrics.engine_requests.inc(scores.steps)
            self.metrics.engine_latency.observe(busy)
            self._count_tokens(scores.usage)
        return scores

    async def stream(self, request: ChatRequest) -> AsyncIterator[StreamDelta]:
        """Stream one answer, holding one of the engine places for the whole stream."""
        await self._take_place()
        self.engine_in_flight += 1
        self.metrics.engine_requests.inc()
        start, usage = time.perf_counter(), None
        try:
            async for delta in self.engine.chat_stream(request):
                if delta.usage is not None:
                    usage = delta.usage
                    self._count_tokens(delta.usage)
                yield delta
        finally:
            self.engine_in_flight -= 1
            self._slots.release()
            if self.meter is not None:
                self.meter.engine_call(self.engine.model_name, usage, time.perf_counter() - start)

    async def count_tokens(self, text: str) -> int:
        """Tokens in ``text`` with the served chat model's tokenizer."""
        return await self.engine.count_tokens(text)

    def _count_tokens(self, usage: Usage) -> None:
        self._tokens_in.inc(usage.prompt_tokens)
        self._tokens_out.inc(usage.completion_tokens)
        if usage.cached_tokens:
            self.metrics.prompt_tokens_cached.inc(usage.cached_tokens)

    # -- embeddings ---------------------------------------------------------------------------------------------

    async def embed(self, embedder: Embedder, text: str) -> np.ndarray:
        """``text``'s vector; concurrent calls for one embedder are batched into one forward pass."""
        (vector,) = await self.embed_texts(embedder, (text,))
        return vector

    async def embed_texts(
        self, embedder: Embedder, texts: Sequence[str], tokens: list[int] | None = None
    ) -> list[np.ndarray]:
        """The vectors of ``texts``, in order, or the first text's error (see :meth:`embed_outcomes`)."""
        outcomes = await self.embed_outcomes(embedder, texts, tokens)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        return outcomes  # type: ignore[return-value]

    async def embed_outcomes(
        self, embedder: Embedder, texts: Sequence[str], tokens: list[int] | None = None
    ) -> list[np.ndarray | Exception]:
        """Per text, in order, its vector or the error of its pass (or of the text alone): cached ones at once, the
        rest submitted together (so they share forward passes) before any is awaited. Each vector is a read-only
        row of the array the embedder gave, shared with the cache and every caller, never copied. ``tokens``,
        when given, gets each text's input tokens (0 for a failed text; cached texts too, as the count is cached
        with the vector).

        Budgets are checked once, before any text is submitted (a spent budget raises). The texts this call
        computed are metered once at the end: their input tokens and their shares of the passes' engine time;
        cached texts and texts that joined an identical one in flight cost no engine work and are not counted."""
        meter, name = self.meter, embedder.model_name
        if meter is not None:
            meter.check(name)
        ticket = batch_ticket.get()
        if ticket is not None and ticket.started_at is None:
            ticket.start()  # the batch's queue wait ends here: its texts go to the embedder's next passes
        pending: list[Any] = []
        cache, hits = self.cache, 0
        batcher = self._embed_batcher(embedder)
        prefix = name + "\x00"  # a str key: not tracked by the collector (nor is the array)
        for text in texts:
            cached = cache.get_tagged(prefix + text)
            if cached is not None:
                hits += 1
                pending.append(cached)
            else:
                pending.append(batcher.submit(text))
        if hits:
            self._embed_hits.inc(hits)
        computed, read, busy = 0, 0, 0.0
        outcomes: list[np.ndarray | Exception] = []
        try:
            for v in pending:
                if type(v) is tuple:
                    vector, count = v
                else:
                    try:
                        vector, busy_share, count = await v
                    except Exception as exc:  # this text's pass (or this text alone) failed
                        outcomes.append(exc)
                        if tokens is not None:
                            tokens.append(0)
                        continue
                    if busy_share is not None:  # None: joined an identical text's embedding, no work of its own
                        computed, read, busy = computed + 1, read + count, busy + busy_share
                outcomes.append(vector)
                if tokens is not None:
                    tokens.append(count)
            return outcomes
        except BaseException:  # cancelled: the futures not awaited yet are this caller's own, dropped quietly
            for v in pending:
                if isinstance(v, asyncio.Future) and not v.cancel() and not v.cancelled():
                    v.exception()
            raise
        finally:
            if meter is not None:
                meter.embedded(name, computed, read, busy)
            if computed:
                self._tokens_in.inc(read)

    def _embed_batcher(self, embedder: Embedder) -> _EmbedBatcher:
        batcher = self._embed_batchers.get(id(embedder))
        if batcher is None:
            batcher = self._embed_batchers[id(embedder)] = _EmbedBatcher(embedder, self)
        return batcher


class _EmbedBatcher:
    """Collects the texts asked for while a forward pass runs, and embeds them together in the next one.

    No timer: the first text starts a pass at once; texts that arrive meanwhile wait for it to finish and go
    in the next pass (up to ``max_batch`` texts each). Equal texts in a pass are computed once. Every caller
    waits on a future of its own, so a cancelled caller cancels nobody else's wait (and no shield is needed).
    """

    def __init__(self, embedder: Embedder, scheduler: Scheduler, max_batch: int = 64) -> None:
        self.embedder, self.scheduler, self.max_batch = embedder, scheduler, max_batch
        self.metrics = scheduler.metrics
        # per text: the futures of its callers; each gets (vector, its share of the pass's time or None if it
        # joined, the text's input tokens)
        self._pending: dict[str, list[asyncio.Future[Embedding]]] = {}
        self._runner: asyncio.Task[None] | None = None

    def submit(self, text: str) -> asyncio.Future[Embedding]:
        """A future for ``text``'s vector, filled by the next forward pass that takes it."""
        future: asyncio.Future[Embedding] = asyncio.get_running_loop().create_future()
        waiters = self._pending.get(text)
        if waiters is None:
            self._pending[text] = [future]
            if self._runner is None or self._runner.done():
                self._runner = asyncio.ensure_future(self._run())
        else:
            waiters.append(future)
            self.metrics.dedup_hits.inc()
        return future

    async def _run(self) -> None:
        while self._pending:
            texts = list(itertools.islice(self._pending, self.max_batch))
            waiters = [self._pending.pop(t) for t in texts]
            self.metrics.engine_requests.inc()
            self.scheduler.engine_in_flight += 1
            start = time.perf_counter()
            try:
                # an embedder that can fail one text alone (a RowError row) keeps that text's neighbours answered
                embedded = await self.embedder.embed_counted(texts)
                vectors: Any = embedded.vectors
                if isinstance(vectors, np.ndarray):
                    vectors = vectors.view()  # read-only below, without touching the embedder's own array
                if len(vectors) != len(texts) or len(embedded.tokens) != len(texts):
                    raise EngineUnavailable(
                        f"{self.embedder.model_name} returned {len(vectors)} vectors for {len(texts)} texts"
                    )
            except Exception as exc:  # every waiter of this pass gets the failure
                for futures in waiters:
                    for f in futures:
                        if not f.done():
                            f.set_exception(exc)
                continue
            finally:
                elapsed = time.perf_counter() - start
                self.metrics.engine_latency.observe(elapsed)
                self.scheduler.engine_in_flight -= 1
            share = elapsed / len(texts)
            if isinstance(vectors, np.ndarray):
                vectors.flags.writeable = False  # rows are shared by the cache and every caller: nobody may write
            self._finish(texts, waiters, vectors, embedded.tokens, share)

    def _finish(
        self,
        texts: list[str],
        waiters: list[list[asyncio.Future[Embedding]]],
        vectors: Sequence[Any],
        tokens: Sequence[int],
        share: float,
    ) -> None:
        cache, name = self.scheduler.cache, self.embedder.model_name
        for text, futures, vector, count in zip(texts, waiters, vectors, tokens, strict=True):
            if isinstance(vector, BaseException):  # this text alone failed (embed_rows): only its callers see it
                for f in futures:
                    if not f.done():
                        f.set_exception(vector)
                continue
            if not isinstance(vector, np.ndarray):  # a list of floats: the same doubles
                vector = np.asarray(vector, dtype=np.float64)
            if vector.flags.writeable:  # a row of its own (not a view of the read-only pass array)
                vector.flags.writeable = False
            count = int(count)
            # the row is a view of the pass's array: the cache holds it as it is, with its token count as the tag
            cache.put(name + "\x00" + text, vector, vector.nbytes + 2 * sys.getsizeof(text) + 200, count)
            for i, f in enumerate(futures):  # the first caller computed it; the others joined (no share)
                if not f.done():
                    f.set_result((vector, share if i == 0 else None, count))
