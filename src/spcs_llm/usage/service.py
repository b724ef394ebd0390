"""The usage service: the meter, the budgets, the store and the export, and the loop that flushes them.

Every ``flush_seconds`` the meter's table is taken whole and written as one interval. Node time is apportioned
there: the interval's wall time (times ``node_share``) is split over its rows by engine busy time, and priced at
``credits_per_node_hour``. An interval with no engine work at all is written as one ``(idle)`` row, every
``idle_flush_seconds``, so the history adds up to the node time the pool billed while this instance ran.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter

from .. import logs
from .budgets import Budgets
from .export import Exporter
from .meter import BUSY, CACHED, CALLS, ERRORS, INPUT, OUTPUT, ROWS, Key, Meter
from .settings import BudgetSettings, UsageSettings, default_db_path
from .store import Interval, UsageStore

IDLE_USER = "(idle)"


class UsageMetrics:
    """Prometheus counters by function and model (never by user or query: their number is unbounded)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.rows = Counter(
            "spcs_llm_usage_rows", "Rows answered, by function and model", ["function", "model"], registry=r
        )
        self.tokens = Counter(
            "spcs_llm_usage_tokens",
            "Engine tokens, by function, model and direction (in, out, cached)",
            ["function", "model", "direction"],
            registry=r,
        )
        self.busy = Counter(
            "spcs_llm_usage_engine_seconds",
            "Engine busy time, by function and model",
            ["function", "model"],
            registry=r,
        )
        self.errors = Counter(
            "spcs_llm_usage_errors", "Rows that got an error, by function and model", ["function", "model"], registry=r
        )
        self.credits = Counter(
            "spcs_llm_usage_estimated_credits",
            "Estimated credits (node time apportioned by busy time), by function and model",
            ["function", "model"],
            registry=r,
        )
        self.refusals = Counter(
            "spcs_llm_budget_refusals", "Calls refused with budget exceeded, by function", ["function"], registry=r
        )

    def add(self, rows: list[tuple[Any, ...]]) -> None:
        for r in rows:
            function, model = r[6], r[7]
            if r[3] == IDLE_USER:
                continue
            self.rows.labels(function, model).inc(r[8])
            for direction, value in (("in", r[9]), ("out", r[10]), ("cached", r[11])):
                if value:
                    self.tokens.labels(function, model, direction).inc(value)
            self.busy.labels(function, model).inc(r[12])
            if r[13]:
                self.errors.labels(function, model).inc(r[13])
            if r[16]:
                self.credits.labels(function, model).inc(r[16])


def interval_rows(
    flush_id: str, start: float, end: float, pending: dict[Key, list[float]], settings: UsageSettings
) -> list[tuple[Any, ...]]:
    """Rows (store.COLUMNS order) of one interval, with node time apportioned by busy time."""
    node_seconds = max(0.0, end - start) * settings.node_share
    rate = settings.credits_per_node_hour
    busy_total = sum(c[BUSY] for c in pending.values())
    if busy_total <= 0:  # no engine work: the node time was idle (rows answered from the cache cost none)
        pending = {**pending, (IDLE_USER, "", "", "", ""): [0, 0, 0, 0, 0.0, 0, 0]}
    out = []
    for key, c in pending.items():
        share = c[BUSY] / busy_total if busy_total > 0 else float(key[0] == IDLE_USER)
        node = node_seconds * share
        credits = None if rate is None else node / 3600 * rate
        out.append(
            (
                flush_id,
                start,
                end,
                *key,
                int(c[ROWS]),
                int(c[INPUT]),
                int(c[OUTPUT]),
                int(c[CACHED]),
                float(c[BUSY]),
                int(c[ERRORS]),
                int(c[CALLS]),
                node,
                credits,
            )
        )
    return out


