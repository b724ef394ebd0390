"""What one request to vLLM costs the gateway's core: the client side of the engine hop, per call.

With ``engine.kind = "vllm"`` every COMPLETE row is one ``/v1/chat/completions`` request from the gateway to the
vLLM child on loopback, and every label step (SENTIMENT, CLASSIFY_TEXT, AI_FILTER, each aspect of
ENTITY_SENTIMENT) is one more (``OpenAIHttpEngine.next_token``). ``bench_gateway.py`` runs the fake engine inside
the gateway, so that hop is not in its figures; this bench measures it alone: the real ``OpenAIHttpEngine``
(httpx, the pooled client the gateway uses) in this process, pinned to one core, against an upstream in another
process on the other core that answers with bodies shaped as vLLM 0.11.0 writes them (``id``, ``choices`` with
``message``, ``logprobs.content`` with each token's ``bytes`` and ``top_logprobs``, ``usage``; the bodies made
once up front, so the upstream's own cost does not matter). CPU time is this thread's (``time.thread_time``),
so only the client's work counts: encoding the body, HTTP/1.1 over the socket, reading and parsing the answer.

Calls, each with ``--in-flight`` requests at once (64: the engine's default concurrency):

- ``chat``: COMPLETE's request (a ~35-word prompt), a 40-token answer, no logprobs;
- ``chat, schema + 10 logprobs``: SENTIMENT's generated fallback (a JSON schema, a 3-token answer with 10
  alternatives each);
- ``label step, top 10`` / ``top 20``: one scored step (``next_token``), SENTIMENT's 10 alternatives and
  ENTITY_SENTIMENT's / CLASSIFY_TEXT's 20.

    python bench/bench_engine_hop.py [--before REV] [--rounds 5] [--calls 1000] [--in-flight 64] [--plot out.png]

With ``--before REV`` the same rounds also run that revision's ``src`` (each round in a fresh process per code,
alternately, against the same upstream), and the table gives the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bench_gateway import ROOT, extract_revision, machine, run_worker, start_upstream

from spcs_llm.engines.base import ChatRequest, Message
from spcs_llm.engines.openai_http import OpenAIHttpEngine

PROMPT = (
    "The parcel arrived three days late and the box was crushed, but the support team answered within an hour, "
    "refunded the shipping and sent a replacement that works well. Would order again, though not for a gift."
)
ANSWER_WORDS = 40
SENTIMENT_SCHEMA = {
    "type": "object",
    "properties": {"sentiment": {"type": "string", "enum": ["positive", "negative", "neutral", "mixed", "unknown"]}},
    "required": ["sentiment"],
}


def _token(text: str, logprob: float, top: int) -> dict[str, Any]:
    """A token as vLLM 0.11.0's chat completion writes it (protocol.py ChatCompletionLogProb): its bytes too."""
    entry = {"token": text, "logprob": logprob, "bytes": list(text.encode())}
    alternatives = [
        {"token": f"{text}{k}", "logprob": logprob - k, "bytes": list(f"{text}{k}".encode())} for k in range(top)
    ]
    return {**entry, "top_logprobs": alternatives}


def completion(content: str, tokens: list[str], top: int, prompt_tokens: int) -> bytes:
    """A /v1/chat/completions answer with vLLM 0.11.0's fields (ChatCompletionResponse, ChatCompletionResponse's
    choice and message), logprobs when ``top`` > 0."""
    choice = {
        "index": 0,
        "message": {
            "role": "assistant",
            "content": content,
            "refusal": None,
            "annotations": None,
            "audio": None,
            "function_call": None,
            "tool_calls": [],
            "reasoning_content": None,
        },
        "logprobs": {"content": [_token(t, -0.25, top) for t in tokens]} if top else None,
        "finish_reason": "stop" if len(tokens) > 1 else "length",
        "stop_reason": None,
        "token_ids": None,
    }
    body = {
        "id": "chatcmpl-5f0e6d1c8a2b4e3f9a7c6b5d4e3f2a1b",
        "object": "chat.completion",
        "created": 1764460800,
        "model": "qwen",
        "choices": [choice],
        "service_tier": None,
        "system_fingerprint": None,
        "usage": {
            "prompt_tokens": prompt_tokens,
            "total_tokens": prompt_tokens + len(tokens),
            "completion_tokens": len(tokens),
            "prompt_tokens_details": None,
        },
        "prompt_logprobs": None,
        "prompt_token_ids": None,
        "kv_transfer_params": None,
    }
    return json.dumps(body).encode()


