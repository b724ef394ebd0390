"""COUNT_TOKENS on the llama.cpp engine: the gateway's CPU per row, through httpx's client and through the per-row path.

With ``engine.kind = "llamacpp"`` every COUNT_TOKENS row is one POST to llama-server's ``/tokenize`` on its loopback
address (xllamacpp runs it in this process). This bench starts the engine with the packaged model and counts the
tokens of 1,000 distinct texts with the engine's concurrency in flight, five rounds, alternately: the way it was done
before (``httpx.AsyncClient.post``, the engine's own client) and the way it is done now (``count_tokens``: the
engines' per-row POST, engines/h1.py). CPU time is the event loop's thread (``time.thread_time``): llama.cpp's own
threads are not the gateway's cost.

    python bench/bench_llamacpp_tokenize.py [--rows 1000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable

import uvloop

from spcs_llm.config import EngineSettings
from spcs_llm.engines import resolve_model_file
from spcs_llm.engines.llamacpp import LlamaCppEngine

TEXT = "The parcel arrived three days late and the box was crushed, but the support team answered within an hour."


async def timed(engine: LlamaCppEngine, count: Callable[[str], Awaitable[int]], rows: int) -> tuple[float, float]:
    """Gateway-thread CPU and wall microseconds per row, ``rows`` distinct texts at the engine's concurrency."""
    slots = asyncio.Semaphore(engine.max_concurrency)

    async def one(i: int) -> int:
        async with slots:
            return await count(f"{i} {TEXT}")

    await asyncio.gather(*(one(i) for i in range(50)))  # connections open, caches warm
    c0, w0 = time.thread_time(), time.perf_counter()
    counts = await asyncio.gather(*(one(i) for i in range(rows)))
    cpu, wall = time.thread_time() - c0, time.perf_counter() - w0
    assert min(counts) > 10, counts[:5]
    return cpu / rows * 1e6, wall / rows * 1e6


async def main(args: argparse.Namespace) -> None:
    path, name = resolve_model_file(EngineSettings())
    engine = LlamaCppEngine(path, name, n_parallel=2, ctx_per_slot=1024, threads=1)
    await engine.start()
    assert engine._http is not None
    client = engine._http

    async def through_httpx(text: str) -> int:
        return len((await client.post("/tokenize", json={"content": text})).json()["tokens"])

    ways = {"httpx client (before)": through_httpx, "per-row path (now)": engine.count_tokens}
    results: dict[str, list[tuple[float, float]]] = {way: [] for way in ways}
    try:
        for _ in range(args.rounds):
            for way, count in ways.items():
                results[way].append(await timed(engine, count, args.rows))
    finally:
        await engine.aclose()
    print(f"COUNT_TOKENS on the llama.cpp engine ({name}), {args.rows} rows a round, median of {args.rounds} rounds")
    print(f"{'path':24s} {'loop CPU us/row':>16s} {'range':>13s} {'wall us/row':>12s}")
    for way, runs in results.items():
        cpu = [c for c, _ in runs]
        print(
            f"{way:24s} {statistics.median(cpu):16.1f} {min(cpu):6.0f}-{max(cpu):<6.0f} "
            f"{statistics.median(w for _, w in runs):12.1f}"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    uvloop.run(main(parser.parse_args()))
