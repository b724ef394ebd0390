"""Overload as Snowflake really retries (issue 19, benchmark 5): several queries of many batches at 2x, 5x and 10x
the pool's capacity, with a client that follows Snowflake's policy for service functions, old admission beside new.

The client plays Snowflake (snowflake-contract.md §1.4, §1.5):
- each query sends its batches ``--in-flight`` at a time (same ``sf-external-function-current-query-id``, a batch
  id per batch, rows numbered from 0 in each batch);
- a 404/429/5xx answer (to a POST or a polling GET) spends one of ``--max-batch-retries`` (MAX_BATCH_RETRIES,
  Snowflake's default 3); the SAME batch is re-sent after ``--backoff`` seconds, doubling, with jitter x0.5-1.0;
- a 202 is polled with GETs (same headers, no body) after ``--poll`` seconds, growing x1.5 up to ``--poll-cap``;
- a batch that spends its retries, gets another 4xx, or runs past ``--batch-timeout`` (BATCH_TIMEOUT_SECS, which
  counts retries and polling) fails; ON_BATCH_FAILURE = ABORT fails its query at once, and the query's other
  batches are not sent (those in flight are dropped, as Snowflake drops them).

The server is spcs-llm in this process over the fake engine at a fixed rate (``--places`` calls of ``--delay``
seconds at once). All of Snowflake's times and the server's time settings are multiplied by ``--scale`` (0.01:
one real second is 10 ms here), so a run that stands for an hour of Snowflake time takes seconds.

**Capacity** is what the pool finishes within the old admission window (``max_queue_seconds`` = 120 s, scaled):
2x/5x/10x offer that many times as many rows, split evenly across ``--queries`` queries, all started at once.
Each load runs against three servers: **before** (``admission = "refuse"``, the old rule: 429 once the queue
would take longer than 120 s, or before any row has finished more than 4 engine-fulls) and **after** with the
default configuration, synchronous (``async_responses = false``: held on the POST) and asynchronous (202 +
polling GET). The **stream** line is the starvation check: one big query while small queries keep arriving
for as long as it runs.

Reported per line: failed queries; rows lost (rows of failed queries) and rows wrong (in 200 answers: missing,
misordered, wrong number or value); 429, 202 and 404 answers, and connections dropped without an answer
(retried like a 5xx); time to finish per query (min/median/max, in
Snowflake seconds, i.e. divided by ``--scale``) against the ideal (all rows at the engine's rate, shared
evenly); spread = (max - min) / max of the finish times. The script exits 1 unless every "after" line has 0
failed queries and 0 rows lost or wrong.
``--variants before,after-sync,after-async,tight-r3,tight-r10`` adds a server whose memory bound
(``--tight-rows``) is too small for the load, so that 429s happen, with Snowflake retrying 3 and 10 times: the
case MAX_BATCH_RETRIES is for (docs/overload.md).

    python bench/bench_overload.py [--loads 2,5,10] [--scale 0.01] [--max-batch-retries 3] [--plot PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import random
import socket
import statistics
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import benchlib
import httpx
import orjson
import uvicorn

from spcs_llm.config import Settings
from spcs_llm.server import create_app
from spcs_llm.server.health import wait_healthy

DROPPED = 599  # stands for a connection that broke without an answer; Snowflake retries it like a 5xx
RETRIED = {404, 429, 500, 502, 503, 504, DROPPED}  # what Snowflake retries for a service function (bcr-1938)
OLD_WINDOW_S = 120.0  # the old default max_queue_seconds: what "capacity" is measured against


@dataclass
class Policy:
    """Snowflake's side, in real seconds of this run (already scaled)."""

    max_retries: int
    backoff: float
    poll: float
    poll_cap: float
    batch_timeout: float