def answers() -> dict[str, bytes]:
    words = [f" word{i}" for i in range(ANSWER_WORDS)]
    sentiment = ['{"sentiment": "', "positive", '"}']
    return {
        "chat": completion("".join(words), words, 0, 64),
        "schema": completion("".join(sentiment), sentiment, 10, 80),
        "step10": completion("pos", ["pos"], 10, 80),
        "step20": completion("pos", ["pos"], 20, 90),
        "models": json.dumps(
            {"object": "list", "data": [{"id": "qwen", "object": "model", "owned_by": "vllm", "max_model_len": 8192}]}
        ).encode(),
    }


_ANSWERS: dict[str, bytes] = {}


async def canned_answer(method: str, path: str, body: bytes) -> tuple[int, bytes]:
    """The upstream's answer (``bench/fake_upstream.py PORT bench_engine_hop:canned_answer``, in its own process on
    the other core): the body made up front for what the request asks (a schema, logprobs and their number), as
    the vLLM child would be asked; 404 for a GET other than /v1/models (no version check is made)."""
    if not _ANSWERS:
        _ANSWERS.update(answers())
    if path.endswith("/models"):
        return 200, _ANSWERS["models"]
    if method != "POST":
        return 404, b"{}"
    asked = json.loads(body)
    if not asked.get("logprobs"):
        return 200, _ANSWERS["chat"]
    if "response_format" in asked:
        return 200, _ANSWERS["schema"]
    return 200, _ANSWERS["step10" if asked["top_logprobs"] == 10 else "step20"]


def calls(engine: OpenAIHttpEngine) -> dict[str, Callable[[int], Awaitable[Any]]]:
    """Each kind of call, for a distinct row ``i`` (the prompt differs, as rows do)."""
    schema = ChatRequest.schema_key(SENTIMENT_SCHEMA)

    def messages(i: int) -> tuple[Message, ...]:
        return (Message("system", "Answer with the sentiment of the review."), Message("user", f"{i} {PROMPT}"))

    return {
        "chat": lambda i: engine.chat(ChatRequest(messages(i), max_tokens=256, temperature=0.0)),
        "chat, schema + 10 logprobs": lambda i: engine.chat(
            ChatRequest(messages(i), max_tokens=16, temperature=0.0, json_schema=schema, top_logprobs=10)
        ),
        "label step, top 10": lambda i: engine.next_token(messages(i), '{"sentiment": "', 10),
        "label step, top 20": lambda i: engine.next_token(messages(i), '{"sentiment": "', 20),
    }


async def measure(base: str, n: int, in_flight: int) -> list[dict[str, Any]]:
    """One round: each kind of call ``n`` times, ``in_flight`` at once, after one warm-up pass (the pool's
    connections, the code's first runs); client CPU microseconds per call and calls per wall second."""
    engine = OpenAIHttpEngine(base, "qwen", max_concurrency=in_flight)
    await engine.start()

    async def run(call: Callable[[int], Awaitable[Any]], count: int) -> tuple[float, float]:
        c0, w0 = time.thread_time(), time.perf_counter()
        for start in range(0, count, in_flight):
            await asyncio.gather(*(call(i) for i in range(start, min(count, start + in_flight))))
        return (time.thread_time() - c0) / count * 1e6, count / (time.perf_counter() - w0)

    out = []
    for name, call in calls(engine).items():
        await run(call, min(n, 4 * in_flight))
        us, per_s = await run(call, n)
        out.append({"call": name, "us_per_call": us, "calls_per_s_wall": per_s})
    await engine.aclose()
    return out


def worker(args: argparse.Namespace) -> None:
    """``--worker``: one round against ``--upstream`` in this process (run with the PYTHONPATH of the code
    measured), printed as JSON."""
    run = measure(args.upstream, args.calls, args.in_flight)
    json.dump(asyncio.run(run) if args.loop == "asyncio" else __import__("uvloop").run(run), sys.stdout)


