"""Prometheus metrics, one registry per app (no module-level globals, so tests and apps never share counts)."""

from __future__ import annotations

import bisect
import time
from collections.abc import Iterator, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric


class HotCounter:
    """A counter on the per-row path: plain numbers added to without a lock, read when /metrics is scraped, and
    shown there exactly as a prometheus_client Counter is (``_total`` and ``_created``). prometheus_client's own
    take a lock and check their arguments on every call (~0.4 us; five of them a row were ~5% of a cached
    row's cost). Only the event loop's thread may add (the scheduler's calls all run there)."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str] = (), *, registry: CollectorRegistry):
        self.name, self.documentation, self.labelnames = name, documentation, tuple(labelnames)
        self.value = 0.0
        self.created = time.time()
        self._children: dict[tuple[str, ...], HotCounter] = {}
        registry.register(self)

    def inc(self, amount: float = 1) -> None:
        self.value += amount

    def labels(self, *values: str) -> HotCounter:
        child = self._children.get(values)
        if child is None:
            child = object.__new__(HotCounter)
            child.value, child.created = 0.0, time.time()
            self._children[values] = child
        return child

    @property
    def _value(self) -> _Reading:
        """``counter._value.get()``, as prometheus_client's counters are read in tests."""
        return _Reading(self)

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames or None)
        if self.labelnames:
            for values, child in self._children.items():
                family.add_metric(list(values), child.value, created=child.created)
        else:
            family.add_metric([], self.value, created=self.created)
        yield family


class _Reading:
    __slots__ = ("counter",)

    def __init__(self, counter: HotCounter) -> None:
        self.counter = counter

    def get(self) -> float:
        return self.counter.value


class HotHistogram:
    """A histogram on the per-row path, like :class:`HotCounter`: a count per bucket and a sum, shown as a
    prometheus_client Histogram is (cumulative ``_bucket`` lines with ``+Inf``, ``_count``, ``_sum``,
    ``_created``)."""

    def __init__(self, name: str, documentation: str, *, buckets: Sequence[float], registry: CollectorRegistry):
        self.name, self.documentation = name, documentation
        self.bounds = [float(b) for b in buckets]
        self.counts = [0] * (len(self.bounds) + 1)  # the last: above every bound (+Inf)
        self.sum = 0.0
        self.created = time.time()
        registry.register(self)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1  # le: a value equal to a bound is in it
        self.sum += value

    def collect(self) -> Iterator[Metric]:
        cumulative, total = [], 0
        for bound, count in zip([*self.bounds, float("inf")], self.counts, strict=True):
            total += count
            cumulative.append((_le(bound), total))
        family = HistogramMetricFamily(self.name, self.documentation)
        family.add_metric([], cumulative, self.sum)
        family.add_sample(self.name + "_created", {}, self.created)
        yield family


def _le(bound: float) -> str:
    from prometheus_client.utils import floatToGoString

    return floatToGoString(bound)


class Metrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.rows = Counter("spcs_llm_rows", "Rows received in Snowflake batches", ["function"], registry=r)
        self.batches = Counter(
            "spcs_llm_batches", "Batches answered, by HTTP status", ["function", "status"], registry=r
        )
        self.errors = Counter("spcs_llm_errors", "Errors by kind", ["kind"], registry=r)
        # the per-row ones are HotCounter/HotHistogram: the same on /metrics, without a lock per call
        self.tokens = HotCounter("spcs_llm_tokens", "Tokens through the engine", ["direction"], registry=r)
        self.engine_requests = HotCounter("spcs_llm_engine_requests", "Requests sent to the engine", registry=r)
        self.dedup_hits = HotCounter(
            "spcs_llm_dedup_hits", "Requests answered by an identical one in flight", registry=r
        )
        self.cache_hits = HotCounter(
            "spcs_llm_result_cache_hits", "Requests answered from the result cache", ["kind"], registry=r
        )
        self.cache_bytes = Gauge("spcs_llm_result_cache_bytes", "Estimated bytes held by the result cache", registry=r)
        self.batch_retries_answered = Counter(
            "spcs_llm_batch_retries_answered",
            "Retried batches (same batch id) answered from what was already computed",
            registry=r,
        )
        self.rejected_rows = Counter(
            "spcs_llm_rejected_rows", "Rows of batches refused with 429 at admission", registry=r
        )
        self.prompt_tokens_cached = HotCounter(
            "spcs_llm_prompt_tokens_cached",
            "Prompt tokens the engine reused from its prefix cache (as reported by the engine)",
            registry=r,
        )
        self.engine_latency = HotHistogram(
            "spcs_llm_engine_latency_seconds",
            "Time of one engine request",
            registry=r,
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
        )
        self.batch_latency = Histogram(
            "spcs_llm_batch_latency_seconds",
            "Time to answer one Snowflake batch",
            ["function"],
            registry=r,
            buckets=(0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900),
        )
        self.queue_depth = Gauge("spcs_llm_queue_depth", "Rows admitted and not yet answered", registry=r)
        # -- overload: holding, refusing, the asynchronous protocol (docs/overload.md) --
        self.queue_bytes = Gauge(
            "spcs_llm_queue_bytes", "Request bytes of admitted batches not yet answered", registry=r
        )
        self.refused_batches = Counter(
            "spcs_llm_refused_batches",
            "Batches refused with 429 at admission, by the limit they hit (rows, bytes, wait)",
            ["reason"],
            registry=r,
        )
        self.queue_wait = Histogram(
            "spcs_llm_queue_wait_seconds",
            "Time a batch waited from admission until its first row got an engine "
            "place (per batch; the log line carries the query id)",
            registry=r,
            buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
        )
        self.async_accepted = Counter(
            "spcs_llm_async_accepted", "Batch POSTs answered 202 (answer on a later GET)", registry=r
        )
        self.async_polls = Counter(
            "spcs_llm_async_polls",
            "Polling GETs, by outcome (ready, pending, failed, unknown)",
            ["outcome"],
            registry=r,
        )
        self.async_abandoned = Counter(
            "spcs_llm_async_abandoned",
            "Batches answered 202 that no GET asked about in time: their work was cancelled and their memory freed",
            registry=r,
        )
        self.async_held = Gauge(
            "spcs_llm_async_held", "Batches answered 202 whose answer no GET has fetched yet", registry=r
        )
        self.in_flight = Gauge("spcs_llm_engine_in_flight", "Engine requests in flight", registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