@dataclass
class Query:
    name: str
    batches: list[list[str]]  # prompts per batch
    start_at: float = 0.0  # seconds after the run starts
    failed: str | None = None  # why, when it failed
    finished: float | None = None  # seconds after the run started
    rows_wrong: int = 0
    statuses: dict[int, int] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        return sum(len(b) for b in self.batches)


class Abort(Exception):
    """A batch failed: ON_BATCH_FAILURE = ABORT fails the query."""


async def send_batch(
    client: httpx.AsyncClient, q: Query, prompts: list[str], policy: Policy, rng: random.Random
) -> None:
    """One batch, as Snowflake sends it: retries with back-off, polling on 202; raises Abort when it fails."""
    body = orjson.dumps({"data": [[i, "fake-model", p] for i, p in enumerate(prompts)]})
    headers = {
        "content-type": "application/json",
        benchlib.QUERY_ID_HEADER: q.name,
        benchlib.BATCH_ID_HEADER: benchlib.new_id(),
    }
    started, retries = time.perf_counter(), 0

    def count(status: int) -> None:
        q.statuses[status] = q.statuses.get(status, 0) + 1

    async def request(method: str) -> httpx.Response:
        left = policy.batch_timeout - (time.perf_counter() - started)
        if left <= 0:
            raise Abort("BATCH_TIMEOUT_SECS passed")
        try:
            if method == "POST":
                return await client.post("/functions/complete", content=body, headers=headers, timeout=left)
            return await client.get("/functions/complete", headers=headers, timeout=left)
        except httpx.TimeoutException as exc:
            raise Abort("BATCH_TIMEOUT_SECS passed") from exc
        except httpx.TransportError as exc:  # e.g. a keep-alive connection closed under the request
            return httpx.Response(DROPPED, text=f"connection dropped: {type(exc).__name__}")

    while True:
        r = await request("POST")
        count(r.status_code)
        poll = policy.poll
        while r.status_code == 202:
            await asyncio.sleep(poll)
            poll = min(poll * 1.5, policy.poll_cap)
            r = await request("GET")
            count(r.status_code)
        if r.status_code == 200:
            data = r.json()["data"]
            expected = [[i, f"echo:{p}"] for i, p in enumerate(prompts)]
            q.rows_wrong += sum(1 for a, b in zip(data, expected, strict=False) if a != b)
            q.rows_wrong += abs(len(data) - len(expected))
            return
        if r.status_code not in RETRIED:
            raise Abort(f"{r.status_code} {r.text[:80]}")
        retries += 1
        if retries > policy.max_retries:
            raise Abort(f"MAX_BATCH_RETRIES spent (last {r.status_code})")
        await asyncio.sleep(policy.backoff * 2 ** (retries - 1) * rng.uniform(0.5, 1.0))


async def run_query(
    client: httpx.AsyncClient, q: Query, in_flight: int, policy: Policy, rng: random.Random, t0: float
) -> None:
    await asyncio.sleep(max(0.0, q.start_at - (time.perf_counter() - t0)))
    pending = list(q.batches)

    async def worker() -> None:
        while pending:
            prompts = pending.pop(0)
            await send_batch(client, q, prompts, policy, rng)

    workers = [asyncio.ensure_future(worker()) for _ in range(in_flight)]
    try:
        await asyncio.gather(*workers)
        q.finished = time.perf_counter() - t0
    except Abort as exc:
        q.failed = str(exc)
        for w in workers:  # ABORT: the query's other batches are dropped
            w.cancel()
        await asyncio.gather(*workers, return_exceptions=True)


def make_queries(n_queries: int, rows_each: int, rows_per_batch: int, tag: str) -> list[Query]:
    queries = []
    for k in range(n_queries):
        prompts = [
            f"[{tag}-q{k}-r{i}] one thing about {benchlib.TOPICS[i % len(benchlib.TOPICS)]}" for i in range(rows_each)
        ]
        batches = [prompts[i : i + rows_per_batch] for i in range(0, rows_each, rows_per_batch)]
        queries.append(Query(f"{tag}-query-{k}", batches))
    return queries


