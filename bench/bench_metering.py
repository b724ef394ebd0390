"""The per-row cost of usage metering (spcs_llm.usage) on the fake engine, beside the gateway's own per-row cost.

The whole server path runs in this process (httpx over ASGI → the Snowflake wire → answer_batch → scheduler →
fake engine, which costs nothing), once per variant and interleaved round by round so that a busy machine
slows every variant alike:

- ``off``: ``[usage] enabled = false``: the gateway alone;
- ``on``: metering on (attribution, per-call counting, one flush to SQLite per round);
- ``on+budgets``: on, with three ``[[budgets]]`` entries (each engine call checks them before it starts).

Per-row cost is this process's CPU time (``time.process_time``) over the rows answered. The metering's cost is
``on − off``; its ratio to ``off`` is the fraction it adds to the gateway's per-row cost. A second table times the
meter's own calls (check + engine_call, and the per-batch rows call) without the gateway.

    python bench/bench_metering.py [--rounds 6] [--batches 4] [--rows 1000] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import orjson

from spcs_llm.config import Settings
from spcs_llm.engines import FakeEngine
from spcs_llm.engines.base import Usage
from spcs_llm.server import create_app
from spcs_llm.usage.budgets import Budgets
from spcs_llm.usage.meter import Attribution, Meter, current
from spcs_llm.usage.settings import BudgetSettings

VARIANTS = ("off", "on", "on+budgets")
BUDGETS = [
    {"role": "ANALYST", "tokens": 10**12},
    {"function": "complete", "tokens": 10**12, "period": "month"},
    {"tokens": 10**12},
]


def settings(variant: str, db: Path) -> Settings:
    return Settings.model_validate(
        {
            "server": {"max_queue_rows": 10**7, "max_queue_seconds": 0, "result_cache_mb": 0, "batch_memory_mb": 0},
            "engine": {"kind": "fake", "max_output_tokens": 16},
            "embeddings": [],
            "usage": {"enabled": variant != "off", "db_path": str(db), "flush_seconds": 3600},
            "budgets": BUDGETS if variant == "on+budgets" else [],
        }
    )


def headers(query: str, batch: str) -> dict[str, str]:
    return {
        "sf-external-function-current-query-id": query,
        "sf-external-function-query-batch-id": batch,
        "sf-context-current-user": "ALICE",
        "sf-context-current-role": "ANALYST",
        "content-type": "application/json",
    }


async def one_round(client: httpx.AsyncClient, app: Any, tag: str, batches: int, rows: int) -> tuple[float, int]:
    """CPU seconds and rows for ``batches`` concurrent batches of ``rows`` distinct rows (plus one flush)."""
    bodies = [
        orjson.dumps({"data": [[i, "llama3.1-8b", f"row {tag} {b} {i} words to answer"] for i in range(rows)]})
        for b in range(batches)
    ]
    start = time.process_time()
    answers = await asyncio.gather(
        *(
            client.post("/functions/complete", content=body, headers=headers(f"q-{tag}-{b}", f"q-{tag}-{b}:1:1:0:0"))
            for b, body in enumerate(bodies)
        )
    )
    if app.state.usage is not None:
        app.state.usage.flush()
    cpu = time.process_time() - start
    assert all(a.status_code == 200 for a in answers), answers[0].text
    return cpu, batches * rows


async def gateway(rounds: int, batches: int, rows: int, workdir: Path) -> dict[str, list[float]]:
    from asgi_lifespan import LifespanManager

    per_row: dict[str, list[float]] = {v: [] for v in VARIANTS}
    apps = {
        v: create_app(settings(v, workdir / f"{v}.sqlite3"), engine=FakeEngine(record=False, max_concurrency=64))
        for v in VARIANTS
    }
    async with LifespanManager(apps["off"]), LifespanManager(apps["on"]), LifespanManager(apps["on+budgets"]):
        clients = {
            v: httpx.AsyncClient(transport=httpx.ASGITransport(a), base_url="http://b", timeout=600)
            for v, a in apps.items()
        }
        for v, a in apps.items():  # wait for the engines, and warm each path once
            while a.state.runtime is None:
                await asyncio.sleep(0.01)
            await one_round(clients[v], a, f"warm-{v}", 1, 100)
        for r in range(rounds):
            order = VARIANTS if r % 2 == 0 else VARIANTS[::-1]
            for v in order:
                gc.collect()  # each variant starts with the same garbage (none), so collections fall alike
                cpu, n = await one_round(clients[v], apps[v], f"{r}-{v}", batches, rows)
                per_row[v].append(cpu / n)
        for c in clients.values():
            await c.aclose()
    return per_row


def meter_alone(calls: int) -> dict[str, float]:
    """µs per engine call of the meter's own work (check before, count after), and per batch of rows()."""
    out = {}
    attr = Attribution("ALICE", "ANALYST", "q", "complete")
    token = current.set(attr)
    usage = Usage(40, 12, 30)
    try:
        for name, budgets in (("meter", None), ("meter+3 budgets", Budgets([BudgetSettings(**b) for b in BUDGETS]))):
            meter = Meter(budgets)
            start = time.perf_counter()
            for _ in range(calls):
                meter.check("fake-model")
                meter.engine_call("fake-model", usage, 0.001)
            out[name] = (time.perf_counter() - start) / calls * 1e6
        meter = Meter()
        start = time.perf_counter()
        for _ in range(calls):
            meter.rows(attr, 1000, 0)
        out["rows() per batch"] = (time.perf_counter() - start) / calls * 1e6
    finally:
        current.reset(token)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--batches", type=int, default=4, help="concurrent batches per round")
    parser.add_argument("--rows", type=int, default=1000, help="rows per batch")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        per_row = asyncio.run(gateway(args.rounds, args.batches, args.rows, Path(tmp)))
    alone = meter_alone(200_000)
    med = {v: statistics.median(xs) * 1e6 for v, xs in per_row.items()}
    result = {
        "per_row_us": med,
        "rounds": per_row,
        "meter_alone_us": alone,
        "metering_fraction": {v: (med[v] - med["off"]) / med["off"] for v in VARIANTS[1:]},
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(
        f"in-process gateway, fake engine, {args.rounds} rounds x {args.batches} x {args.rows}-row COMPLETE "
        f"batches (median CPU µs per row; python {sys.version.split()[0]})"
    )
    print(f"{'variant':<12} {'µs/row':>8} {'metering µs/row':>16} {'of gateway':>11}   rounds (µs/row)")
    for v in VARIANTS:
        extra = med[v] - med["off"]
        frac = "" if v == "off" else f"{extra / med['off']:>10.1%}"
        rounds = " ".join(f"{x * 1e6:.1f}" for x in per_row[v])
        print(f"{v:<12} {med[v]:>8.1f} {'' if v == 'off' else f'{extra:>16.2f}':>16} {frac:>11}   {rounds}")
    print("\nthe meter alone (no gateway), µs per call:")
    for k, us in alone.items():
        print(f"  {k:<18} {us:6.3f}")


if __name__ == "__main__":
    main()