def rounds(codes: list[tuple[str, Path]], base: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    """``--rounds`` rounds, each code in its own process per round, alternately (so a change in the machine's
    load reaches both alike); the median of the rounds per code and call, with the range."""
    samples: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for _ in range(args.rounds):
        for code, src in codes:
            cmd = [sys.executable, __file__, "--worker", "--upstream", base, "--calls", str(args.calls)]
            cmd += ["--in-flight", str(args.in_flight), "--loop", args.loop]
            for r in run_worker(cmd, src, args.client_core):
                samples.setdefault((code, r["call"]), []).append((r["us_per_call"], r["calls_per_s_wall"]))
    return [
        {
            "code": code,
            "call": name,
            "us_per_call": statistics.median(s[0] for s in got),
            "us_range": [min(s[0] for s in got), max(s[0] for s in got)],
            "calls_per_s_wall": statistics.median(s[1] for s in got),
        }
        for (code, name), got in samples.items()
    ]


def table(results: list[dict[str, Any]]) -> str:
    codes = list(dict.fromkeys(r["code"] for r in results))
    before = {r["call"]: r["us_per_call"] for r in results if r["code"] == "before"}
    lines = [
        f"{'call':<28} {'code':<7} {'client CPU us/call':>19} {'range':>11} {'calls/CPU-s':>12} {'calls/s wall':>13}"
        + (f" {'vs before':>10}" if "before" in codes else "")
    ]
    for r in results:
        low, high = r["us_range"]
        ratio = f" {before[r['call']] / r['us_per_call']:>9.1f}x" if "before" in codes else ""
        lines.append(
            f"{r['call']:<28} {r['code']:<7} {r['us_per_call']:>19.1f} {f'{low:.0f}-{high:.0f}':>11}"
            f" {1e6 / r['us_per_call']:>12,.0f} {r['calls_per_s_wall']:>13,.0f}{ratio}"
        )
    return "\n".join(lines)


def plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    codes = list(dict.fromkeys(r["code"] for r in results))
    names = list(dict.fromkeys(r["call"] for r in results))
    fig, ax = plt.subplots(figsize=(8, 3.6))
    height = 0.8 / len(codes)
    colours = {"before": "#aaaaaa", "after": "#1f77b4"}
    for k, code in enumerate(sorted(codes, key=lambda c: c != "before")):
        values = [next(r["us_per_call"] for r in results if r["code"] == code and r["call"] == n) for n in names]
        ax.barh([i + k * height for i in range(len(names))], values, height, label=code, color=colours.get(code))
    ax.set_yticks([i + height * (len(codes) - 1) / 2 for i in range(len(names))], names)
    ax.invert_yaxis()
    ax.set_xlabel("gateway CPU µs per request (client side)")
    ax.set_title("One request to a vLLM-shaped upstream (OpenAIHttpEngine)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    print(f"plot written to {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=1000, help="calls per kind and round")
    parser.add_argument("--in-flight", type=int, default=64)
    parser.add_argument("--before", metavar="REV", help="also measure this git revision's src, alternately")
    parser.add_argument("--client-core", type=int, default=0)
    parser.add_argument("--upstream-core", type=int, default=1)
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop", help="uvloop: the server's")
    parser.add_argument("--plot", type=Path)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--upstream", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    proc, base = start_upstream(args.upstream_core, "bench_engine_hop:canned_answer")
    with tempfile.TemporaryDirectory() as tmp:
        codes = [("after", ROOT / "src")]
        if args.before:
            codes.append(("before", extract_revision(args.before, Path(tmp))))
        try:
            results = rounds(codes, base, args)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    order = list(dict.fromkeys(r["call"] for r in results))
    results.sort(key=lambda r: (order.index(r["call"]), r["code"] != "before"))
    if args.json:
        json.dump(results, sys.stdout, indent=1)
    else:
        print(f"the engine hop, {args.in_flight} requests in flight, {args.loop}; {machine()}")
        print(table(results))
    if args.plot:
        plot(results, args.plot)


if __name__ == "__main__":
    main()
