"""The asynchronous batch protocol (snowflake-contract.md §1.5): 202 now, the answer on Snowflake's polling GET.

A batch's POST is held open for ``async_after_secs``. If its answer is ready by then it goes back as 200, as
always; otherwise the POST is answered **202** and the computation goes on. Snowflake then polls with a GET that
carries the same ``sf-external-function-query-batch-id`` (no body); each GET is held open for up to
``async_after_secs`` too, and answers 200 with the body once it is ready, or 202 again.

- **Same work, once.** The batch's computation lives in :class:`~.batches.BatchMemory`, keyed by batch id and a
  digest of the body, so a retried POST of a batch that is held, running or finished joins or reuses it.
- **Unknown or expired batch id.** A GET for a batch this instance does not hold (never seen, expired, forgotten
  under memory pressure, or held by another instance) answers ``async_unknown_status`` (404 by default), a status
  Snowflake retries (§1.4), so it re-sends the batch instead of polling for ever. It costs one of the batch's
  ``MAX_BATCH_RETRIES``. Whether Snowflake's retry after a failed GET is a POST (the batch again) or another GET
  is not documented; either way the batch does not hang until ``BATCH_TIMEOUT_SECS``.
- **Kept, bounded.** An answer no GET has fetched is kept ``async_keep_secs`` (600 s, the documented minimum)
  after it finished, within ``batch_memory_mb`` (such answers are the last to be evicted).
- **Abandoned queries.** Snowflake may abort a query (ABORT after another batch failed) and never poll again. A
  batch that no request has waited on or asked about for ``async_keep_secs`` is cancelled, which takes its rows
  out of the scheduler's queue, and forgotten. :meth:`AsyncBatches.sweep` does this; the app runs it every few
  seconds.
- **Several instances.** With ``MAX_INSTANCES > 1`` Snowflake's load balancer may send the GET to an instance
  that never saw the POST (unconfirmed either way). That instance answers the unknown-batch status, Snowflake
  re-sends the batch, and whichever instance gets it computes it: correct, but it spends retries and may compute
  a batch twice. So the deploy turns the protocol off (``async_responses = false``) when ``MAX_INSTANCES > 1``,
  and batches are held on their POST instead (docs/overload.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from ..errors import SpcsLlmError
from ..metrics import Metrics
from .batches import BatchMemory, Compute, _Batch


class UnknownBatch(SpcsLlmError):
    """A polling GET for a batch id this instance does not hold; a status Snowflake retries (404 by default)."""

    kind = "unknown_batch"

    def __init__(self, status: int) -> None:
        super().__init__("unknown or expired batch id; Snowflake re-sends the batch")
        self.status = status


class AsyncBatches:
    def __init__(
        self,
        memory: BatchMemory,
        metrics: Metrics,
        *,
        enabled: bool = True,
        after_s: float = 10.0,
        keep_s: float = 600.0,
        unknown_status: int = 404,
    ) -> None:
        self.memory = memory
        self.metrics = metrics
        self.enabled = enabled and memory.enabled
        self.after_s = after_s
        self.keep_s = keep_s
        self.unknown_status = unknown_status
        metrics.async_held.set_function(lambda: sum(1 for _, b in self.memory.items() if b.awaiting_get))

    async def post(
        self, batch_id: str | None, function: str, request_body: bytes, compute: Compute
    ) -> tuple[bytes | None, _Batch | None]:
        """The answer body (200), or None: answered 202, the answer is for a polling GET. Also the batch's record
        (None when it is not remembered: no batch id, or batch memory off)."""
        if batch_id is None or not self.memory.enabled:
            return await self.memory.answer(batch_id, function, request_body, compute), None
        future = self.memory.begin(batch_id, function, request_body, compute)
        batch = self.memory.get(batch_id)
        assert batch is not None
        body = await self._wait(batch, future, self.after_s if self.enabled else None)
        if body is None:
            batch.awaiting_get = True
            self.metrics.async_accepted.inc()
        return body, batch

    async def poll(self, batch_id: str | None, function: str) -> tuple[bytes | None, _Batch]:
        """A polling GET: the answer body (200), None (202: still running), or an error: the batch's own failure,
        or :class:`UnknownBatch` for a batch this instance does not hold."""
        self.sweep()
        batch = self.memory.get(batch_id) if batch_id is not None else None
        if (
            batch is None
            or batch.function != function
            or (batch.running is None and batch.body is None and batch.error is None)
        ):
            self.metrics.async_polls.labels("unknown").inc()
            raise UnknownBatch(self.unknown_status)
        batch.touched = time.monotonic()
        if batch.running is not None:
            body = await self._wait(batch, batch.running, self.after_s)
        elif batch.error is not None:
            self.metrics.async_polls.labels("failed").inc()
            batch.awaiting_get = False
            raise batch.error
        else:
            body = batch.body
        if body is None:
            self.metrics.async_polls.labels("pending").inc()
        else:
            self.metrics.async_polls.labels("ready").inc()
            batch.awaiting_get = False
        return body, batch

    async def _wait(self, batch: _Batch, future: asyncio.Future[bytes], timeout: float | None) -> bytes | None:
        """``future``'s answer, or None when ``timeout`` seconds pass first (None: wait for it)."""
        batch.waiters += 1
        try:
            if timeout is None:
                return await asyncio.shield(future)
            done, _ = await asyncio.wait({future}, timeout=timeout)
            return future.result() if done else None
        finally:
            batch.waiters -= 1
            batch.touched = time.monotonic()

    def sweep(self) -> int:
        """Forget expired answers; cancel and forget batches nobody has asked about for ``keep_s``. Returns
        how many batches it abandoned (cancelled while still held or running)."""
        now = time.monotonic()
        abandoned = 0
        for batch_id, batch in self.memory.items():
            if batch.waiters or now - batch.touched < self.keep_s:
                continue
            if batch.running is not None:
                batch.running.cancel()  # its rows leave the scheduler's queue; _finished will not keep it
                abandoned += 1
                self.metrics.async_abandoned.inc()
                self.memory.forget(batch_id)
            elif batch.awaiting_get and batch.finished_at is not None and now - batch.finished_at >= self.keep_s:
                self.memory.forget(batch_id)  # an answer nobody fetched
        return abandoned

    async def run_sweeper(self, every_s: float = 5.0) -> None:
        """Sweep for ever (the app runs this as a task and cancels it at shutdown)."""
        while True:
            await asyncio.sleep(every_s)
            with contextlib.suppress(Exception):
                self.sweep()
