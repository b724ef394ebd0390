"""COMPLETE throughput (issue 5, benchmarks 1 and 2): Snowflake batches through spcs-llm vs the seed's row-by-row
proxy vs the engine driven directly, all on the same engine in the same run.

Paths, each with its own distinct prompts (a per-path tag in every prompt, rows of equal length), so that no path
is answered from a cache an earlier path filled (llama.cpp's per-slot prompt cache, spcs-llm's result cache):
- seed proxy: the seed project's design: rows in sequence, a new HTTP client per row, one request in flight,
  straight into the engine's OpenAI endpoint;
- engine direct at 1 stream and at N streams (N = the engine's slots): the engine's own ceiling;
- spcs-llm ``/functions/complete`` at each batch size, with 1 and with 4 concurrent queries; each query sends
  its batches one after the other with its own ``sf-external-function-current-query-id`` and a fresh
  ``sf-external-function-query-batch-id`` per batch;
- benchmark 2 (gateway efficiency): one 256-row batch through the gateway (the batch 256 x1 run; the scheduler
  keeps C requests in flight) vs 256 rows straight into the engine, C at a time.

By default it starts spcs-llm in this process on the packaged llama.cpp model. ``--url`` and ``--engine-url``
point it at an already running spcs-llm and its engine instead (e.g. vLLM on a GPU box; see the README).

    python bench/bench_complete.py [--n-parallel 8] [--max-tokens 16] [--plot bench/out/complete.png]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import benchlib
import httpx
import orjson

from spcs_llm.client import AsyncPollingTransport


@dataclass
class Run:
    label: str
    kind: str  # "seed", "direct", "gateway", "bench2-direct"
    rows: int
    seconds: float
    out_tokens: int

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds

    @property
    def tokens_per_s(self) -> float:
        return self.out_tokens / self.seconds


class Bench:
    def __init__(self, base: str, engine_url: str, model: str, engine_model: str, max_tokens: int) -> None:
        self.base, self.engine_url = base, engine_url
        self.model, self.engine_model, self.max_tokens = model, engine_model, max_tokens
        self._tags = 0

    @staticmethod
    def progress(run: Run) -> Run:
        print(f"  {run.label}: {run.rows} rows in {run.seconds:.1f} s", file=sys.stderr, flush=True)
        return run

    def prompts(self, n: int) -> list[str]:
        """Fresh prompts for one path: a new tag each call."""
        self._tags += 1
        return benchlib.tagged_prompts(f"p{self._tags:02d}", n)

    def _engine_body(self, text: str) -> dict:
        return {
            "model": self.engine_model,
            "messages": [{"role": "user", "content": text}],
            "max_tokens": self.max_tokens,
            "temperature": 0,
        }

    def seed_proxy(self, n: int) -> Run:
        """The seed's design: rows in sequence, a new HTTP client per row, one request in flight."""
        texts, tokens = self.prompts(n), 0
        start = time.perf_counter()
        for text in texts:
            with httpx.Client(timeout=600) as client:
                r = client.post(f"{self.engine_url}/v1/chat/completions", json=self._engine_body(text))
                r.raise_for_status()
                tokens += r.json()["usage"]["completion_tokens"]
        return self.progress(Run("seed proxy (row by row)", "seed", n, time.perf_counter() - start, tokens))

    def direct(self, n: int, streams: int, kind: str = "direct") -> Run:
        """The same kind of rows straight into the engine's HTTP server, ``streams`` at a time."""
        texts = self.prompts(n)
        limit = asyncio.Semaphore(streams)

        async def one(client: httpx.AsyncClient, text: str) -> int:
            async with limit:
                r = await client.post("/v1/chat/completions", json=self._engine_body(text))
                r.raise_for_status()
                return int(r.json()["usage"]["completion_tokens"])

        async def main() -> int:
            limits = httpx.Limits(max_connections=streams, max_keepalive_connections=streams)
            async with httpx.AsyncClient(base_url=self.engine_url, timeout=3600, limits=limits) as client:
                return sum(await asyncio.gather(*(one(client, t) for t in texts)))

        start = time.perf_counter()
        tokens = asyncio.run(main())
        return self.progress(
            Run(
                f"engine direct, {streams} stream{'s' if streams > 1 else ''}",
                kind,
                n,
                time.perf_counter() - start,
                tokens,
            )
        )

    def gateway(self, n: int, batch_size: int, queries: int, label: str | None = None) -> Run:
        """``queries`` concurrent queries, each sending its share of ``n`` rows in batches, one batch at a time."""
        texts = self.prompts(n)

        async def one_query(client: httpx.AsyncClient, part: list[str]) -> int:
            tokens, query_id = 0, benchlib.new_id()
            for i in range(0, len(part), batch_size):
                rows = benchlib.complete_rows(self.model, part[i : i + batch_size], self.max_tokens)
                r = await client.post(
                    "/functions/complete",
                    content=orjson.dumps({"data": rows}),
                    headers={
                        "content-type": "application/json",
                        benchlib.QUERY_ID_HEADER: query_id,
                        benchlib.BATCH_ID_HEADER: benchlib.new_id(),
                    },
                )
                r.raise_for_status()
                data = r.json()["data"]
                if [row[0] for row in data] != [row[0] for row in rows]:
                    raise SystemExit("the gateway answered rows out of order")
                tokens += sum(orjson.loads(v)["usage"]["completion_tokens"] for _, v in data)
            return tokens

        async def main() -> int:
            async with httpx.AsyncClient(base_url=self.base, timeout=3600, transport=AsyncPollingTransport()) as client:
                parts = [texts[q::queries] for q in range(queries)]
                return sum(await asyncio.gather(*(one_query(client, p) for p in parts)))

        start = time.perf_counter()
        tokens = asyncio.run(main())
        label = label or f"spcs-llm batch {batch_size} x{queries} quer{'ies' if queries > 1 else 'y'}"
        return self.progress(Run(label, "gateway", n, time.perf_counter() - start, tokens))


