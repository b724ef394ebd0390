"""Duplicates and retries (issue 5, benchmark 4): what each kind of batch costs in engine calls.

Engine calls are counted from the server's own ``/metrics`` (``spcs_llm_engine_requests_total``, the delta around
each step), on the real packaged llama.cpp engine by default (``--engine fake`` for a quick run). Steps, each with
its own prompts (a per-step tag) unless it re-sends an earlier step's rows on purpose:

a. a batch of N distinct rows                                      -> N calls
b. a batch of N rows where every row repeats another row (N/2 distinct prompts) -> N/2
c. (b) re-sent with the SAME ``sf-external-function-query-batch-id`` (a Snowflake retry) -> 0
d. (b)'s rows in a NEW batch id, temperature 0 (result cache)      -> 0
e1. a batch of N distinct rows at temperature > 0                   -> N
e2. (e1) re-sent with the same batch id (answered from the batch-id cache) -> 0, with the same values as (e1)

(c), (d) and (e2) rely on the scheduler's result cache and batch-id retry cache; on a server without them the
table shows the uncached cost next to the expected one. A metric the server does not export is shown as "-".

    python bench/bench_dedup.py [--rows 32] [--engine llamacpp|fake] [--plot bench/out/dedup.png]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import benchlib
import httpx
import orjson

from spcs_llm.client import PollingTransport

ENGINE_CALLS = "spcs_llm_engine_requests_total"
CACHE_METRICS = {
    "in-flight dedup": "spcs_llm_dedup_hits_total",
    "result cache": "spcs_llm_result_cache_hits_total",
    "retries answered": "spcs_llm_batch_retries_answered_total",
}


@dataclass
class Step:
    name: str
    rows: int
    expected: int
    calls: float | None
    seconds: float
    cache: dict[str, float | None]
    note: str = ""

    @property
    def ok(self) -> bool:
        return self.calls is not None and int(self.calls) == self.expected


class Client:
    def __init__(self, base: str, model: str, max_tokens: int) -> None:
        self.base, self.model, self.max_tokens = base, model, max_tokens
        self.http = httpx.Client(base_url=base, timeout=3600, transport=PollingTransport())  # 202s polled
        self.query_id = benchlib.new_id()

    def counters(self) -> dict[str, float | None]:
        return benchlib.scrape(self.http, self.base, [ENGINE_CALLS, *CACHE_METRICS.values()])

    def send(
        self, name: str, texts: list[str], expected: int, *, batch_id: str | None = None, temperature: float = 0.0
    ) -> tuple[Step, list[Any], str]:
        """Send one batch; returns the step, the row values, and the batch id it used."""
        batch_id = batch_id or benchlib.new_id()
        body = orjson.dumps({"data": benchlib.complete_rows(self.model, texts, self.max_tokens, temperature)})
        before = self.counters()
        start = time.perf_counter()
        r = self.http.post(
            "/functions/complete",
            content=body,
            headers={
                "content-type": "application/json",
                benchlib.QUERY_ID_HEADER: self.query_id,
                benchlib.BATCH_ID_HEADER: batch_id,
            },
        )
        seconds = time.perf_counter() - start
        r.raise_for_status()
        after = self.counters()

        def delta(name: str) -> float | None:
            b, a = before[name], after[name]
            return None if a is None else a - (b or 0.0)

        values = [orjson.loads(v)["choices"][0]["messages"] for _, v in r.json()["data"]]
        step = Step(
            name, len(texts), expected, delta(ENGINE_CALLS), seconds, {k: delta(m) for k, m in CACHE_METRICS.items()}
        )
        return step, values, batch_id


def run(client: Client, n: int) -> list[Step]:
    half = n // 2
    distinct_a = benchlib.tagged_prompts("d-a", n)
    unique_b = benchlib.tagged_prompts("d-b", half)
    rows_b = [unique_b[i % half] for i in range(n)]  # row i and row i + N/2 ask the same thing
    distinct_e = [f"{t} Be creative." for t in benchlib.tagged_prompts("d-e", n)]

    steps = []
    step, _, _ = client.send("a. N distinct rows", distinct_a, n)
    steps.append(step)
    step, values_b, batch_b = client.send("b. N rows, 50% repeats", rows_b, half)
    same_pairs = all(values_b[i] == values_b[i + half] for i in range(half))
    step.note = "repeated rows equal" if same_pairs else "REPEATED ROWS DIFFER"
    steps.append(step)
    step, values, _ = client.send("c. (b) retried, same batch id", rows_b, 0, batch_id=batch_b)
    step.note = "same values as (b)" if values == values_b else "values differ from (b)"
    steps.append(step)
    step, values, _ = client.send("d. (b) rows, new batch id, temp 0", rows_b, 0)
    step.note = "same values as (b)" if values == values_b else "values differ from (b)"
    steps.append(step)
    step, values_e, batch_e = client.send("e1. N rows at temperature 0.8", distinct_e, n, temperature=0.8)
    steps.append(step)
    step, values, _ = client.send("e2. (e1) retried, same batch id", distinct_e, 0, batch_id=batch_e, temperature=0.8)
    step.note = "same values as (e1)" if values == values_e else "values differ from (e1)"
    steps.append(step)
    return steps


def report(steps: list[Step], where: str) -> None:
    print(f"\nDuplicates and retries, engine calls from /metrics ({ENGINE_CALLS} delta); {where}; {benchlib.machine()}")
    names = list(CACHE_METRICS)
    print(
        f"{'step':36} {'rows':>4} {'expected':>8} {'measured':>8} {'ok':>3} {'seconds':>7} "
        + " ".join(f"{n:>16}" for n in names)
        + "  note"
    )

    def show(x: float | None) -> str:
        return "-" if x is None else f"{x:.0f}"

    for s in steps:
        print(
            f"{s.name:36} {s.rows:>4} {s.expected:>8} {show(s.calls):>8} {'yes' if s.ok else 'NO':>3} "
            f"{s.seconds:>7.2f} " + " ".join(f"{show(s.cache[n]):>16}" for n in names) + f"  {s.note}"
        )
    missing = [m for n, m in CACHE_METRICS.items() if all(s.cache[n] is None for s in steps)]
    if missing:
        print("not exported by this server: " + ", ".join(missing))
    print(f"{sum(s.ok for s in steps)}/{len(steps)} steps cost what they should")


def plot(steps: list[Step], path: Path) -> None:
    plt = benchlib.pyplot()
    fig, ax = plt.subplots(figsize=(9, 4))
    xs = range(len(steps))
    ax.bar([x - 0.2 for x in xs], [s.expected for s in steps], 0.4, label="expected", color="#bbb")
    ax.bar([x + 0.2 for x in xs], [s.calls or 0 for s in steps], 0.4, label="measured", color="#1f77b4")
    ax.set_xticks(list(xs), [s.name.split(".")[0] for s in steps])
    ax.set_ylabel("engine calls")
    ax.set_title("Engine calls per batch: duplicates, retries, result cache")
    ax.legend()
    benchlib.save(fig, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", help="an already running spcs-llm (default: start one here)")
    ap.add_argument("--engine", choices=["llamacpp", "fake"], default="llamacpp", help="engine of the local server")
    ap.add_argument("--model", help="model name in the rows (default: the first spcs-llm lists)")
    ap.add_argument("--rows", type=int, default=32, help="rows per batch, N (even)")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--n-parallel", type=int, default=8)
    ap.add_argument("--threads", type=int, help="llama.cpp threads (default: all cores)")
    ap.add_argument("--plot", type=Path)
    args = ap.parse_args()
    if args.rows < 2 or args.rows % 2:
        ap.error("--rows must be an even number >= 2")

    local = None
    if args.url:
        base, where = args.url.rstrip("/"), f"spcs-llm at {args.url}"
    else:
        local = benchlib.start_server(
            {"engine": {"kind": args.engine, "n_parallel": args.n_parallel, "threads": args.threads}}
        )
        base, where = local.base, f"{args.engine} in process, {args.n_parallel} slots"
    model = args.model or httpx.get(f"{base}/v1/models", timeout=30).json()["data"][0]["id"]
    client = Client(base, model, args.max_tokens)
    try:
        client.send("warm-up", benchlib.tagged_prompts("d-w", 4), 4)
        steps = run(client, args.rows)
    finally:
        if local is not None:
            local.stop()
    report(steps, where)
    if args.plot:
        plot(steps, args.plot)


if __name__ == "__main__":
    main()
