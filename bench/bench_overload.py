"""Overload (issue 5, benchmark 5): 10x more concurrent batches than the engine holds, with a client that behaves
like Snowflake.

Every batch is sent at once. On 429 the client backs off (0.5 s, doubling, capped, with jitter) and re-sends the
SAME batch (same body, same ``sf-external-function-query-batch-id``), as Snowflake does. For every batch it records
the final status, the first try's status, the 429s, and any 5xx or client timeout (both must be 0), and checks
every row came back once, in order, with its own row number and a right value: on the fake engine exactly
``echo:<prompt>``; on the real engine a non-empty string.

Admission is set short so that 429s really happen: ``--max-queue-seconds`` (time-based admission, if this
server has ``server.max_queue_seconds``) or else ``--max-queue-rows``.

    python bench/bench_overload.py [--batches 160] [--rows-per-batch 2] [--engine llamacpp|fake] [--plot PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import benchlib
import httpx
import orjson

from spcs_llm.config import ServerSettings


@dataclass
class BatchOutcome:
    first_status: int | None = None
    final_status: int | None = None  # None: gave up (timeout, error, or still refused at the deadline)
    refusals: int = 0  # 429 answers
    server_errors: int = 0  # 5xx answers
    timeouts: int = 0
    bad_rows: int = 0  # rows missing, out of order, with a wrong number or a wrong value
    done_at: float = 0.0
    statuses: list[int] = field(default_factory=list)


@dataclass
class Plan:
    batches: int
    rows_per_batch: int
    backoff_start: float
    backoff_cap: float
    client_timeout: float
    give_up_s: float
    check_echo: bool


def expected_ok(value: object, prompt: str, echo: bool) -> bool:
    if echo:
        return value == f"echo:{prompt}"
    return isinstance(value, str) and value.strip() != ""


async def one_batch(client: httpx.AsyncClient, model: str, index: int, plan: Plan, start: float) -> BatchOutcome:
    """Send one batch until it is answered, backing off on 429 like Snowflake."""
    out = BatchOutcome()
    first_row = index * plan.rows_per_batch
    prompts = [f"[o{index:04d}-{j}] Name one thing about {benchlib.TOPICS[(first_row + j) % len(benchlib.TOPICS)]}."
               for j in range(plan.rows_per_batch)]
    numbers = list(range(first_row, first_row + plan.rows_per_batch))
    body = orjson.dumps({"data": [[n, model, p] for n, p in zip(numbers, prompts, strict=True)]})
    headers = {"content-type": "application/json", benchlib.QUERY_ID_HEADER: f"overload-{index % 8}",
               benchlib.BATCH_ID_HEADER: benchlib.new_id()}
    delay = plan.backoff_start
    while time.perf_counter() - start < plan.give_up_s:
        try:
            r = await client.post("/functions/complete", content=body, headers=headers, timeout=plan.client_timeout)
        except httpx.TimeoutException:
            out.timeouts += 1
            break
        out.statuses.append(r.status_code)
        if out.first_status is None:
            out.first_status = r.status_code
        if r.status_code == 429:
            out.refusals += 1
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))  # jitter: retries of many batches spread out
            delay = min(2 * delay, plan.backoff_cap)
            continue
        if r.status_code >= 500:
            out.server_errors += 1
        out.final_status = r.status_code
        if r.status_code == 200:
            data = r.json()["data"]
            got_numbers = [row[0] for row in data]
            out.bad_rows = sum(1 for a, b in zip(got_numbers, numbers, strict=False) if a != b)
            out.bad_rows += abs(len(data) - len(numbers))
            out.bad_rows += sum(1 for (_, v), p in zip(data, prompts, strict=False)
                                if not expected_ok(v, p, plan.check_echo))
        break
    out.done_at = time.perf_counter() - start
    return out


async def run(base: str, model: str, plan: Plan) -> tuple[list[BatchOutcome], float]:
    limits = httpx.Limits(max_connections=plan.batches + 8, max_keepalive_connections=plan.batches + 8)
    async with httpx.AsyncClient(base_url=base, limits=limits) as client:
        start = time.perf_counter()
        outcomes = await asyncio.gather(*(one_batch(client, model, i, plan, start) for i in range(plan.batches)))
        return list(outcomes), time.perf_counter() - start


def report(outcomes: list[BatchOutcome], seconds: float, plan: Plan, where: str, admission: str) -> bool:
    rows = plan.batches * plan.rows_per_batch
    first_ok = sum(o.first_status == 200 for o in outcomes)
    final_ok = sum(o.final_status == 200 for o in outcomes)
    refusals = sum(o.refusals for o in outcomes)
    retried = sum(o.refusals > 0 for o in outcomes)
    retried_ok = sum(o.refusals > 0 and o.final_status == 200 for o in outcomes)
    errors5 = sum(o.server_errors for o in outcomes)
    timeouts = sum(o.timeouts for o in outcomes)
    unfinished = sum(o.final_status is None for o in outcomes)
    other = sum(o.final_status not in (None, 200) and (o.final_status or 0) < 500 for o in outcomes)
    bad = sum(o.bad_rows for o in outcomes) + plan.rows_per_batch * (len(outcomes) - final_ok)
    print(f"\nOverload: {plan.batches} concurrent batches x {plan.rows_per_batch} rows; {admission}; "
          f"backoff {plan.backoff_start}s doubling, cap {plan.backoff_cap}s, jitter; {where}; {benchlib.machine()}")
    header = ["batches", "200 first try", "429 answers", "batches retried", "retried -> 200", "final 200",
              "5xx", "timeouts", "other 4xx", "unfinished", "rows lost/wrong", "seconds", "rows/s"]
    values = [plan.batches, first_ok, refusals, retried, retried_ok, final_ok, errors5, timeouts, other, unfinished,
              bad, f"{seconds:.1f}", f"{rows / seconds:.2f}"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---:|" * len(header))
    print("| " + " | ".join(str(v) for v in values) + " |")
    passed = final_ok == plan.batches and errors5 == 0 and timeouts == 0 and bad == 0
    print("every batch ended 200, none 5xx or timed out, no row lost or misordered: " + ("yes" if passed else "NO"))
    if refusals == 0:
        print("note: no 429 happened; admission was never reached (lower the admission limit to test overload)")
    return passed


def plot(outcomes: list[BatchOutcome], path: Path) -> None:
    plt = benchlib.pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    done = sorted(o.done_at for o in outcomes if o.final_status == 200)
    ax1.plot(done, range(1, len(done) + 1), color="#1f77b4")
    ax1.set_xlabel("seconds")
    ax1.set_ylabel("batches answered 200")
    ax1.set_title("batches completed over time")
    counts: dict[int, int] = {}
    for o in outcomes:
        counts[o.refusals] = counts.get(o.refusals, 0) + 1
    ax2.bar(list(counts), list(counts.values()), color="#ff7f0e")
    ax2.set_xlabel("429 answers before success")
    ax2.set_ylabel("batches")
    ax2.set_title("retries per batch")
    benchlib.save(fig, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", help="an already running spcs-llm (default: start one here)")
    ap.add_argument("--engine", choices=["llamacpp", "fake"], default="llamacpp")
    ap.add_argument("--model", help="model name in the rows (default: the first spcs-llm lists)")
    ap.add_argument("--n-parallel", type=int, default=8, help="engine slots (the gateway holds 2x in flight)")
    ap.add_argument("--batches", type=int, help="concurrent batches (default: 10x the gateway's concurrency)")
    ap.add_argument("--rows-per-batch", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=8, help="engine.max_output_tokens of the local server")
    ap.add_argument("--max-queue-seconds", type=float, default=4.0,
                    help="server.max_queue_seconds, where the server has it (default 4)")
    ap.add_argument("--max-queue-rows", type=int, default=32,
                    help="server.max_queue_rows (used when the server has no max_queue_seconds; default 32)")
    ap.add_argument("--backoff-start", type=float, default=0.5)
    ap.add_argument("--backoff-cap", type=float, default=8.0)
    ap.add_argument("--client-timeout", type=float, default=300.0, help="seconds one request may take")
    ap.add_argument("--give-up-s", type=float, default=900.0, help="stop retrying a batch after this long")
    ap.add_argument("--fake-delay", type=float, default=0.05, help="seconds per fake engine call")
    ap.add_argument("--threads", type=int, help="llama.cpp threads (default: all cores)")
    ap.add_argument("--plot", type=Path)
    args = ap.parse_args()

    local = None
    if args.url:
        base, where, concurrency = args.url.rstrip("/"), f"spcs-llm at {args.url}", None
        admission = "admission as configured on that server"
    else:
        server: dict[str, object] = {}
        if "max_queue_seconds" in ServerSettings.model_fields:
            server["max_queue_seconds"] = args.max_queue_seconds
            admission = f"server.max_queue_seconds = {args.max_queue_seconds}"
        else:
            server["max_queue_rows"] = args.max_queue_rows
            admission = f"server.max_queue_rows = {args.max_queue_rows} (this server has no max_queue_seconds)"
        local = benchlib.start_server({"server": server, "engine": {
            "kind": args.engine, "n_parallel": args.n_parallel, "threads": args.threads,
            "max_output_tokens": args.max_tokens if args.engine == "llamacpp" else None}})
        if args.engine == "fake":
            local.app.state.engine.delay = args.fake_delay
        base, where = local.base, f"{args.engine} in process, {args.n_parallel} slots"
        concurrency = local.gateway_concurrency
    batches = args.batches or 10 * (concurrency or 16)
    model = args.model or httpx.get(f"{base}/v1/models", timeout=30).json()["data"][0]["id"]
    plan = Plan(batches, args.rows_per_batch, args.backoff_start, args.backoff_cap, args.client_timeout,
                args.give_up_s, check_echo=args.engine == "fake" and not args.url)
    if concurrency:
        where += f", gateway concurrency {concurrency} (x{batches / concurrency:.0f} batches)"
    try:
        outcomes, seconds = asyncio.run(run(base, model, plan))
    finally:
        if local is not None:
            local.stop()
    passed = report(outcomes, seconds, plan, where, admission)
    if args.plot:
        plot(outcomes, args.plot)
    raise SystemExit(0 if passed else 1)


if __name__ == "__main__":
    main()
