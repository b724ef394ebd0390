"""What reading vLLM's embeddings costs the gateway, per vector: float JSON against base64 float32.

With ``engine = "vllm"`` every embedding comes back from the vLLM child over HTTP, and the gateway turns each
response into vectors (``OpenAIEmbedder``). On a GPU that parse, not the model, can set the pace of
``EMBED_TEXT_768`` over a table (docs/bench-gateway.md, "On a GPU"), so this bench times it alone: the real
``OpenAIEmbedder`` against an in-process vLLM-shaped upstream (``httpx.MockTransport``, the bodies made once up
front, as vLLM 0.11.0 writes them: ``tolist()`` of the float32 tensor, or its bytes in base64), 64 texts a call.

Variants, measured alternately round by round in one run (the median of the rounds is kept):

- ``base64``: what spcs-llm asks vLLM for (``encoding_format: "base64"``): ``np.frombuffer`` and numpy;
- ``float``: the float JSON that other OpenAI-compatible servers send, read by orjson and numpy;
- ``float, before``: the float JSON read as the code before this bench did it (``response.json()``, the stdlib
  parser, then a Python loop normalising each vector), written out here as it was.

CPU time is this thread's (``time.thread_time``): what one gateway core spends per vector.

    python bench/bench_embed_upstream.py [--dims 768,1024] [--rounds 7] [--calls 40] [--plot out.png] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import math
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np

from spcs_llm.engines.openai_http import OpenAIEmbedder

BATCH = 64


def bodies(dim: int) -> dict[tuple[str, int], bytes]:
    """/v1/embeddings answers for 64 texts (and for 1: the start-up probe) in both encodings, from the same
    float32 vectors."""
    vectors = np.random.default_rng(dim).normal(size=(BATCH, dim)).astype(np.float32)

    def body(rows: list[Any]) -> bytes:
        data = [{"index": i, "object": "embedding", "embedding": r} for i, r in enumerate(rows)]
        usage = {"prompt_tokens": 7 * len(rows), "total_tokens": 7 * len(rows)}
        return json.dumps({"object": "list", "model": "e5", "data": data, "usage": usage}).encode()

    out = {}
    for n in (1, BATCH):
        out["float", n] = body([v.tolist() for v in vectors[:n]])
        out["base64", n] = body([base64.b64encode(v.tobytes()).decode() for v in vectors[:n]])
    return out


def upstream(answers: dict[tuple[str, int], bytes]) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/models"):
            return httpx.Response(200, json={"data": [{"id": "e5", "owned_by": "vllm"}]})
        asked = json.loads(request.content)
        key = (asked.get("encoding_format", "float"), len(asked["input"]))
        return httpx.Response(200, content=answers[key], headers={"content-type": "application/json"})

    return httpx.MockTransport(handle)


def before(response: httpx.Response) -> list[list[float]]:
    """The previous reading of a float answer: the stdlib JSON parser and a Python loop per vector."""
    rows = sorted(response.json()["data"], key=lambda d: d.get("index", 0))
    out = []
    for row in rows:
        vector = row["embedding"]
        norm = math.sqrt(sum(x * x for x in vector)) or 1.0
        out.append([float(x) / norm for x in vector])
    return out


async def variants(dim: int) -> dict[str, Callable[[], Any]]:
    answers = bodies(dim)
    texts = [f"text {i}" for i in range(BATCH)]
    out: dict[str, Callable[[], Any]] = {}
    for name, b64 in (("base64", True), ("float", False)):
        embedder = OpenAIEmbedder("http://up/v1", "e5", dimension=dim, transport=upstream(answers), base64=b64)
        await embedder.start()
        out[name] = lambda e=embedder: e.embed_counted(texts)
    client = httpx.AsyncClient(transport=upstream(answers), base_url="http://up/v1")

    async def old() -> list[list[float]]:
        return before(await client.post("embeddings", json={"model": "e5", "input": texts}))

    out["float, before"] = old
    return out


async def measure(dims: list[int], rounds: int, calls: int) -> list[dict[str, Any]]:
    results = []
    for dim in dims:
        runs = await variants(dim)
        for call in runs.values():  # warm up
            await call()
        per_vector: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(rounds):
            for name, call in runs.items():
                t0 = time.thread_time()
                for _ in range(calls):
                    await call()
                per_vector[name].append((time.thread_time() - t0) / (calls * BATCH) * 1e6)
        base = statistics.median(per_vector["float, before"])
        for name, samples in per_vector.items():
            us = statistics.median(samples)
            results.append({"dim": dim, "variant": name, "us_per_vector": us, "speedup_vs_before": base / us})
    return results


def table(results: list[dict[str, Any]]) -> str:
    lines = [f"{'dim':>5}  {'variant':<15} {'us/vector':>10} {'vectors/CPU-s':>14} {'vs before':>10}"]
    for r in results:
        lines.append(
            f"{r['dim']:>5}  {r['variant']:<15} {r['us_per_vector']:>10.1f} {1e6 / r['us_per_vector']:>14,.0f}"
            f" {r['speedup_vs_before']:>9.1f}x"
        )
    return "\n".join(lines)


def plot(results: list[dict[str, Any]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dims = sorted({r["dim"] for r in results})
    names = list(dict.fromkeys(r["variant"] for r in results))
    fig, ax = plt.subplots(figsize=(7, 3.5))
    width = 0.8 / len(names)
    for k, name in enumerate(names):
        values = [next(r["us_per_vector"] for r in results if r["dim"] == d and r["variant"] == name) for d in dims]
        ax.bar([i + k * width for i in range(len(dims))], values, width, label=name)
    ax.set_xticks([i + width * (len(names) - 1) / 2 for i in range(len(dims))], [f"{d}-d" for d in dims])
    ax.set_ylabel("gateway CPU µs per vector")
    ax.set_title("Reading vLLM's /v1/embeddings answers (64 texts a call)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dims", default="768,1024")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=40, help="calls of 64 texts per variant and round")
    parser.add_argument("--plot")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = asyncio.run(measure([int(d) for d in args.dims.split(",")], args.rounds, args.calls))
    if args.json:
        json.dump(results, sys.stdout, indent=1)
    else:
        print(table(results))
    if args.plot:
        plot(results, args.plot)


if __name__ == "__main__":
    main()
