"""Label functions against the prefill limit (issue 20): SENTIMENT, AI_FILTER, CLASSIFY_TEXT and AI_SENTIMENT
(its "overall" aspect), scored (one forward step per branching of the labels' token trie) and generated (the
constrained JSON answer of before), next to COMPLETE with ``max_tokens = 1`` on a prompt of the same length (the
same instruction as the system message, the same text plus the answer's fixed start as the user message): the
prefill and one token, the most this work can go.

All on one server and model in one run, the variants interleaved and repeated (``--repeats``), each variant with
its own tagged copies of the texts (the same length for all) so that no variant is answered from a cache another
one filled. Rows go as one Snowflake batch per variant. "generated" is measured on the same server by turning the
engine's label scoring off between variants (``engine.label_scoring``), which is the code path of before.

    python bench/bench_labels.py [--rows 64] [--repeats 2] [--n-parallel 8]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import benchlib
import httpx

from spcs_llm.functions.classify import (
    FILTER_INSTRUCTION,
    FILTER_PREFIX,
    LABEL_PREFIX,
    Category,
    instruction,
)
from spcs_llm.functions.sentiment import ASPECT_INSTRUCTION, SENTIMENT_INSTRUCTION, SENTIMENT_PREFIX

DATA = Path(__file__).parent / "data"
HEADERS = {"content-type": "application/json"}


def load(name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (DATA / f"{name}.jsonl").read_text(encoding="utf-8").splitlines() if line]


@dataclass(frozen=True)
class Task:
    """One label function, its texts, the row arguments after the text, its instruction and answer start."""

    function: str
    texts: list[str]
    extra: list[Any]
    instruction: str
    prefix: str


def tasks() -> list[Task]:
    classify = load("classify")
    categories = sorted({c["label"] for c in classify})
    return [
        Task("sentiment", [s["text"] for s in load("sentiment")], [], SENTIMENT_INSTRUCTION, SENTIMENT_PREFIX),
        Task("ai_filter", [f["text"] for f in load("filter")], [], FILTER_INSTRUCTION, FILTER_PREFIX),
        Task(
            "classify_text",
            [c["text"] for c in classify],
            [categories],
            instruction([Category(c) for c in categories], {}, multi=False),
            LABEL_PREFIX,
        ),
        Task("ai_sentiment", [s["text"] for s in load("sentiment")], [], ASPECT_INSTRUCTION, '{"overall": "'),
    ]


@dataclass
class Run:
    function: str
    variant: str
    rows: int
    seconds: float
    engine_requests: float  # per row

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds


class Bench:
    def __init__(self, server: benchlib.LocalServer, model: str, rows: int) -> None:
        self.server, self.model, self.rows = server, model, rows
        self.client = httpx.Client(base_url=server.base, timeout=3600)

    def texts(self, task: Task, tag: str) -> list[str]:
        """``rows`` texts of the task, each led by a tag of the same length (``[s1a-0001]``)."""
        return [f"[{tag}-{i:04d}] {task.texts[i % len(task.texts)]}" for i in range(self.rows)]

    def run(self, task: Task, variant: str, tag: str) -> Run:
        texts = self.texts(task, tag)
        if variant == "complete1":
            fn = "complete"
            rows = [
                [
                    i,
                    self.model,
                    [
                        {"role": "system", "content": task.instruction},
                        {"role": "user", "content": f"{t} {task.prefix}"},
                    ],
                    {"max_tokens": 1, "temperature": 0},
                ]
                for i, t in enumerate(texts)
            ]
        else:
            fn = task.function
            self.server.app.state.engine.label_scoring = variant == "scored"
            rows = [[i, t, *task.extra] for i, t in enumerate(texts)]
        names = ["spcs_llm_engine_requests_total"]
        before = benchlib.scrape(self.client, self.server.base, names)
        start = time.perf_counter()
        r = self.client.post(
            f"/functions/{fn}",
            json={"data": rows},
            headers={
                **HEADERS,
                benchlib.QUERY_ID_HEADER: benchlib.new_id(),
                benchlib.BATCH_ID_HEADER: benchlib.new_id(),
            },
        )
        seconds = time.perf_counter() - start
        if r.status_code != 200:
            raise SystemExit(f"{fn}: HTTP {r.status_code}: {r.text[:300]}")
        if [row[0] for row in r.json()["data"]] != list(range(len(rows))):
            raise SystemExit(f"{fn}: rows answered out of order")
        after = benchlib.scrape(self.client, self.server.base, names)
        self.server.app.state.engine.label_scoring = True
        requests = (after[names[0]] or 0) - (before[names[0]] or 0)
        run = Run(task.function, variant, len(rows), seconds, requests / len(rows))
        print(f"  {task.function:13s} {variant:9s} {run.rows_per_s:6.2f} rows/s", file=sys.stderr, flush=True)
        return run


def prompt_tokens(server: benchlib.LocalServer, task: Task) -> tuple[int, int]:
    """Prompt tokens of one row, scored (the label function's prompt with its answer start) and as the COMPLETE
    row of the same length, counted by the engine's tokenizer on the rendered chat template."""
    engine_url = server.engine_url
    text = f"[s0a-0000] {task.texts[0]}"
    scored = [
        {"role": "system", "content": task.instruction},
        {"role": "user", "content": text},
        {"role": "assistant", "content": task.prefix},
    ]
    complete = [{"role": "system", "content": task.instruction}, {"role": "user", "content": f"{text} {task.prefix}"}]
    counts = []
    for messages in (scored, complete):
        body = {"messages": messages, "max_tokens": 1, "temperature": 0}
        counts.append(
            int(
                httpx.post(f"{engine_url}/v1/chat/completions", json=body, timeout=600).json()["usage"]["prompt_tokens"]
            )
        )
    return counts[0], counts[1]


def table(runs: list[Run], lengths: dict[str, tuple[int, int]]) -> str:
    by: dict[tuple[str, str], list[Run]] = defaultdict(list)
    for r in runs:
        by[(r.function, r.variant)].append(r)
    lines = [
        "| function | prompt tokens (label / COMPLETE) | COMPLETE max_tokens=1 rows/s | generated (before) "
        "rows/s | ratio | scored (after) rows/s | ratio | engine steps/row scored |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for fn, (label_len, complete_len) in lengths.items():
        rate = {
            v: sum(r.rows for r in by[(fn, v)]) / sum(r.seconds for r in by[(fn, v)])
            for v in ("complete1", "generated", "scored")
        }
        steps = sum(r.engine_requests for r in by[(fn, "scored")]) / len(by[(fn, "scored")])
        lines.append(
            f"| {fn.upper()} | {label_len} / {complete_len} | {rate['complete1']:.2f} "
            f"| {rate['generated']:.2f} | {rate['generated'] / rate['complete1']:.2f} "
            f"| {rate['scored']:.2f} | {rate['scored'] / rate['complete1']:.2f} | {steps:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=64, help="rows per variant per repeat")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--n-parallel", type=int, default=8, help="llama.cpp slots")
    parser.add_argument("--only", nargs="*", help="functions to measure (default: all four)")
    args = parser.parse_args()
    server = benchlib.start_server(
        {"engine": {"n_parallel": args.n_parallel}, "server": {"result_cache_mb": 0, "max_queue_seconds": 0}}
    )
    try:
        model = server.app.state.engine.model_name
        bench = Bench(server, model, args.rows)
        chosen = [t for t in tasks() if not args.only or t.function in args.only]
        lengths = {t.function: prompt_tokens(server, t) for t in chosen}
        for variant in ("complete1", "generated", "scored"):  # warm-up, not measured: the first requests of a fresh
            Bench(server, model, 8).run(chosen[0], variant, f"w0{variant[0]}")  # server are slower
        runs = []
        variants = ["complete1", "generated", "scored"]
        for rep in range(args.repeats):
            for k, task in enumerate(chosen):
                order = variants[(rep + k) % 3 :] + variants[: (rep + k) % 3]  # interleaved, a new order each time
                for variant in order:
                    runs.append(bench.run(task, variant, f"{task.function[0]}{rep}{variant[0]}"))
    finally:
        server.stop()
    print(
        f"\nlabel functions vs COMPLETE max_tokens=1 on {model}, {args.rows} rows x {args.repeats} repeats per "
        f"cell, {args.n_parallel} slots; {benchlib.machine()}\n"
    )
    print(table(runs, lengths))


if __name__ == "__main__":
    main()
