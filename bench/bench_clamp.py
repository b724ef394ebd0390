"""The output clamp's cost per row (issue 12, audit M1), on a fake vLLM upstream over real loopback HTTP.

vLLM 0.10-0.31 answer 400 when prompt + ``max_tokens`` is over ``max_model_len``. spcs-llm's OpenAI-HTTP engine
sends the row as asked and, on that 400, once more with ``max_tokens = context - prompt`` (retry-on-400). The
alternative is to count first (``POST /tokenize`` with the chat messages) and clamp before sending. This script
times, on the strict stand-in (``tests/standin_vllm.py``: no model, so only the protocol's cost shows), per row:

  fits            a row whose budget fits: one request (what every row costs without a clamp)
  retry-on-400    a row that does not fit, as the engine handles it: a refused request, then the clamped one
  count-first     the alternative, for comparison: /tokenize, then one request with the clamped budget; it pays
                  the /tokenize round trip on rows that fit too ("count-first, row fits")
  upstream clamps the same row on vLLM >= 0.32, which clamps itself: one request

Rows run ``--concurrency`` at a time through one engine (as the scheduler drives it). The machine is shared, so
compare the ratios, not the absolute numbers.

    python bench/bench_clamp.py [--rows 300] [--concurrency 16] [--plot bench/out/clamp.png]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import benchlib

from spcs_llm.engines.base import ChatRequest, Message
from spcs_llm.engines.openai_http import OpenAIHttpEngine, chat_body
from spcs_llm.server.health import wait_healthy

STANDIN = Path(__file__).resolve().parents[1] / "tests" / "standin_vllm.py"
WINDOW = 4096
ROUNDS = 5


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_standin(version: str, model_dir: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {**os.environ, "STANDIN_VLLM_VERSION": version}
    proc = subprocess.Popen(
        [
            sys.executable,
            str(STANDIN),
            "serve",
            str(model_dir),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--served-model-name",
            "yi-1.5-6b-chat",
            "--max-model-len",
            str(WINDOW),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    if not wait_healthy(base, timeout_s=60, still_running=lambda: proc.poll() is None):
        proc.kill()
        raise SystemExit(f"the stand-in (vLLM {version}) did not start")
    return proc, base


def row(i: int, max_tokens: int) -> ChatRequest:
    return ChatRequest(messages=(Message("user", f"row {i}: answer in one word"),), max_tokens=max_tokens)


async def count_first(engine: OpenAIHttpEngine, request: ChatRequest) -> None:
    """The alternative: count the templated prompt with vLLM's /tokenize, clamp, send once."""
    messages = [{"role": m.role, "content": m.content} for m in request.messages]
    counted = await engine._up.post(
        f"{engine._up.root}/tokenize", {"model": engine.upstream_model, "messages": messages}
    )
    body = chat_body(request, engine.upstream_model, engine.structured_output)
    body["max_tokens"] = min(request.max_tokens, engine.context_window - int(counted["count"]))
    await engine._up.post("chat/completions", body)


async def timed(rows: int, concurrency: int, one: Callable[[int], Awaitable[Any]]) -> float:
    """Seconds per row, ``concurrency`` rows in flight."""
    gate = asyncio.Semaphore(concurrency)

    async def run(i: int) -> None:
        async with gate:
            await one(i)

    start = time.perf_counter()
    await asyncio.gather(*(run(i) for i in range(rows)))
    return (time.perf_counter() - start) / rows


async def measure(base_old: str, base_new: str, rows: int, concurrency: int) -> list[tuple[str, int, float]]:
    old = OpenAIHttpEngine(f"{base_old}/v1", "yi-1.5-6b-chat", max_concurrency=concurrency)
    new = OpenAIHttpEngine(f"{base_new}/v1", "yi-1.5-6b-chat", max_concurrency=concurrency)
    await old.start()
    await new.start()
    variants: list[tuple[str, int, Callable[[int], Awaitable[Any]]]] = [
        ("fits", 1, lambda i: old.chat(row(i, 16))),
        ("retry-on-400", 2, lambda i: old.chat(row(i, WINDOW))),
        ("count-first", 2, lambda i: count_first(old, row(i, WINDOW))),
        ("count-first, row fits", 2, lambda i: count_first(old, row(i, 16))),
        ("upstream clamps (0.32+)", 1, lambda i: new.chat(row(i, WINDOW))),
    ]
    for _, _, one in variants:  # warm-up: connections, first-call costs
        await timed(concurrency, concurrency, one)
    results: dict[str, list[float]] = {name: [] for name, _, _ in variants}
    for _ in range(ROUNDS):  # interleaved rounds, so that a burst of other work on the machine hits every variant
        for name, _, one in variants:
            results[name].append(await timed(rows, concurrency, one))
    await old.aclose()
    await new.aclose()
    return [(name, requests, statistics.median(results[name])) for name, requests, _ in variants]


def report(results: list[tuple[str, int, float]], rows: int, concurrency: int) -> None:
    base = results[0][2]
    print(
        f"\nclamp cost per row (median of {ROUNDS} rounds of {rows} rows), {concurrency} in flight, "
        f"stand-in vLLM over loopback HTTP; {benchlib.machine()}"
    )
    print(f"{'variant':<26}{'requests/row':>13}{'ms/row':>9}{'x fits':>8}{'extra ms/row':>14}")
    for name, requests, seconds in results:
        print(f"{name:<26}{requests:>13}{seconds * 1000:>9.3f}{seconds / base:>8.2f}{(seconds - base) * 1000:>14.3f}")


def plot(results: list[tuple[str, int, float]], path: Path) -> None:
    plt = benchlib.pyplot()
    fig, ax = plt.subplots(figsize=(7, 3))
    ax.barh([r[0] for r in results][::-1], [r[2] * 1000 for r in results][::-1])
    ax.set_xlabel("ms per row")
    ax.set_title("Output clamp: cost per row")
    benchlib.save(fig, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=300)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--plot", type=Path)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "Yi-1.5-6B-Chat"
        model.mkdir()
        (model / "config.json").write_text('{"num_attention_heads": 32, "num_key_value_heads": 4}')
        old, base_old = start_standin("0.11.0", model)
        new, base_new = start_standin("0.33.0", model)
        try:
            results = asyncio.run(measure(base_old, base_new, args.rows, args.concurrency))
        finally:
            for proc in (old, new):
                proc.terminate()
                proc.wait(timeout=30)
    report(results, args.rows, args.concurrency)
    if args.plot:
        plot(results, args.plot)


if __name__ == "__main__":
    main()
