"""The gateway's own cost: Snowflake batches through spcs-llm on the fake engine (zero inference cost).

The real server (`spcs-llm serve`, uvicorn, real HTTP on loopback) runs in its own process pinned to one core
(``taskset``-style ``sched_setaffinity``), with ``engine.kind = "fake"`` and a fake embedder, and logs as in
production (one JSON line per batch to stderr, here /dev/null). The load generator runs in this process, pinned
to another core, so "per core" means what it says. Measured:

- throughput: rows/s of 1,000-row batches, ``--connections`` batches in flight at once, for ``--seconds``; the
  server's CPU seconds (utime + stime from /proc/<pid>/stat) over the same window give rows per CPU-second.
  Every row is distinct (a per-run nonce and a counter), so no row is a dedup or cache hit; a second COMPLETE
  line sends one fixed batch over and over (what a result cache would answer);
- added latency: p50/p99 round trip of sequential 100-row batches, one at a time (the fake engine answers at
  once, so this is the gateway's own time per batch, plus the client's).

    python bench/bench_gateway.py [--seconds 4] [--connections 4] [--plot out.png] [--json]
    python bench/bench_gateway.py --profile out.txt   # the server runs under pyinstrument; its report goes there
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
import orjson

PROMPT = ("Summarise this customer review in one sentence: the {k} arrived two days late and the box was "
          "dented, but the product itself works well and support answered quickly. Ticket {nonce}-{n}.")
ITEMS = ["kettle", "lamp", "chair", "router", "blender", "jacket", "printer", "monitor"]
PROFILE_OPTIONS = os.environ.get("GATEWAY_PROFILE_OPTIONS", "-p flat=true").split()
CONFIG = """
[server]
log_level = "info"
max_queue_rows = 1000000
max_queue_seconds = 0   # admission is measured by bench_overload.py; here it would refuse the bench's own load
[engine]
kind = "fake"
model_name = "fake-model"
[[embeddings]]
kind = "fake"
dimension = 768
"""


@dataclass
class Throughput:
    label: str
    batch_rows: int
    rows: int
    seconds: float
    server_cpu_s: float

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds

    @property
    def rows_per_cpu_s(self) -> float:
        return self.rows / self.server_cpu_s if self.server_cpu_s else float("nan")


@dataclass
class Latency:
    label: str
    batch_rows: int
    batches: int
    p50_ms: float
    p99_ms: float
    max_ms: float


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (fields 14 and 15 of /proc/<pid>/stat, in clock ticks)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_server(core: int, profile: Path | None, workdir: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    config = workdir / "gateway.toml"
    config.write_text(CONFIG)
    serve = ["-m", "spcs_llm.cli", "serve", "--config", str(config), "--host", "127.0.0.1", "--port", str(port)]
    if profile is not None:
        cmd = [sys.executable, "-m", "pyinstrument", "-r", "text", *PROFILE_OPTIONS, "-o", str(profile), *serve]
    else:
        cmd = [sys.executable, *serve]
    proc = subprocess.Popen(cmd, stderr=subprocess.DEVNULL, preexec_fn=lambda: os.sched_setaffinity(0, {core}))
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                return proc, base
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise SystemExit("server did not become healthy in 60 s")


def stop_server(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGINT)  # a clean exit, so a profiler writes its report
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()


class Rows:
    """Distinct rows: every call gives new prompts (a per-run nonce and a running counter)."""

    def __init__(self) -> None:
        self.nonce, self.n = secrets.token_hex(4), 0

    def complete(self, size: int) -> list[list]:
        out = []
        for i in range(size):
            self.n += 1
            out.append([i, "llama3.1-8b", PROMPT.format(k=ITEMS[self.n % len(ITEMS)], nonce=self.nonce, n=self.n)])
        return out

    def text(self, size: int) -> list[list]:
        return [[i, row[2]] for i, row in enumerate(self.complete(size))]

    def embed(self, size: int) -> list[list]:
        return [[i, "e5-base-v2", row[2]] for i, row in enumerate(self.complete(size))]


def check(rows: list[list], response: httpx.Response) -> None:
    """Every row answered, in order; fail loudly rather than time a server that answers errors."""
    if response.status_code != 200:
        raise SystemExit(f"HTTP {response.status_code}: {response.text[:200]}")
    data = orjson.loads(response.content)["data"]
    if len(data) != len(rows) or data[0][0] != rows[0][0] or data[-1][0] != rows[-1][0]:
        raise SystemExit("the answer does not hold one row per input row in order")


async def throughput(base: str, pid: int, label: str, path: str, make: Callable[[int], list[list]],
                     batch_rows: int, seconds: float, connections: int) -> Throughput:
    async with httpx.AsyncClient(base_url=base, timeout=60, limits=httpx.Limits(max_connections=connections)) as c:
        async def one() -> int:
            rows = make(batch_rows)
            body = orjson.dumps({"data": rows})
            r = await c.post(path, content=body, headers={"content-type": "application/json"})
            check(rows, r)
            return len(rows)

        await asyncio.gather(*(one() for _ in range(connections)))  # warm up every connection
        done, stop = 0, time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal done
            while time.perf_counter() < stop:
                rows = await one()  # not `done += await one()`: that reads `done` before the await
                done += rows

        cpu0, t0 = cpu_seconds(pid), time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(connections)))
        elapsed, cpu = time.perf_counter() - t0, cpu_seconds(pid) - cpu0
    return Throughput(label, batch_rows, done, elapsed, cpu)


async def latency(base: str, label: str, path: str, make: Callable[[int], list[list]], batch_rows: int,
                  batches: int) -> Latency:
    bodies = [(rows, orjson.dumps({"data": rows})) for rows in (make(batch_rows) for _ in range(batches + 10))]
    times = []
    async with httpx.AsyncClient(base_url=base, timeout=60) as c:
        for i, (rows, body) in enumerate(bodies):
            t0 = time.perf_counter()
            r = await c.post(path, content=body, headers={"content-type": "application/json"})
            dt = time.perf_counter() - t0
            check(rows, r)
            if i >= 10:  # the first ten warm up
                times.append(dt * 1000)
    times.sort()
    return Latency(label, batch_rows, len(times), statistics.median(times),
                   times[min(len(times) - 1, round(0.99 * len(times)))], times[-1])


async def measure(base: str, pid: int, args: argparse.Namespace) -> tuple[list[Throughput], list[Latency]]:
    rows = Rows()
    fixed = rows.complete(args.batch_rows)
    repeats = [await throughput(base, pid, "COMPLETE, distinct rows", "/functions/complete", rows.complete,
                                args.batch_rows, args.seconds, args.connections) for _ in range(args.repeat)]
    runs = [sorted(repeats, key=lambda r: r.rows_per_cpu_s)[len(repeats) // 2]]  # the median run
    if args.profile:  # the profile is of the headline workload alone
        return runs, []
    runs += [await throughput(base, pid, "COMPLETE, one batch repeated", "/functions/complete", lambda _n: fixed,
                             args.batch_rows, args.seconds / 2, args.connections),
            await throughput(base, pid, "SENTIMENT, distinct rows", "/functions/sentiment", rows.text,
                             args.batch_rows, args.seconds / 2, args.connections),
            await throughput(base, pid, "EMBED_TEXT_768 (fake 768-d), distinct", "/functions/embed_text_768",
                             rows.embed, args.batch_rows, args.seconds / 2, args.connections)]
    lat = [await latency(base, "COMPLETE", "/functions/complete", rows.complete, args.latency_rows, args.batches),
           await latency(base, "SENTIMENT", "/functions/sentiment", rows.text, args.latency_rows, args.batches // 2),
           # the fixed cost of a batch (HTTP on loopback, the client, the scheduling noise of a shared machine)
           await latency(base, "COMPLETE", "/functions/complete", rows.complete, 1, args.batches)]
    return runs, lat


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{os.cpu_count()} cores ({cpu}), {platform.system()} {platform.release()}, Python {sys.version.split()[0]}"


def plot(runs: list[Throughput], lat: list[Latency], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [3, 2]})
    labels = [r.label.replace(", ", "\n").replace(" (", "\n(") for r in runs]
    a.bar(labels, [r.rows_per_cpu_s for r in runs], color="#1f77b4")
    a.axhline(20_000, color="#d62728", ls="--", lw=1, label="goal: 20,000 rows/s per core")
    a.set_ylabel("rows per server CPU-second")
    a.set_title(f"{runs[0].batch_rows}-row batches, fake engine, server on 1 core")
    a.legend(loc="upper right", fontsize=8)
    a.tick_params(axis="x", labelsize=7)
    x = range(len(lat))
    b.bar([i - 0.2 for i in x], [q.p50_ms for q in lat], width=0.4, label="p50")
    b.bar([i + 0.2 for i in x], [q.p99_ms for q in lat], width=0.4, label="p99")
    b.axhline(5, color="#d62728", ls="--", lw=1, label="goal: p99 < 5 ms")
    b.set_xticks(list(x), [f"{q.label}\n{q.batch_rows} row{'s' if q.batch_rows > 1 else ''}" for q in lat])
    b.set_ylabel("ms per batch")
    b.set_title("sequential batches, one at a time")
    b.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"plot written to {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=4.0, help="length of the COMPLETE throughput run")
    ap.add_argument("--batch-rows", type=int, default=1000)
    ap.add_argument("--connections", type=int, default=4, help="batches in flight during throughput runs")
    ap.add_argument("--repeat", type=int, default=1, help="COMPLETE throughput runs; the median is kept")
    ap.add_argument("--latency-rows", type=int, default=100)
    ap.add_argument("--batches", type=int, default=300, help="sequential batches for the latency percentiles")
    ap.add_argument("--server-core", type=int, default=0)
    ap.add_argument("--client-core", type=int, default=1)
    ap.add_argument("--plot", type=Path, help="write a PNG chart here")
    ap.add_argument("--json", action="store_true", help="print the results as one JSON object")
    ap.add_argument("--profile", type=Path, help="run the server under pyinstrument (the distinct-row COMPLETE run "
                    "only) and write its flat text report (time per function, itself) here")
    args = ap.parse_args()

    if args.client_core != args.server_core:
        os.sched_setaffinity(0, {args.client_core})
    with tempfile.TemporaryDirectory() as tmp:
        proc, base = start_server(args.server_core, args.profile, Path(tmp))
        try:
            runs, lat = asyncio.run(measure(base, proc.pid, args))
        finally:
            stop_server(proc)

    if args.json:
        print(json.dumps({"machine": machine(), "throughput": [asdict(r) | {"rows_per_s": r.rows_per_s,
                          "rows_per_cpu_s": r.rows_per_cpu_s} for r in runs], "latency": [asdict(q) for q in lat]}))
    else:
        print(f"\nspcs-llm gateway on the fake engine; server pinned to core {args.server_core}, load on core "
              f"{args.client_core}; {machine()}")
        print(f"\n{'throughput':38} {'batch':>5} {'rows':>7} {'rows/s':>8} {'srv CPU s':>9} {'rows/CPU-s':>10}")
        for r in runs:
            print(f"{r.label:38} {r.batch_rows:>5} {r.rows:>7} {r.rows_per_s:>8.0f} {r.server_cpu_s:>9.2f} "
                  f"{r.rows_per_cpu_s:>10.0f}")
        print(f"\n{'latency, sequential batches':38} {'batch':>5} {'n':>7} {'p50 ms':>8} {'p99 ms':>9} {'max ms':>10}")
        for q in lat:
            print(f"{q.label:38} {q.batch_rows:>5} {q.batches:>7} {q.p50_ms:>8.2f} {q.p99_ms:>9.2f} {q.max_ms:>10.2f}")
        print("\ngoals (issue 5): >= 20,000 rows per server CPU-second; p99 < 5 ms per 100-row batch")
    if args.plot and lat:
        plot(runs, lat, args.plot)
    if args.profile:
        print(f"server profile written to {args.profile}")


if __name__ == "__main__":
    main()
