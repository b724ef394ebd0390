"""What was computed for recent Snowflake batches, so that a retried batch costs no engine work.

Snowflake retries a batch with the same ``sf-external-function-query-batch-id`` after a 429, a 5xx, a dropped
connection or its own timeout (snowflake-contract.md §1). The retry of a batch that

- **finished** gets the same answer again, byte for byte;
- **is still running** (Snowflake gave up waiting, the work went on) waits for that same computation;
- **failed part-way** (an engine went down) reuses every row that had finished and computes only the rest.

A retry is recognised by batch id *and* a digest of the request body, so a reused id with a different body is
computed afresh. Memory is bounded by bytes (answers) and by a count of batches; least recently used goes first,
answers still awaited by a polling GET last. Sampled rows (temperature > 0) are kept too: a retry must not draw
new samples for rows already answered. The asynchronous protocol (202, then polling GETs) is built on this memory
in ``async_batches.py``.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from ..cache_forms import kept
from ..metrics import Metrics
from ..scheduler import BatchTicket, batch_ticket

# compute(done) -> the answer body; ``done`` maps row positions to outcomes a retry may reuse, and is filled in
# by the computation as rows finish.
Compute = Callable[[dict[int, Any]], Awaitable[bytes]]


def _digest(function: str, body: bytes) -> bytes:
    return hashlib.blake2b(function.encode() + b"\0" + body, digest_size=16).digest()


@dataclass
class _Batch:
    digest: bytes
    function: str = ""
    done: dict[int, Any] = field(default_factory=dict)
    running: asyncio.Future[bytes] | None = None
    body: bytes | None = None
    size: int = 0
    error: BaseException | None = None  # why the last computation failed (answered to a polling GET)
    ticket: BatchTicket | None = None  # the computation's queue wait
    touched: float = field(default_factory=time.monotonic)  # last POST, GET or waiter leaving
    waiters: int = 0  # requests waiting on it now
    awaiting_get: bool = False  # answered 202; its answer is for a polling GET
    finished_at: float | None = None


class BatchMemory:
    def __init__(self, metrics: Metrics, max_bytes: int, max_batches: int = 10_000) -> None:
        self.metrics = metrics
        self.max_bytes = max_bytes
        self.max_batches = max_batches
        self.bytes = 0
        self._batches: OrderedDict[str, _Batch] = OrderedDict()

    def __len__(self) -> int:
        return len(self._batches)

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    async def answer(self, batch_id: str | None, function: str, request_body: bytes, compute: Compute) -> bytes:
        """The answer body for this batch: remembered, joined, or computed (reusing rows that had finished)."""
        if batch_id is None or not self.enabled:
            return await compute({})
        return await asyncio.shield(self.begin(batch_id, function, request_body, compute))

    def begin(self, batch_id: str, function: str, request_body: bytes, compute: Compute) -> asyncio.Future[bytes]:
        """The future answer of this batch: remembered (done already), the computation running, or a new one."""
        digest = _digest(function, request_body)
        batch = self._batches.get(batch_id)
        if batch is None or batch.digest != digest:
            if batch is not None:
                self._forget(batch_id)
            batch = self._batches[batch_id] = _Batch(digest, function)
        else:
            self._batches.move_to_end(batch_id)
            batch.touched = time.monotonic()
            if batch.body is not None or batch.running is not None or batch.done:
                self.metrics.batch_retries_answered.inc()
            if batch.body is not None:
                done: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
                done.set_result(batch.body)
                return done
            if batch.running is not None:
                return batch.running
        self.bytes -= batch.size
        batch.size, batch.error, batch.finished_at = 0, None, None
        batch.ticket = batch_ticket.get()
        running = batch.running = asyncio.ensure_future(compute(batch.done))
        # Book-keeping happens when the computation ends, not in this waiter: Snowflake may have dropped the
        # connection (and this waiter with it) while the rows went on.
        running.add_done_callback(lambda task: self._finished(batch_id, batch, task))
        return running

    def get(self, batch_id: str) -> _Batch | None:
        """The remembered batch with this id (no effect on its age)."""
        return self._batches.get(batch_id)

    def items(self) -> list[tuple[str, _Batch]]:
        return list(self._batches.items())

    def _finished(self, batch_id: str, batch: _Batch, task: asyncio.Future[bytes]) -> None:
        batch.running = None
        batch.finished_at = time.monotonic()
        if not task.cancelled() and task.exception() is None:
            batch.body, batch.done = kept(task.result()), {}  # at its own length: orjson's buffer is larger
            size = len(batch.body)
        else:  # failed: keep the rows that finished, for the retry
            batch.error = None if task.cancelled() else task.exception()
            size = _estimate(batch.done)
        if self._batches.get(batch_id) is batch:
            self._remember(batch, size)

    def _remember(self, batch: _Batch, size: int) -> None:
        batch.size = size
        self.bytes += size
        # Least recently used first; answers a polling GET has still to fetch only when nothing else is left.
        for spare_awaited in (True, False):
            for key in list(self._batches):
                if self.bytes <= self.max_bytes and len(self._batches) <= self.max_batches:
                    return
                old = self._batches[key]
                if old is batch and not spare_awaited:
                    continue  # the newest answer stays, even alone over the bound: its GET is coming
                if old.running is None and not (spare_awaited and old.awaiting_get):
                    self._forget(key)

    def forget(self, batch_id: str) -> None:
        """Drop a batch: its answer or finished rows (a running computation is the caller's to cancel)."""
        if batch_id in self._batches:
            self._forget(batch_id)

    def _forget(self, key: str) -> None:
        self.bytes -= self._batches.pop(key).size


def _estimate(done: dict[int, Any]) -> int:
    """Bytes of the finished rows of a failed batch (their values as JSON; errors cost a little each)."""
    return sum(
        64 if isinstance(v, Exception) else len(orjson.dumps(v, default=str, option=orjson.OPT_SERIALIZE_NUMPY))
        for v in done.values()
    )
