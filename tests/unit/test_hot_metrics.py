"""The per-row counters (metrics.HotCounter, HotHistogram) show on /metrics exactly as prometheus_client's own."""

from __future__ import annotations

import re

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from spcs_llm.metrics import HotCounter, HotHistogram, Metrics


def _text(registry: CollectorRegistry) -> str:
    """The exposition text with the _created timestamps (the time each was made) blanked."""
    return re.sub(r"^(\S*_created(?:\{[^}]*\})?) \S+$", r"\1 T", generate_latest(registry).decode(), flags=re.M)


def test_hot_counters_and_histograms_read_as_prometheus_clients_own() -> None:
    theirs, ours = CollectorRegistry(), CollectorRegistry()
    counters = (
        Counter("t_tokens", "Tokens", ["direction"], registry=theirs),
        HotCounter("t_tokens", "Tokens", ["direction"], registry=ours),
    )
    plain = (Counter("t_requests", "Requests", registry=theirs), HotCounter("t_requests", "Requests", registry=ours))
    buckets = (0.01, 0.05, 1, 300)
    histograms = (
        Histogram("t_latency_seconds", "Latency", buckets=buckets, registry=theirs),
        HotHistogram("t_latency_seconds", "Latency", buckets=buckets, registry=ours),
    )
    for c in counters:
        c.labels("in").inc(5)
        c.labels("out").inc(2.5)
        c.labels("in").inc()
    for c in plain:
        c.inc()
        c.inc(3)
    for h in histograms:
        for value in (0.001, 0.01, 0.02, 0.05, 2.0, 1000.0):  # on a bound, between, below all, above all
            h.observe(value)
    assert _text(ours) == _text(theirs)
    assert 't_tokens_total{direction="in"} 6.0' in _text(ours)
    assert 't_latency_seconds_bucket{le="0.01"} 2.0' in _text(ours)  # le: a value equal to a bound is in it


def test_the_apps_metrics_render_with_the_hot_ones() -> None:
    metrics = Metrics()
    metrics.engine_requests.inc()
    metrics.tokens.labels("out").inc(4)
    metrics.engine_latency.observe(0.2)
    text = metrics.render().decode()
    assert "spcs_llm_engine_requests_total 1.0" in text
    assert 'spcs_llm_tokens_total{direction="out"} 4.0' in text
    assert 'spcs_llm_engine_latency_seconds_bucket{le="0.25"} 1.0' in text
    assert "spcs_llm_engine_latency_seconds_count 1.0" in text
