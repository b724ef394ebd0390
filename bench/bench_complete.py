"""COMPLETE throughput: Snowflake batches through spcs-llm vs the seed's row-by-row proxy, same engine, same run.

The seed project's proxy answered a service-function batch by looping over its rows and, for each row,
opening a new HTTP client and POSTing one chat request to the engine's OpenAI endpoint. The baseline here
does exactly that against the llama.cpp server of the very engine that spcs-llm is using (its loopback HTTP
port), so both sides share the model, threads and slots, and only the request path differs.

    python bench/bench_complete.py [--rows 64] [--max-tokens 32] [--batch-sizes 1,16,64] [--plot out.png]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import uvicorn

from spcs_llm.config import Settings
from spcs_llm.server import create_app
from spcs_llm.server.health import wait_healthy

TOPICS = ["rivers", "bread", "chess", "volcanoes", "jazz", "bees", "glass", "trains", "tea", "clouds",
          "maps", "salt", "owls", "bridges", "paper", "tides"]


@dataclass
class Run:
    label: str
    rows: int
    seconds: float
    out_tokens: int

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds

    @property
    def tokens_per_s(self) -> float:
        return self.out_tokens / self.seconds


def prompts(n: int) -> list[str]:
    return [f"Write one sentence about {TOPICS[i % len(TOPICS)]} (note {i})." for i in range(n)]


def seed_proxy(engine_url: str, texts: list[str], max_tokens: int) -> Run:
    """The seed's design: rows in sequence, a new HTTP client per row, one request in flight."""
    start, tokens = time.perf_counter(), 0
    for text in texts:
        with httpx.Client(timeout=600) as client:
            r = client.post(f"{engine_url}/v1/chat/completions", json={
                "messages": [{"role": "user", "content": text}], "max_tokens": max_tokens, "temperature": 0})
            r.raise_for_status()
            tokens += r.json()["usage"]["completion_tokens"]
    return Run("seed proxy (row by row)", len(texts), time.perf_counter() - start, tokens)


def engine_direct(engine_url: str, texts: list[str], max_tokens: int, streams: int) -> Run:
    """The engine's ceiling: the same rows straight into llama.cpp's HTTP server, ``streams`` at a time."""
    limit = asyncio.Semaphore(streams)

    async def one(client: httpx.AsyncClient, text: str) -> int:
        async with limit:
            r = await client.post("/v1/chat/completions", json={
                "messages": [{"role": "user", "content": text}], "max_tokens": max_tokens, "temperature": 0})
            r.raise_for_status()
            return int(r.json()["usage"]["completion_tokens"])

    async def main() -> int:
        async with httpx.AsyncClient(base_url=engine_url, timeout=600) as client:
            return sum(await asyncio.gather(*(one(client, t) for t in texts)))

    start = time.perf_counter()
    tokens = asyncio.run(main())
    return Run(f"engine direct, {streams} streams", len(texts), time.perf_counter() - start, tokens)


def gateway(base: str, texts: list[str], max_tokens: int, batch_size: int, queries: int) -> Run:
    """``queries`` concurrent queries, each sending its share of rows to /functions/complete in batches."""
    rows = [["smollm2-135m-instruct", [{"role": "user", "content": t}], {"max_tokens": max_tokens}]
            for t in texts]

    async def one_query(client: httpx.AsyncClient, part: list[list]) -> int:
        tokens = 0
        for i in range(0, len(part), batch_size):
            chunk = part[i:i + batch_size]
            r = await client.post("/functions/complete", json={"data": [[j, *row] for j, row in enumerate(chunk)]})
            r.raise_for_status()
            tokens += sum(json.loads(v)["usage"]["completion_tokens"] for _, v in r.json()["data"])
        return tokens

    async def main() -> int:
        async with httpx.AsyncClient(base_url=base, timeout=600) as client:
            parts = [rows[q::queries] for q in range(queries)]
            return sum(await asyncio.gather(*(one_query(client, p) for p in parts)))

    start = time.perf_counter()
    tokens = asyncio.run(main())
    label = f"spcs-llm batch {batch_size}" + (f" x{queries} queries" if queries > 1 else "")
    return Run(label, len(texts), time.perf_counter() - start, tokens)


def start_server(n_parallel: int) -> tuple[str, str, uvicorn.Server]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = Settings.load(overrides={"engine": {"n_parallel": n_parallel}, "server": {"port": port}})
    app = create_app(settings)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    base = f"http://127.0.0.1:{port}"
    if not wait_healthy(base, timeout_s=300):
        raise SystemExit("server did not become healthy")
    engine_url = app.state.engine.http_url  # the same llama.cpp server, over loopback HTTP
    return base, engine_url, server


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--batch-sizes", default="1,16,64")
    ap.add_argument("--queries", type=int, default=1, help="concurrent queries for the gateway runs")
    ap.add_argument("--n-parallel", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=1, help="runs per configuration; the median time is kept")
    ap.add_argument("--plot", type=Path, help="write a PNG bar chart here")
    args = ap.parse_args()

    base, engine_url, server = start_server(args.n_parallel)
    texts = prompts(args.rows)
    gateway(base, texts[:4], args.max_tokens, 4, 1)  # warm up the model and the slots

    def median_run(fn, *a) -> Run:
        runs = [fn(*a) for _ in range(args.repeat)]
        return sorted(runs, key=lambda r: r.seconds)[len(runs) // 2]

    results = [median_run(seed_proxy, engine_url, texts, args.max_tokens),
               median_run(engine_direct, engine_url, texts, args.max_tokens, args.n_parallel)]
    for b in (int(x) for x in args.batch_sizes.split(",")):
        results.append(median_run(gateway, base, texts, args.max_tokens, b, args.queries))
    server.should_exit = True

    base_rate = results[0].rows_per_s
    print(f"\nCOMPLETE, {args.rows} distinct rows, max_tokens={args.max_tokens}, greedy; "
          f"llama.cpp SmolLM2-135M Q4_1, {args.n_parallel} slots; {os.cpu_count()} cores, "
          f"{platform.processor() or platform.machine()}, Python {sys.version.split()[0]}")
    print(f"{'path':34} {'rows':>5} {'seconds':>8} {'rows/s':>8} {'out tok/s':>10} {'vs seed':>8}")
    for r in results:
        print(f"{r.label:34} {r.rows:>5} {r.seconds:>8.2f} {r.rows_per_s:>8.2f} {r.tokens_per_s:>10.1f} "
              f"{r.rows_per_s / base_rate:>7.2f}x")
    if args.plot:
        plot(results, args.plot)
    print("tokens/row (same greedy answers on both paths):",
          statistics.mean(r.out_tokens / r.rows for r in results))


def plot(results: list[Run], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    ax.bar([r.label.replace("spcs-llm ", "").replace(", ", "\n") for r in results], [r.rows_per_s for r in results],
           color=["#999", "#bbb"] + ["#1f77b4"] * (len(results) - 2))
    ax.set_ylabel("rows / s")
    ax.set_title("COMPLETE through spcs-llm vs the seed's row-by-row proxy (same engine)")
    for i, r in enumerate(results):
        ax.text(i, r.rows_per_s, f"{r.rows_per_s / results[0].rows_per_s:.2f}x", ha="center", va="bottom")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    print(f"plot written to {path}")


if __name__ == "__main__":
    main()
