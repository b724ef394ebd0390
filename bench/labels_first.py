"""The label functions' gateway path with an engine that costs (almost) nothing and answers as a model does.

``bench_gateway.py`` measures the label functions on the fake engine, whose steps cost more than the gateway
itself (its "fake alone" column) and whose alternatives often begin no label, so that a third to a half of the
rows also take the generated fallback. This asks what the gateway would do in front of an engine that is free and
puts the labels first, as a real model's alternatives do at a label's position: the fake engine's ``next_token``
is replaced by a stand-in (``bench_gateway.labels_first``, which ``bench_gateway.py --labels-first`` runs over HTTP)
that answers every step with the bench's labels (in an order and with log-probabilities that vary with the row)
followed by two tokens that begin none, a step made once and looked up after (~0.6 us; the first version of this
script built it every step, ~4.4 us, a quarter of an ENTITY_SENTIMENT row). Each row then takes every label step
(three for ENTITY_SENTIMENT) and none falls back. Everything else is the bench's in-process mode: the same rows,
bodies and ``answer_batch``/``encode_rows``, CPU time of the thread, in a process pinned to one core.

It is a measure of the gateway's own path, not of any answer (the stand-in's labels are not the fake model's).

    python bench/labels_first.py [--before f54be0f] [--batches 6] [--rounds 2]

With ``--before REV`` each round runs REV's code and this tree's, one process each, alternately; the table gives
the median of the rounds, per code. The processes run on core 0: the figures hold while nothing else runs there
(a test suite on that core moved single functions by 1.3-1.6x in a review's run).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import bench_gateway as bg  # the bench's specs, rows and runtime, beside this script

FUNCTIONS = ("SENTIMENT", "AI_SENTIMENT", "ENTITY_SENTIMENT", "CLASSIFY_TEXT", "AI_CLASSIFY", "AI_FILTER")


async def measure(batches: int) -> dict[str, float]:
    """Rows per CPU-second of each function with the stand-in, in this process (the code on ``sys.path``)."""
    import orjson

    from spcs_llm.functions import FUNCTIONS as SQL
    from spcs_llm.server.snowflake import answer_batch, decode_rows, encode_rows
    from spcs_llm.server.tuning import tune_gc

    bg.labels_first()
    rates: dict[str, float] = {}
    for label in FUNCTIONS:
        settings, engine, embedders, rt = await bg.fake_runtime(None)
        tune_gc()
        spec = next(s for s in bg.SPECS if s.label == label)
        make, fn, limit = bg.batch_maker(spec, bg.Texts()), SQL[label.lower()], settings.server.max_response_bytes
        bodies = [orjson.dumps({"data": make(1000)}) for _ in range(batches + 1)]
        for i, body in enumerate(bodies):
            if i == 1:  # the first batch made the label sets' plans, once per query: not timed
                c0 = time.thread_time()
            rows = decode_rows(body)
            encode_rows([r[0] for r in rows], await answer_batch(fn, rt, rows), limit)
        rates[label] = batches * 1000 / (time.thread_time() - c0)
    return rates


def run_code(src: Path, batches: int) -> dict[str, float]:
    """One measuring process running the code under ``src``, pinned to core 0."""
    env = {**os.environ, "PYTHONPATH": str(src)}
    out = subprocess.run(
        [sys.executable, __file__, "--worker", "--batches", str(batches)], env=env, capture_output=True
    )
    if out.returncode != 0:
        raise SystemExit(f"the measuring process for {src} failed:\n{out.stderr.decode()}")
    rates: dict[str, float] = {}
    for line in out.stdout.decode().splitlines():
        name, rate = line.split()
        rates[name] = float(rate)
    return rates


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", metavar="REV", help="also run the code of this git revision, alternately")
    ap.add_argument("--batches", type=int, default=6, help="1,000-row batches per function and process")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.batches < 1 or args.rounds < 1:
        ap.error("--batches and --rounds must be at least 1")
    if args.worker:
        os.sched_setaffinity(0, {0})
        for name, rate in asyncio.run(measure(args.batches)).items():
            print(name, f"{rate:.1f}")
        return
    with tempfile.TemporaryDirectory() as tmp:
        codes = {"after": bg.ROOT / "src"}
        if args.before:
            codes = {"before": bg.extract_revision(args.before, Path(tmp)), **codes}
        runs: dict[str, list[dict[str, float]]] = {code: [] for code in codes}
        for r in range(args.rounds):
            for code in codes if r % 2 == 0 else reversed(codes):
                runs[code].append(run_code(codes[code], args.batches))
    print("label functions, a free engine that puts the labels first: rows per CPU-second, in process")
    print(f"{'':20}" + "".join(f"{code:>10}" for code in codes) + ("     ratio" if len(codes) == 2 else ""))
    for name in FUNCTIONS:
        medians = [statistics.median(run[name] for run in runs[code]) for code in codes]
        ratio = f"{medians[-1] / medians[0]:>9.2f}x" if len(medians) == 2 else ""
        print(f"{name:20}" + "".join(f"{m:>10,.0f}" for m in medians) + ratio)


if __name__ == "__main__":
    main()
