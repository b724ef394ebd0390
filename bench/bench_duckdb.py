"""SENTIMENT through DuckDB (spcs_llm.duckdb, url mode) vs the HTTP batch path, same server, same engine, same run.

    python bench/bench_duckdb.py [--rows 128] [--rounds 3] [--engine llamacpp|fake] [--plot bench/out/duckdb.png]

Both paths send the same kind of rows (distinct short reviews, a per-path and per-round tag so that no row is a
cache hit) to one server: the HTTP path as Snowflake does, batches of ``--batch-rows`` rows all in flight at once; the
DuckDB path as ``SELECT sentiment(review) FROM reviews`` on a connection to the same server, which batches DuckDB's
chunks the same way. Rounds are interleaved and each path's median is kept (a shared machine drifts).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

import benchlib
import httpx

from spcs_llm import duckdb as local

ADJECTIVES = ["great", "awful", "fine", "cold", "lovely", "slow", "fresh", "noisy", "cheap", "friendly"]


def reviews(tag: str, n: int) -> list[str]:
    return [
        f"[{tag}-{i:04d}] The food was {ADJECTIVES[i % len(ADJECTIVES)]} and the staff "
        f"{ADJECTIVES[(i * 7) % len(ADJECTIVES)]}."
        for i in range(n)
    ]


async def http_path(base: str, texts: list[str], batch_rows: int) -> float:
    """Seconds to answer every row as Snowflake batches, all in flight at once; checks every row came back."""
    async with httpx.AsyncClient(base_url=base, timeout=600) as client:
        query = benchlib.new_id()

        async def batch(first: int) -> None:
            rows = [[first + i, t] for i, t in enumerate(texts[first : first + batch_rows])]
            headers = {benchlib.QUERY_ID_HEADER: query, benchlib.BATCH_ID_HEADER: benchlib.new_id()}
            r = await client.post("/functions/sentiment", json={"data": rows}, headers=headers)
            delay = 0.1
            while r.status_code == 202:  # held longer than async_after_secs: poll, as Snowflake does
                await asyncio.sleep(delay)
                delay = min(delay * 1.5, 2.0)
                r = await client.get("/functions/sentiment", headers=headers)
            r.raise_for_status()
            assert [row[0] for row in r.json()["data"]] == [row[0] for row in rows]

        start = time.perf_counter()
        await asyncio.gather(*(batch(i) for i in range(0, len(texts), batch_rows)))
        return time.perf_counter() - start


def duckdb_path(base: str, texts: list[str], batch_rows: int) -> float:
    con = local.connect(base, max_batch_rows=batch_rows)
    try:
        con.execute("CREATE TABLE reviews AS SELECT unnest($1) AS review", [texts])
        start = time.perf_counter()
        rows = con.execute("SELECT sentiment(review) FROM reviews").fetchall()
        elapsed = time.perf_counter() - start
        assert len(rows) == len(texts) and all(r[0] is not None for r in rows)
        return elapsed
    finally:
        local.close(con)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-rows", type=int, default=64)
    parser.add_argument("--engine", choices=["llamacpp", "fake"], default="llamacpp")
    parser.add_argument("--threads", type=int, help="llama.cpp threads (default: all cores)")
    parser.add_argument("--n-parallel", type=int, default=8)
    parser.add_argument("--plot", type=Path)
    args = parser.parse_args()
    engine = {"kind": args.engine, "n_parallel": args.n_parallel, "threads": args.threads}
    server = benchlib.start_server(
        {"engine": {k: v for k, v in engine.items() if v is not None}, "server": {"max_queue_seconds": 0}}
    )
    print(f"machine: {benchlib.machine()}")
    print(
        f"engine {args.engine}, {args.rows} distinct rows per path per round, batches of {args.batch_rows}, "
        f"{args.rounds} interleaved rounds",
        file=sys.stderr,
    )
    times: dict[str, list[float]] = {"HTTP batches": [], "DuckDB (url)": []}
    try:
        for r in range(args.rounds):
            times["HTTP batches"].append(
                asyncio.run(http_path(server.base, reviews(f"h{r}", args.rows), args.batch_rows))
            )
            times["DuckDB (url)"].append(duckdb_path(server.base, reviews(f"d{r}", args.rows), args.batch_rows))
            print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()), file=sys.stderr)
    finally:
        server.stop()
    rates = {k: args.rows / statistics.median(v) for k, v in times.items()}
    base = rates["HTTP batches"]
    print("\n| path | rows | median s | rows/s | vs HTTP |\n|---|---:|---:|---:|---:|")
    for k, v in times.items():
        print(f"| {k} | {args.rows} | {statistics.median(v):.2f} | {rates[k]:.1f} | {rates[k] / base:.2f}x |")
    if args.plot:
        plt = benchlib.pyplot()
        fig, ax = plt.subplots(figsize=(5, 3))
        ax.bar(list(rates), list(rates.values()), color=["#888", "#3a7"])
        ax.set_ylabel("rows/s (median)")
        ax.set_title(f"SENTIMENT, {args.engine}, {args.rows} rows")
        benchlib.save(fig, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
