"""Prometheus metrics, one registry per app (no module-level globals, so tests and apps never share counts)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class Metrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.rows = Counter("spcs_llm_rows", "Rows received in Snowflake batches", ["function"], registry=r)
        self.batches = Counter(
            "spcs_llm_batches", "Batches answered, by HTTP status", ["function", "status"], registry=r
        )
        self.errors = Counter("spcs_llm_errors", "Errors by kind", ["kind"], registry=r)
        self.tokens = Counter("spcs_llm_tokens", "Tokens through the engine", ["direction"], registry=r)
        self.engine_requests = Counter("spcs_llm_engine_requests", "Requests sent to the engine", registry=r)
        self.dedup_hits = Counter("spcs_llm_dedup_hits", "Requests answered by an identical one in flight", registry=r)
        self.cache_hits = Counter(
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
        self.prompt_tokens_cached = Counter(
            "spcs_llm_prompt_tokens_cached",
            "Prompt tokens the engine reused from its prefix cache (as reported by the engine)",
            registry=r,
        )
        self.engine_latency = Histogram(
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
