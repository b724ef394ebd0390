"""Soak: 200k rows through the fake engine in Snowflake-shaped batches (batch and query ids, a few batches in
flight at once, some batches retried), printing the process's RSS at start, peak and end, rows/s over time, and
the bytes held by the result cache and the batch memory against their configured bounds.

The server is uvicorn on a thread of this process (a real HTTP server on loopback), so RSS includes the client,
which holds nothing between batches. Every text is distinct, so the result cache fills up and must evict.

    python bench/bench_soak.py [--rows 200000] [--batch-rows 500] [--parallel 4] [--cache-mb 16] [--batch-mb 8]
                               [--plot bench/out/soak.png]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import orjson
import uvicorn
from benchlib import machine, pyplot, save

from spcs_llm.config import EmbeddingSettings, Settings
from spcs_llm.server import create_app
from spcs_llm.server.health import wait_healthy

FUNCTIONS = ("sentiment", "complete", "embed_text_768", "summarize")


def rss_mib() -> tuple[float, float]:
    """(RSS, peak RSS) of this process in MiB, from /proc/self/status."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def rows_for(function: str, start: int, n: int) -> list[list[Any]]:
    texts = [
        f"soak row {start + i}: the parcel arrived {random.choice(['late', 'early', 'intact', 'torn'])}"
        for i in range(n)
    ]
    if function == "complete":
        return [[i, "llama3.1-8b", t] for i, t in enumerate(texts)]
    if function == "embed_text_768":
        return [[i, "snowflake-arctic-embed-m-v1.5", t] for i, t in enumerate(texts)]
    return [[i, t] for i, t in enumerate(texts)]


def start(cache_mb: int, batch_mb: int) -> tuple[str, Any, uvicorn.Server, threading.Thread]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = Settings.load(
        overrides={
            "engine": {"kind": "fake", "max_output_tokens": 32},
            "server": {
                "port": port,
                "log_level": "warning",
                "result_cache_mb": cache_mb,
                "batch_memory_mb": batch_mb,
                "max_queue_rows": 100_000,
                "max_queue_seconds": 0,
            },
        }
    ).model_copy(update={"embeddings": [EmbeddingSettings(kind="fake", model_name="fake-embed-768")]})
    app = create_app(settings)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    if not wait_healthy(base, timeout_s=60):
        raise SystemExit("server did not become healthy")
    return base, app, server, thread


async def soak(base: str, app: Any, args: argparse.Namespace) -> list[dict[str, float]]:
    samples: list[dict[str, float]] = []
    done = sent = 0
    t0 = time.perf_counter()
    last = (t0, 0)
    query = uuid.uuid4().hex
    lock = asyncio.Lock()

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal done, sent, last
        while True:
            async with lock:
                if sent >= args.rows:
                    return
                n = min(args.batch_rows, args.rows - sent)
                first, sent = sent, sent + n
            function = FUNCTIONS[(first // args.batch_rows) % len(FUNCTIONS)]
            body = orjson.dumps({"data": rows_for(function, first, n)})
            headers = {
                "sf-external-function-current-query-id": query,
                "content-type": "application/json",
                "sf-external-function-query-batch-id": f"{query}:{first}",
            }
            for _attempt in range(2 if first % (10 * args.batch_rows) == 0 else 1):  # every tenth batch is retried
                r = await client.post(f"{base}/functions/{function}", content=body, headers=headers)
                if r.status_code != 200 or len(orjson.loads(r.content)["data"]) != n:
                    raise SystemExit(f"{function}: {r.status_code} {r.text[:200]}")
            done += n
            now = time.perf_counter()
            if now - last[0] >= args.every or done >= args.rows:
                rss, peak = rss_mib()
                scheduler = app.state.runtime.scheduler
                samples.append(
                    {
                        "t": now - t0,
                        "rows": done,
                        "rate": (done - last[1]) / (now - last[0]),
                        "rss": rss,
                        "peak": peak,
                        "cache": scheduler.cache.bytes / 2**20,
                        "batches": app.state.batches.bytes / 2**20,
                    }
                )
                last = (now, done)

    async with httpx.AsyncClient(timeout=300) as client:
        await asyncio.gather(*(worker(client) for _ in range(args.parallel)))
    return samples


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--batch-rows", type=int, default=500)
    ap.add_argument("--parallel", type=int, default=4, help="batches in flight at once")
    ap.add_argument("--cache-mb", type=int, default=16, help="server.result_cache_mb")
    ap.add_argument("--batch-mb", type=int, default=8, help="server.batch_memory_mb")
    ap.add_argument("--every", type=float, default=2.0, help="seconds between samples")
    ap.add_argument("--plot", type=Path)
    args = ap.parse_args()
    random.seed(13)
    print(f"machine: {machine()} (shared with other work: rates are noisy)")
    base, app, server, thread = start(args.cache_mb, args.batch_mb)
    rss0, _ = rss_mib()
    try:
        samples = asyncio.run(soak(base, app, args))
    finally:
        server.should_exit = True
        thread.join(timeout=60)
    print(
        f"{args.rows} rows in batches of {args.batch_rows}, {args.parallel} in flight; bounds: result cache "
        f"{args.cache_mb} MiB, batch memory {args.batch_mb} MiB\n"
    )
    print(f"{'s':>7}{'rows':>9}{'rows/s':>9}{'RSS MiB':>9}{'peak':>7}{'cache MiB':>11}{'batches MiB':>13}")
    for s in samples:
        print(
            f"{s['t']:>7.1f}{s['rows']:>9.0f}{s['rate']:>9.0f}{s['rss']:>9.0f}{s['peak']:>7.0f}"
            f"{s['cache']:>11.1f}{s['batches']:>13.1f}"
        )
    end, peak = rss_mib()
    total = samples[-1]["t"]
    print(
        f"\nRSS start {rss0:.0f} MiB, peak {peak:.0f} MiB, end {end:.0f} MiB; {args.rows / total:.0f} rows/s "
        f"overall; result cache max {max(s['cache'] for s in samples):.1f}/{args.cache_mb} MiB, batch memory max "
        f"{max(s['batches'] for s in samples):.1f}/{args.batch_mb} MiB"
    )
    if args.plot:
        plt = pyplot()
        fig, (a, b) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
        t = [s["t"] for s in samples]
        a.plot(t, [s["rss"] for s in samples], label="RSS")
        a.plot(t, [s["cache"] for s in samples], label="result cache")
        a.plot(t, [s["batches"] for s in samples], label="batch memory")
        a.set_ylabel("MiB")
        a.legend()
        b.plot(t, [s["rate"] for s in samples])
        b.set_ylabel("rows/s")
        b.set_xlabel("seconds")
        save(fig, args.plot)


if __name__ == "__main__":
    main()