def stream_queries(capacity: int, rows_per_batch: int, rate: float, tag: str) -> list[Query]:
    """One big query (3x capacity) at t=0, and small ones (capacity/4 rows) arriving as fast as the pool can
    answer them alone, for as long as the big query would take if it had the pool to itself."""
    big = make_queries(1, 3 * capacity, rows_per_batch, f"{tag}-big")[0]
    small_rows = max(rows_per_batch, capacity // 4)
    every = small_rows / rate
    horizon = 3 * capacity / rate
    smalls = []
    for k in range(int(horizon / every)):
        q = make_queries(1, small_rows, rows_per_batch, f"{tag}-s{k}")[0]
        q.start_at = k * every
        smalls.append(q)
    return [big, *smalls]


@dataclass
class Server:
    base: str
    app: Any
    server: uvicorn.Server
    thread: threading.Thread

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=60)


def start(server: dict[str, Any], places: int, delay: float) -> Server:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = Settings.load(
        overrides={
            "server": {**server, "port": port, "log_level": "warning", "max_concurrency": places},
            "engine": {"kind": "fake", "n_parallel": places},
        }
    ).model_copy(update={"embeddings": []})
    app = create_app(settings)
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    if not wait_healthy(base, timeout_s=60):
        raise SystemExit("server did not become healthy")
    app.state.engine.delay = delay
    return Server(base, app, srv, thread)


async def drive(base: str, queries: list[Query], in_flight: int, policy: Policy, seed: int) -> float:
    rng = random.Random(seed)
    limits = httpx.Limits(max_connections=2000, max_keepalive_connections=2000)
    async with httpx.AsyncClient(base_url=base, limits=limits) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*(run_query(client, q, in_flight, policy, rng, t0) for q in queries))
        return time.perf_counter() - t0


@dataclass
class Line:
    load: str
    variant: str
    queries: list[Query]
    rows: int
    ideal: float  # Snowflake seconds
    scale: float

    def finish_times(self) -> list[float]:
        return sorted((q.finished - q.start_at) / self.scale for q in self.queries if q.finished is not None)

    def cells(self) -> list[str]:
        failed = sum(q.failed is not None for q in self.queries)
        lost = sum(q.rows for q in self.queries if q.failed is not None)
        wrong = sum(q.rows_wrong for q in self.queries)
        status = {s: sum(q.statuses.get(s, 0) for q in self.queries) for s in (429, 202, 404, DROPPED)}
        gets = sum(q.statuses.get(202, 0) for q in self.queries)  # each 202 is followed by one GET
        times = self.finish_times()
        if times:
            finish = f"{times[0]:.0f} / {statistics.median(times):.0f} / {times[-1]:.0f}"
            spread = f"{(times[-1] - times[0]) / times[-1]:.2f}" if self.load != "stream" else "-"
        else:
            finish, spread = "-", "-"
        return [
            self.load,
            self.variant,
            str(len(self.queries)),
            str(self.rows),
            str(failed),
            str(lost),
            str(wrong),
            str(status[429]),
            str(status[202]),
            str(gets),
            str(status[404]),
            str(status[DROPPED]),
            finish,
            f"{self.ideal:.0f}",
            spread,
        ]

    @property
    def clean(self) -> bool:
        return all(q.failed is None and q.rows_wrong == 0 for q in self.queries)


def stream_note(line: Line) -> str:
    big = line.queries[0]
    smalls = [(q.finished - q.start_at) / line.scale for q in line.queries[1:] if q.finished is not None]
    big_s = f"{big.finished / line.scale:.0f} s" if big.finished is not None else f"FAILED ({big.failed})"
    small = f"median {statistics.median(smalls):.0f} s" if smalls else "none finished"
    return (
        f"  stream, {line.variant}: big query ({big.rows} rows) finished in {big_s} "
        f"(alone: {big.rows / (line.rows / line.ideal):.0f} s, whole stream: {line.ideal:.0f} s); "
        f"{len(line.queries) - 1} small queries, {small}"
    )


