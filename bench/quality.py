"""Answer quality of the task functions on small labelled sets shipped in bench/data/ (made for this repo).

Starts ``spcs-llm serve`` on the packaged model (or on ``--config`` / ``--gguf``), or uses a running server
(``--url``), sends each set as one Snowflake batch per function, and prints accuracy next to the chance rate.

    python bench/quality.py                       # the packaged SmolLM2-135M
    python bench/quality.py --gguf qwen2.5-1.5b-instruct-q4_k_m.gguf
    python bench/quality.py --url http://127.0.0.1:8001 [--json out.json]
    python bench/quality.py --label-scoring both  # labels generated (before issue 20), then scored

Scoring: SENTIMENT is right when its sign matches the label; AI_SENTIMENT when "overall" is the label;
CLASSIFY_TEXT / AI_CLASSIFY when the label is the expected category; EXTRACT_ANSWER when the answer contains
the expected words (case-insensitive); AI_FILTER when the boolean matches; AI_SIMILARITY when a text of the
classification set is more similar to another text of its topic than to a text of a different topic.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from spcs_llm.client import PollingTransport
from spcs_llm.server.health import wait_healthy

DATA = Path(__file__).parent / "data"
HEADERS = {
    "content-type": "application/json",
    "sf-external-function-format": "json",
    "sf-external-function-format-version": "1.0",
}


def load(name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (DATA / f"{name}.jsonl").read_text(encoding="utf-8").splitlines() if line]


def call(client: httpx.Client, fn: str, rows: list[list[Any]]) -> list[Any]:
    r = client.post(f"/functions/{fn}", json={"data": [[i, *row] for i, row in enumerate(rows)]}, headers=HEADERS)
    if r.status_code != 200:
        raise SystemExit(f"{fn}: HTTP {r.status_code}: {r.text}")
    return [v for _, v in r.json()["data"]]


def score(
    name: str, truth: list[Any], answers: list[Any], right: Callable[[Any, Any], bool], chance: float, seconds: float
) -> dict[str, Any]:
    correct = sum(1 for t, a in zip(truth, answers, strict=True) if a is not None and right(t, a))
    nulls = sum(a is None for a in answers)
    return {
        "function": name,
        "n": len(truth),
        "accuracy": correct / len(truth),
        "chance": chance,
        "nulls": nulls,
        "seconds": seconds,
    }


def _timed(client: httpx.Client, fn: str, rows: list[list[Any]]) -> tuple[list[Any], float]:
    start = time.perf_counter()
    answers = call(client, fn, rows)
    return answers, time.perf_counter() - start


def evaluate(client: httpx.Client, embed_model: str | None, only: set[str] | None = None) -> list[dict[str, Any]]:
    results = []

    def timed(client: httpx.Client, fn: str, rows: list[list[Any]]) -> tuple[list[Any], float]:
        if only is not None and fn not in only:
            return [None] * len(rows), -1.0
        return _timed(client, fn, rows)

    sentiment = load("sentiment")
    texts, labels = [[s["text"]] for s in sentiment], [s["label"] for s in sentiment]
    answers, secs = timed(client, "sentiment", texts)
    results.append(score("SENTIMENT", labels, answers, lambda t, a: (a > 0) == (t == "positive"), 0.5, secs))
    answers, secs = timed(client, "ai_sentiment", texts)
    results.append(score("AI_SENTIMENT", labels, answers, lambda t, a: a["categories"][0]["sentiment"] == t, 0.2, secs))

    classify = load("classify")
    categories = sorted({c["label"] for c in classify})
    rows = [[c["text"], categories] for c in classify]
    truth = [c["label"] for c in classify]
    answers, secs = timed(client, "classify_text", rows)
    results.append(score("CLASSIFY_TEXT", truth, answers, lambda t, a: a["label"] == t, 1 / len(categories), secs))
    answers, secs = timed(client, "ai_classify", rows)
    results.append(score("AI_CLASSIFY", truth, answers, lambda t, a: a["labels"] == [t], 1 / len(categories), secs))

    extract = load("extract")
    answers, secs = timed(client, "extract_answer", [[e["text"], e["question"]] for e in extract])
    results.append(
        score(
            "EXTRACT_ANSWER",
            [e["answer"] for e in extract],
            answers,
            lambda t, a: t.lower() in a[0]["answer"].lower(),
            0.0,
            secs,
        )
    )

    flt = load("filter")
    answers, secs = timed(client, "ai_filter", [[f["text"]] for f in flt])
    results.append(score("AI_FILTER", [f["label"] for f in flt], answers, lambda t, a: a == t, 0.5, secs))

    if embed_model and (only is None or "ai_similarity" in only):
        by_topic: dict[str, list[str]] = {}
        for c in classify:
            by_topic.setdefault(c["label"], []).append(c["text"])
        topics = sorted(by_topic)
        same, other = [], []
        for t, topic in enumerate(topics):
            texts, others = by_topic[topic], by_topic[topics[(t + 1) % len(topics)]]
            for i in range(len(texts) - 1):
                same.append([texts[i], texts[i + 1], {"model": embed_model}])
                other.append([texts[i], others[i + 1], {"model": embed_model}])
        sims, secs = timed(client, "ai_similarity", same + other)
        wins = [a > b for a, b in zip(sims[: len(same)], sims[len(same) :], strict=True)]
        results.append(score("AI_SIMILARITY", [True] * len(wins), wins, lambda t, a: a == t, 0.5, secs))
    return results


def start_server(args: argparse.Namespace, scoring: bool | None = None) -> tuple[str, subprocess.Popen[bytes]]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "spcs_llm", "serve", "--port", str(port)]
    if args.config:
        cmd += ["--config", args.config]
    if args.gguf:
        cmd += ["--model", args.gguf]
    if scoring is not None and not args.config:  # with --config, its engine.label_scoring holds
        config = Path(tempfile.mkdtemp()) / "quality.toml"
        config.write_text(f"[engine]\nlabel_scoring = {'true' if scoring else 'false'}\n")
        cmd += ["--config", str(config)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ))
    base = f"http://127.0.0.1:{port}"
    if not wait_healthy(base, timeout_s=600, still_running=lambda: proc.poll() is None):
        proc.kill()
        raise SystemExit(f"server did not become healthy: {' '.join(cmd)}")
    return base, proc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="a running spcs-llm (default: start one)")
    parser.add_argument("--config", help="config file for the server this script starts")
    parser.add_argument("--gguf", help="GGUF model for the server this script starts")
    parser.add_argument(
        "--embed-model", default="snowflake-arctic-embed-m-v1.5", help="embedding model for AI_SIMILARITY ('' to skip)"
    )
    parser.add_argument("--json", type=Path, help="also write the results as JSON")
    parser.add_argument("--only", nargs="*", help="SQL function names to evaluate (default: all)")
    parser.add_argument(
        "--label-scoring",
        choices=["on", "off", "both"],
        default="on",
        help="engine.label_scoring of the server this script starts; both: one server with it "
        "off, then one with it on, and both tables",
    )
    args = parser.parse_args()
    modes = {"on": [True], "off": [False], "both": [False, True]}[args.label_scoring]
    out = []
    for scoring in modes if args.url is None and not args.config else [None]:
        model, base, results = run_once(args, scoring)
        title = "" if scoring is None else f", label scoring {'on' if scoring else 'off'}"
        print(f"\nquality on {model} ({base}{title})\n", flush=True)
        print("| function | n | accuracy | chance | NULL rows | seconds |\n|---|---:|---:|---:|---:|---:|")
        for r in results:
            print(
                f"| {r['function']} | {r['n']} | {r['accuracy']:.0%} | {r['chance']:.0%} | {r['nulls']} "
                f"| {r['seconds']:.1f} |",
                flush=True,
            )
        out.append({"model": model, "label_scoring": scoring, "results": results})
    if args.json:
        args.json.write_text(json.dumps(out[0] if len(out) == 1 else out, indent=2))


def run_once(args: argparse.Namespace, scoring: bool | None) -> tuple[str, str, list[dict[str, Any]]]:
    proc = None
    base = args.url
    if base is None:
        base, proc = start_server(args, scoring)
    try:
        with httpx.Client(base_url=base, timeout=1800, transport=PollingTransport()) as client:
            model = next(m["id"] for m in client.get("/v1/models").json()["data"])
            only = {f.lower() for f in args.only} if args.only else None
            results = evaluate(client, args.embed_model or None, only)
            return model, base, [r for r in results if r["seconds"] >= 0]
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)


if __name__ == "__main__":
    main()