def first_model(url: str) -> str:
    """The first model an OpenAI-compatible server lists (llama.cpp, vLLM and spcs-llm all answer /v1/models)."""
    r = httpx.get(f"{url}/v1/models", timeout=30)
    r.raise_for_status()
    return str(r.json()["data"][0]["id"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", help="an already running spcs-llm (default: start one here on llama.cpp)")
    ap.add_argument("--engine-url", help="with --url: the engine behind it, the base of its /v1 (e.g. vLLM's port)")
    ap.add_argument("--model", help="model name in the rows (default: the first spcs-llm lists)")
    ap.add_argument("--engine-model", help="model name sent to the engine directly (default: the first it lists)")
    ap.add_argument(
        "--streams",
        type=int,
        help="engine slots N for the ceiling (default: --n-parallel; with --url: required, e.g. vLLM's --max-num-seqs)",
    )
    ap.add_argument(
        "--gateway-concurrency",
        type=int,
        help="requests spcs-llm keeps in flight to the engine, "
        "for benchmark 2 (default: read from the local server; with --url: required)",
    )
    ap.add_argument("--n-parallel", type=int, default=8, help="llama.cpp slots of the local server (default 8)")
    ap.add_argument("--threads", type=int, help="llama.cpp threads of the local server (default: all cores)")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--rows", type=int, default=64, help="rows per gateway run (at least batch x queries)")
    ap.add_argument(
        "--slow-rows", type=int, default=24, help="rows for the one-at-a-time paths (seed, 1 stream, batch 1 x1)"
    )
    ap.add_argument(
        "--bench2-rows",
        type=int,
        default=256,
        help="rows of the one-batch run of benchmark 2 (the batch-256 x1 run when it is in the matrix)",
    )
    ap.add_argument("--batch-sizes", default="1,16,64,256")
    ap.add_argument("--queries", default="1,4", help="concurrent query counts (comma separated)")
    ap.add_argument(
        "--max-run-rows",
        type=int,
        default=256,
        help="skip a batch x queries run that needs more rows than this (batch 256 x 4 queries needs 1,024)",
    )
    ap.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run every path this many times, interleaved; "
        "report each path's median (use 3 on a shared, noisy machine)",
    )
    ap.add_argument("--plot", type=Path, help="write a PNG chart here")
    args = ap.parse_args()

    local = None
    if args.url:
        if not (args.engine_url and args.streams and args.gateway_concurrency):
            ap.error("--url needs --engine-url, --streams and --gateway-concurrency")
        base, engine_url = args.url.rstrip("/"), args.engine_url.rstrip("/").removesuffix("/v1")
        streams, concurrency = args.streams, args.gateway_concurrency
        where = f"spcs-llm at {base}, engine at {engine_url}"
    else:
        local = benchlib.start_server({"engine": {"n_parallel": args.n_parallel, "threads": args.threads}})
        base, engine_url = local.base, local.engine_url
        streams, concurrency = args.streams or args.n_parallel, local.gateway_concurrency
        where = f"llama.cpp in process, {args.n_parallel} slots"
    bench = Bench(
        base, engine_url, args.model or first_model(base), args.engine_model or first_model(engine_url), args.max_tokens
    )
    # The plan: every path as a thunk. With --rounds > 1 the plan runs again (reversed every other round, fresh
    # prompts each time) and each path keeps its median, so drifting load on a shared machine hits all paths alike.
    plan: list[Callable[[], Run]] = [
        lambda: bench.seed_proxy(args.slow_rows),
        lambda: bench.direct(args.slow_rows, 1),
        lambda: bench.direct(args.rows, streams),
    ]
    skipped: list[str] = []
    for q in (int(x) for x in args.queries.split(",")):
        for b in (int(x) for x in args.batch_sizes.split(",")):
            n = args.slow_rows if b == 1 and q == 1 else max(args.rows, b * q)
            if n > args.max_run_rows:
                skipped.append(f"batch {b} x{q} queries ({n} rows > --max-run-rows {args.max_run_rows})")
            elif not (b == args.bench2_rows and q == 1):  # that one runs next to its benchmark-2 partner
                plan.append(lambda n=n, b=b, q=q: bench.gateway(n, b, q))
    # Benchmark 2, back to back: one big batch (the scheduler keeps `concurrency` rows in flight) vs the same
    # number of rows straight into the engine with that many streams.
    plan.append(lambda: bench.gateway(args.bench2_rows, args.bench2_rows, 1))
    plan.append(lambda: bench.direct(args.bench2_rows, concurrency, kind="bench2-direct"))
    try:
        bench.gateway(2 * streams, 2 * streams, 1)  # warm up the model, the slots and the connections
        t0 = time.perf_counter()
        rounds: list[list[Run]] = []
        for i in range(args.rounds):
            order = plan if i % 2 == 0 else plan[::-1]
            runs = [step() for step in order]
            rounds.append(runs if i % 2 == 0 else runs[::-1])
        total = time.perf_counter() - t0
    finally:
        if local is not None:
            local.stop()
    results = [sorted(same, key=lambda r: r.seconds)[len(same) // 2] for same in zip(*rounds, strict=True)]
    for r in results:
        if r.kind == "bench2-direct":
            r.label = f"bench 2: engine direct, {concurrency} streams"
    if args.rounds > 1:
        print(f"median of {args.rounds} rounds per path")
    report(results, args, where, concurrency, total, skipped)
    if args.plot:
        plot(results, args.plot)


def report(
    results: list[Run], args: argparse.Namespace, where: str, concurrency: int, total: float, skipped: list[str]
) -> None:
    seed = next(r for r in results if r.kind == "seed")
    ceiling = max((r for r in results if r.kind in ("direct", "bench2-direct")), key=lambda r: r.rows_per_s)
    print(f"\nCOMPLETE, max_tokens={args.max_tokens}, greedy, distinct prompts per path; {where}; {benchlib.machine()}")
    print(f"{'path':42} {'rows':>5} {'seconds':>8} {'rows/s':>7} {'out tok/s':>9} {'vs seed':>8} {'vs ceiling':>10}")
    for r in results:
        print(
            f"{r.label:42} {r.rows:>5} {r.seconds:>8.2f} {r.rows_per_s:>7.2f} {r.tokens_per_s:>9.1f} "
            f"{r.rows_per_s / seed.rows_per_s:>7.2f}x {r.rows_per_s / ceiling.rows_per_s:>9.2f}x"
        )
    for s in skipped:
        print(f"skipped: {s}")
    one = next(r for r in results if r.kind == "direct" and r.label.endswith("1 stream"))
    print(
        f"engine gain from batching: {ceiling.rows_per_s / one.rows_per_s:.2f}x "
        f"({ceiling.label} vs 1 stream); the most any path can gain over one-at-a-time here"
    )
    b64 = [r for r in results if r.kind == "gateway" and " batch 64 " in r.label + " "]
    for r in b64:
        print(f"benchmark 1, {r.label}: {r.rows_per_s / seed.rows_per_s:.2f}x the seed (goal >= 2x)")
    gw2 = next(r for r in results if r.label == f"spcs-llm batch {args.bench2_rows} x1 query")
    dr2 = next(r for r in results if r.kind == "bench2-direct")
    print(
        f"benchmark 2, gateway efficiency at {concurrency} in flight: {gw2.label} "
        f"{gw2.rows_per_s / dr2.rows_per_s:.3f}x {dr2.label.removeprefix('bench 2: ')} (goal >= 0.95x)"
    )
    print(f"measured part took {total:.0f} s")


def plot(results: list[Run], path: Path) -> None:
    plt = benchlib.pyplot()
    seed = next(r for r in results if r.kind == "seed")
    colors = {"seed": "#999", "direct": "#bbb", "gateway": "#1f77b4", "bench2-direct": "#bbb"}
    fig, ax = plt.subplots(figsize=(11, 4.5))
    labels = [r.label.replace("spcs-llm ", "").replace("bench 2: ", "b2 ").replace(", ", "\n") for r in results]
    ax.bar(range(len(results)), [r.rows_per_s for r in results], color=[colors[r.kind] for r in results])
    ax.set_xticks(range(len(results)), labels, rotation=35, ha="right", fontsize=7)
    ax.set_ylabel("rows / s")
    ax.set_title("COMPLETE: spcs-llm vs the seed's row-by-row proxy vs the engine directly (same engine, same run)")
    for i, r in enumerate(results):
        ax.text(i, r.rows_per_s, f"{r.rows_per_s / seed.rows_per_s:.2f}x", ha="center", va="bottom", fontsize=7)
    benchlib.save(fig, path)


if __name__ == "__main__":
    main()