VARIANTS = {
    "before": {"admission": "refuse", "max_queue_seconds": OLD_WINDOW_S, "async_responses": False},
    "after-sync": {"admission": "hold", "async_responses": False},
    "after-async": {"admission": "hold", "async_responses": True},
    # memory too small for the load (max_queue_rows = --tight-rows): 429s happen, so MAX_BATCH_RETRIES matters
    "tight-r3": {"admission": "hold", "async_responses": True, "retries": 3},
    "tight-r10": {"admission": "hold", "async_responses": True, "retries": 10},
}
DEFAULT_VARIANTS = "before,after-sync,after-async"


def scaled_server(variant: dict[str, Any], scale: float) -> dict[str, Any]:
    """The variant's settings with every time multiplied by ``scale`` (defaults from ServerSettings)."""
    defaults = Settings().server
    out = {k: v for k, v in variant.items() if k != "retries"}
    out["batch_timeout_secs"] = max(1, round(defaults.batch_timeout_secs * scale))
    out["async_after_secs"] = defaults.async_after_secs * scale
    out["async_keep_secs"] = defaults.async_keep_secs * scale
    if "max_queue_seconds" in out:
        out["max_queue_seconds"] = out["max_queue_seconds"] * scale
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--loads", default="2,5,10", help="multiples of the pool's capacity (comma-separated)")
    ap.add_argument(
        "--variants",
        default=DEFAULT_VARIANTS,
        help="which of: " + ", ".join(VARIANTS) + " (tight-*: "
        "max_queue_rows = --tight-rows, Snowflake retrying 3 or 10 times)",
    )
    ap.add_argument("--tight-rows", type=int, default=128, help="max_queue_rows of the tight-* variants")
    ap.add_argument("--no-stream", action="store_true", help="skip the starvation (stream) line")
    ap.add_argument("--scale", type=float, default=0.01, help="real seconds per Snowflake second")
    ap.add_argument("--places", type=int, default=8, help="engine calls at once (fake engine)")
    ap.add_argument("--delay", type=float, default=0.05, help="seconds per fake engine call (real)")
    ap.add_argument("--queries", type=int, default=8, help="concurrent queries per load")
    ap.add_argument("--rows-per-batch", type=int, default=16, help="rows per batch (MAX_BATCH_ROWS)")
    ap.add_argument("--in-flight", type=int, default=4, help="batches each query keeps in flight")
    ap.add_argument("--max-batch-retries", type=int, default=3, help="MAX_BATCH_RETRIES (Snowflake's default 3)")
    ap.add_argument("--backoff", type=float, default=1.0, help="first retry delay, Snowflake seconds (doubling)")
    ap.add_argument("--poll", type=float, default=1.0, help="first poll delay after a 202, Snowflake seconds")
    ap.add_argument("--poll-cap", type=float, default=30.0, help="longest poll delay, Snowflake seconds")
    ap.add_argument("--batch-timeout", type=float, default=3600.0, help="BATCH_TIMEOUT_SECS, Snowflake seconds")
    ap.add_argument("--seed", type=int, default=19)
    ap.add_argument("--plot", type=Path)
    args = ap.parse_args()

    s = args.scale
    policy = Policy(args.max_batch_retries, args.backoff * s, args.poll * s, args.poll_cap * s, args.batch_timeout * s)
    rate = args.places / args.delay  # rows per real second
    capacity = round(rate * OLD_WINDOW_S * s)  # rows the pool finishes in the old 120 s window
    loads = [float(x) for x in args.loads.split(",")]
    variants = [v.strip() for v in args.variants.split(",")]
    print(
        f"Overload: {args.queries} queries at once, batches of {args.rows_per_batch} rows, {args.in_flight} in "
        f"flight per query; fake engine {args.places} x {args.delay}s = {rate:.0f} rows/s; scale {s} (Snowflake "
        f"seconds shown); capacity = {capacity} rows (120 s of the pool); Snowflake: MAX_BATCH_RETRIES = "
        f"{args.max_batch_retries}, back-off {args.backoff}s doubling x0.5-1.0 jitter, polls from {args.poll}s "
        f"x1.5 to {args.poll_cap}s, BATCH_TIMEOUT_SECS = {args.batch_timeout:.0f}, ABORT; {benchlib.machine()}"
    )
    lines: list[Line] = []
    jobs: list[tuple[str, list[Query] | None]] = [(f"{x:g}x", None) for x in loads]
    if not args.no_stream:
        jobs.append(("stream", None))
    for load, _ in jobs:
        for variant in variants:
            if load == "stream":
                queries = stream_queries(capacity, args.rows_per_batch, rate, f"{variant[:5]}-stream")
            else:
                rows_each = max(args.rows_per_batch, round(float(load[:-1]) * capacity / args.queries))
                queries = make_queries(args.queries, rows_each, args.rows_per_batch, f"{variant[:5]}-{load}")
            rows = sum(q.rows for q in queries)
            spec = VARIANTS[variant]
            settings = scaled_server(spec, s)
            if variant.startswith("tight"):
                settings["max_queue_rows"] = args.tight_rows
            server = start(settings, args.places, args.delay)
            retries = spec.get("retries", args.max_batch_retries)
            try:
                asyncio.run(
                    drive(
                        server.base,
                        queries,
                        args.in_flight,
                        dataclasses.replace(policy, max_retries=retries),
                        args.seed,
                    )
                )
            finally:
                server.stop()
            # ideal: every row at the engine's full rate (stream: or until the last query arrives)
            ideal = max(rows / rate, max(q.start_at for q in queries)) / s
            lines.append(Line(load, variant, queries, rows, ideal, s))
            print("  done: " + " | ".join(lines[-1].cells()), flush=True)

    header = [
        "load",
        "admission",
        "queries",
        "rows",
        "failed queries",
        "rows lost",
        "rows wrong",
        "429",
        "202",
        "GETs",
        "404",
        "dropped",
        "finish s min / median / max",
        "ideal s",
        "spread",
    ]
    print()
    print("| " + " | ".join(header) + " |")
    print("|---|---|" + "---:|" * (len(header) - 2))
    for line in lines:
        print("| " + " | ".join(line.cells()) + " |")
    for line in lines:
        if line.load == "stream":
            print(stream_note(line))
    after = [line for line in lines if line.variant.startswith("after")]
    passed = all(line.clean for line in after)
    print("every 'after' line: 0 failed queries, 0 rows lost or wrong: " + ("yes" if passed else "NO"))
    for line in lines:
        for q in line.queries:
            if q.failed and line in after:
                print(f"  {line.load} {line.variant} {q.name}: {q.failed}")
    if args.plot:
        plot(lines, args.plot)
    raise SystemExit(0 if passed else 1)


def plot(lines: list[Line], path: Path) -> None:
    plt = benchlib.pyplot()
    fig, ax = plt.subplots(figsize=(9, 4))
    for i, line in enumerate(x for x in lines if x.load != "stream"):
        times = line.finish_times()
        ax.scatter([i] * len(times), times, s=12)
        ax.scatter([i], [line.ideal], marker="_", s=300, color="black")
    labels = [f"{x.load}\n{x.variant}" for x in lines if x.load != "stream"]
    ax.set_xticks(range(len(labels)), labels, fontsize=7)
    ax.set_ylabel("query finish time, Snowflake seconds")
    ax.set_title("finish time per query (bar: ideal); failed queries are not shown")
    benchlib.save(fig, path)


if __name__ == "__main__":
    main()