class UsageService:
    def __init__(
        self,
        settings: UsageSettings,
        budgets: list[BudgetSettings],
        registry: CollectorRegistry,
        *,
        exporter: Exporter | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.store = UsageStore(settings.db_path or default_db_path())
        self.exporter = exporter
        self._process = uuid.uuid4().hex[:12]
        # Exporting: the shared table holds every instance's usage, so each budget is the whole allowance and
        # what others spent is read from there (sync_budgets). Not exporting: this instance alone, its share.
        self.budgets = Budgets(budgets, 1 if exporter is not None else settings.budget_instances, clock)
        if exporter is None:  # what earlier runs spent this period, from the local history
            self.budgets.preload(
                lambda spec, since: self.store.tokens_since(since, spec.user, spec.role, spec.function, spec.model)
            )
        self.meter = Meter(self.budgets)
        self.metrics = UsageMetrics(registry)
        self._seq = 0
        self._last = clock()
        self._unwritten: list[Interval] = []  # intervals whose write failed: retried with the same flush id
        self._refusals_seen: dict[str, int] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._write_lock = threading.Lock()

    # -- flushing ------------------------------------------------------------------------------------------------

    def flush(self, *, idle_too: bool = False) -> int:
        """Write what was counted since the last flush as one interval; returns the rows written.

        An interval with nothing counted is written (as idle node time) only when ``idle_too``."""
        self.collect(idle_too=idle_too)
        return self.write_pending()

    def collect(self, *, idle_too: bool = False) -> None:
        """Take the meter's table as one interval (on the event loop's thread: the meter is not locked)."""
        self._count_refusals()
        pending = self.meter.take()
        now = self.clock()
        if pending or idle_too:
            self._seq += 1
            flush_id = f"{self._process}-{self._seq}"
            rows = interval_rows(flush_id, self._last, now, pending, self.settings)
            self._unwritten.append(Interval(flush_id, self._last, now, rows))
            self._last = now
            self.metrics.add(rows)

    def write_pending(self) -> int:
        """Write the collected intervals, oldest first; one that fails stays for the next try, same flush id."""
        written = 0
        with self._write_lock:
            while self._unwritten:
                interval = self._unwritten[0]
                self.store.write(interval)
                self._unwritten.pop(0)
                written += len(interval.rows)
        return written

    def _count_refusals(self) -> None:
        for function, n in self.meter.refusals.items():
            seen = self._refusals_seen.get(function, 0)
            if n > seen:
                self.metrics.refusals.labels(function).inc(n - seen)
                self._refusals_seen[function] = n

    async def run(self) -> None:
        """Flush every flush_seconds (idle time every idle_flush_seconds) until cancelled."""
        while True:
            await asyncio.sleep(self.settings.flush_seconds)
            idle_due = self.clock() - self._last >= self.settings.idle_flush_seconds
            self.collect(idle_too=idle_due)
            try:
                await asyncio.to_thread(self.write_pending)
            except Exception as exc:  # the disk may be full: keep counting, retry next time
                logs.event("usage_flush_failed", error=f"{type(exc).__name__}: {exc}")

    async def run_export(self) -> None:
        """Read the budgets' shared totals at once, then every export_seconds export and read them again."""
        assert self.exporter is not None
        while True:
            try:
                await asyncio.to_thread(self.export_and_sync)
            except Exception as exc:  # retried next time; the MERGE is idempotent
                logs.event("usage_export_failed", error=f"{type(exc).__name__}: {exc}")
            await asyncio.sleep(self.settings.export_seconds)

    def export_and_sync(self) -> None:
        assert self.exporter is not None
        self.exporter.export_pending(self.store)
        self.exporter.sync_budgets(self.budgets, self._process)

    def start(self) -> None:
        self._tasks.append(asyncio.create_task(self.run()))
        if self.exporter is not None:
            self._tasks.append(asyncio.create_task(self.run_export()))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        try:
            self.flush(idle_too=True)
            if self.exporter is not None:
                self.exporter.export_pending(self.store)
        except Exception as exc:
            logs.event("usage_final_flush_failed", error=f"{type(exc).__name__}: {exc}")
        self.store.close()

    # -- reading -------------------------------------------------------------------------------------------------

    def report(self, since: float | None, until: float | None, by: list[str]) -> list[dict[str, Any]]:
        """Sums per group, including what was counted but not yet flushed (it is flushed first)."""
        self.flush()
        return self.store.query(since, until, by)
