"""Local embedding runtime: start-up time, memory and rows/s for batches of short texts (and a few long ones).

Measures the model the way the service runs it (``LocalEmbedder.embed`` from an event loop, the forward pass in a
worker thread). Prints the machine's load average too: on a shared machine other work skews the numbers.

    python bench/bench_embed.py [--model DIR] [--batch-sizes 1,16,64] [--rows 128] [--plot out.png]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import resource
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from spcs_llm.engines.local_embed import LocalEmbedder
from spcs_llm.models import packaged_embed

SUBJECTS = [
    "The delivery",
    "Our support team",
    "This laptop",
    "The hotel room",
    "The new update",
    "My order",
    "The invoice",
    "The quarterly report",
    "The flight",
    "The coffee machine",
    "The onboarding",
    "The app",
]
VERDICTS = [
    "arrived two days late and the box was damaged",
    "answered quickly and solved the problem",
    "is fast, quiet and the battery lasts all day",
    "was clean but the wifi kept dropping",
    "broke the export feature for every customer",
    "shows the wrong shipping address",
]
LONG = (
    "Snowflake Cortex functions run large language models next to the data. This paragraph is repeated so that "
    "each row fills the model's whole input window, which is the worst case for an embedding request. "
) * 12


def short_texts(n: int) -> list[str]:
    """Distinct review-like sentences of 10-20 tokens, the typical EMBED_TEXT_768 row."""
    return [f"{SUBJECTS[i % len(SUBJECTS)]} {VERDICTS[(i // len(SUBJECTS)) % len(VERDICTS)]} (#{i})." for i in range(n)]


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@dataclass
class Row:
    label: str
    batch: int
    tokens_per_text: float
    seconds_per_batch: float

    @property
    def rows_per_s(self) -> float:
        return self.batch / self.seconds_per_batch


async def measure(embedder: LocalEmbedder, label: str, texts: list[str], batch: int, rows: int) -> Row:
    chunks = [texts[i : i + batch] for i in range(0, max(rows, batch), batch)]
    await embedder.embed(chunks[0])  # warm: first touch of the memory-mapped weights
    times = []
    for chunk in chunks:
        t0 = time.perf_counter()
        await embedder.embed(chunk)
        times.append(time.perf_counter() - t0)
    tokens = statistics.mean([await embedder.count_tokens(t) for t in texts[:batch]])
    return Row(label, batch, min(tokens, embedder.max_input_tokens), statistics.median(times))


async def measure_concurrent(embedder: LocalEmbedder, texts: list[str]) -> Row:
    """Every text as its own ``embed`` call, all at once: how a caller that sends rows one by one fares."""
    t0 = time.perf_counter()
    await asyncio.gather(*(embedder.embed([t]) for t in texts))
    tokens = statistics.mean([await embedder.count_tokens(t) for t in texts])
    return Row("1-row calls", len(texts), tokens, time.perf_counter() - t0)


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, help="a sentence-transformers model directory (default: the packaged one)")
    ap.add_argument("--batch-sizes", default="1,16,64")
    ap.add_argument("--rows", type=int, default=128, help="short rows embedded per batch size")
    ap.add_argument("--long-batch-sizes", default="1,4", help="batches of texts that fill the input window")
    ap.add_argument("--plot", type=Path, help="write a bar chart of rows/s here (needs matplotlib)")
    args = ap.parse_args()

    rss0 = rss_mb()
    t0 = time.perf_counter()
    path = args.model or packaged_embed.ensure_packaged_embedder(offline=True)
    embedder = LocalEmbedder(path)
    await embedder.start()
    startup = time.perf_counter() - t0
    rss_started = rss_mb()
    t0 = time.perf_counter()
    await embedder.embed(["warm up"])
    first = time.perf_counter() - t0

    results = []
    for b in (int(x) for x in args.batch_sizes.split(",")):
        results.append(await measure(embedder, "short", short_texts(max(args.rows, b)), b, args.rows))
    results.append(await measure_concurrent(embedder, short_texts(64)))
    for b in (int(x) for x in args.long_batch_sizes.split(",") if x):
        results.append(await measure(embedder, "long", [f"{i} {LONG}" for i in range(b * 2)], b, b * 2))

    load = os.getloadavg()
    print(
        f"model {embedder.model_name} ({embedder.dimension}-d, max {embedder.max_input_tokens} tokens) | "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load avg {load[0]:.1f}"
    )
    print(
        f"start-up {startup:.2f} s (construct + load weights) | first embed {first:.2f} s | "
        f"RSS {rss0:.0f} MB before, {rss_started:.0f} MB started, {rss_mb():.0f} MB after the runs, "
        f"peak {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB"
    )
    print(f"{'texts':11} {'batch':>6} {'tok/text':>9} {'s/batch':>9} {'rows/s':>9} {'tok/s':>9}")
    for r in results:
        print(
            f"{r.label:11} {r.batch:>6} {r.tokens_per_text:>9.0f} {r.seconds_per_batch:>9.3f} "
            f"{r.rows_per_s:>9.1f} {r.rows_per_s * r.tokens_per_text:>9.0f}"
        )
    await embedder.aclose()

    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3.5))
        labels = [f"{r.label}\nbatch {r.batch}" for r in results]
        ax.bar(labels, [r.rows_per_s for r in results])
        ax.set_ylabel("rows / s")
        ax.set_title(f"{embedder.model_name} on {os.cpu_count()} CPUs (numpy)")
        fig.tight_layout()
        args.plot.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.plot)
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    asyncio.run(main())
