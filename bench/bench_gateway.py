"""The gateway's own cost, function by function: Snowflake batches through spcs-llm on the fake engine.

The real server (`spcs-llm serve`, uvicorn, real HTTP on loopback) runs in its own process pinned to one core
(``sched_setaffinity``), with ``engine.kind = "fake"`` and fake 768-d and 1024-d embedders, and logs as in
production (one JSON line per batch to stderr, here /dev/null). The load generator runs in this process, pinned
to another core, so "per core" means what it says. For every registered SQL function, with representative
arguments (:data:`SPECS`), it measures:

- throughput: rows/s of 1,000-row batches, ``--connections`` batches in flight at once, for ``--seconds``; the
  server's CPU seconds (utime + stime from /proc/<pid>/stat) over the same window give rows per CPU-second.
  Every row is distinct (a per-run nonce and a counter), so no row is a dedup or cache hit; one more COMPLETE
  line sends one fixed batch over and over (what the result cache answers). A second window times the fake
  engine's and embedders' own calls ("engine %"; timing them costs ~2 us a call, so the main column comes from
  the first, untimed window): "gateway only" is that window's rate without them, and "fake alone" the rate
  of the fakes' calls by themselves, the most a core could give on this fake engine if the gateway cost
  nothing (where that is under the goal, the line says the goal is out of reach on this fake);
- the tail: p50/p99/max round trip of ``--batches`` sequential 100-row batches, one at a time (the fake engine
  answers at once, so this is the gateway's own time per batch, plus the client's).

``--before REV`` also starts a server running the code of git revision REV (``git archive REV src`` into a
temporary directory) on the same core, and measures both servers function by function, alternately, in the same
run: the ratios between the two columns are what to trust on a shared machine.

``--engine-process`` puts the fakes in a process of their own (``bench/fake_upstream.py``, vLLM's answer shapes)
that the server reaches through its real engine hop, as it reaches vLLM: Snowflake's HTTP in, the engine's HTTP
out, the server's CPU per row as in production. ``--in-process`` leaves out the HTTP in (the gateway's thread in
this process).

``--labels-first`` replaces the fake engine's label step by a free stand-in that puts the labels first, as a
model's alternatives do at a label's position (:func:`labels_first`): the fake's own step costs more than the
gateway's whole label row (its "fake alone" column), so this is how the label functions' gateway cost is measured
against the goal over HTTP.

    python bench/bench_gateway.py [--seconds 1] [--before c082c77] [--plot out.png] [--json]
    python bench/bench_gateway.py --engine-process [--in-process]   # the fakes behind the engine hop
    python bench/bench_gateway.py --labels-first --functions SENTIMENT,ENTITY_SENTIMENT   # a free label step
    python bench/bench_gateway.py --functions SENTIMENT --gc-stats   # full collections and their pauses
    python bench/bench_gateway.py --functions SENTIMENT --profile out.txt   # the server under pyinstrument
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import secrets
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson

ROOT = Path(__file__).resolve().parent.parent
PROMPT = (
    "Summarise this customer review in one sentence: the {k} arrived two days late and the box was "
    "dented, but the product itself works well and support answered quickly. Ticket {nonce}-{n}."
)
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
model_name = "fake-embed-768"
dimension = 768
[[embeddings]]
kind = "fake"
model_name = "fake-embed-1024"
dimension = 1024
"""
# --engine-process: the same, with the fakes served by bench/fake_upstream.py in a process of their own (UPSTREAM
# is its /v1) and reached through the gateway's real engine hop, as vLLM is.
UPSTREAM_CONFIG = """
[server]
log_level = "info"
max_queue_rows = 1000000
max_queue_seconds = 0
[engine]
kind = "openai"
upstream = "UPSTREAM"
model = "fake-model"
[[embeddings]]
kind = "openai"
upstream = "UPSTREAM"
model = "fake-embed-768"
dimension = 768
[[embeddings]]
kind = "openai"
upstream = "UPSTREAM"
model = "fake-embed-1024"
dimension = 1024
"""
# Runs the server (`spcs_llm.cli serve`, the arguments after the first three) with the fake engine's and
# embedders' calls timed by :class:`FakeTimer` (this script, whose folder is the first argument) between a SIGUSR1
# and a SIGUSR2, their classes patched; the running total and whether the timing is on go into a 16-byte file
# (the second argument) that the bench reads around each throughput window. With a third argument that is not
# "-", a gc.callbacks hook also records every collection's generation, wall and CPU milliseconds (the CPU time is
# the collection's own work; the wall time adds whatever preempted it), written as JSON to that file when the
# process exits (a clean SIGINT exit).
SERVER_WRAPPER = """
import atexit, gc, json, mmap, os, struct, sys, time
bench, cpu_out, gc_out, sys.argv = sys.argv[1], sys.argv[2], sys.argv[3], [sys.argv[0], *sys.argv[4:]]
sys.path.insert(0, bench)
import signal
from bench_gateway import FakeTimer
from spcs_llm.engines import fake
if os.environ.get("BENCH_LABELS_FIRST"):
    from bench_gateway import labels_first
    labels_first()
with open(cpu_out, "r+b") as f:
    shared = mmap.mmap(f.fileno(), 16)
timer = FakeTimer(fake.FakeEngine, [fake.FakeEmbedder], lambda spent: struct.pack_into("d", shared, 0, spent))
def toggle(on):
    timer.on() if on else timer.off()
    struct.pack_into("d", shared, 8, 1.0 if timer.timing else 0.0)
signal.signal(signal.SIGUSR1, lambda *_: toggle(True))
signal.signal(signal.SIGUSR2, lambda *_: toggle(False))
if gc_out != "-":
    pauses, t0 = [], [0.0, 0.0]
    def hook(phase, info):
        if phase == "start":
            t0[:] = time.perf_counter(), time.thread_time()
        else:
            wall, cpu = time.perf_counter() - t0[0], time.thread_time() - t0[1]
            pauses.append((info["generation"], wall * 1000, cpu * 1000, time.time()))
    gc.callbacks.append(hook)
    atexit.register(lambda: open(gc_out, "w").write(json.dumps({"pauses": pauses, "tracked": len(gc.get_objects())})))
from spcs_llm.cli import main
main()
"""
GOAL_ROWS_PER_CPU_S = 20_000
GOAL_TAIL_RATIO = 2.0
GOAL_COMPLETE_P99_MS = 10.0


@dataclass(frozen=True)
class Spec:
    """One SQL function with representative arguments: ``args(text)`` gives a row's arguments for a distinct text."""

    label: str
    args: Callable[[str], list[Any]]

    @property
    def path(self) -> str:
        return f"/functions/{self.label.lower()}"


CATEGORIES = ["complaint", "praise", "question"]
SPECS = [
    Spec("COMPLETE", lambda t: ["llama3.1-8b", t]),
    Spec("TRY_COMPLETE", lambda t: ["llama3.1-8b", t]),
    Spec("AI_COMPLETE", lambda t: ["llama3.1-8b", t]),
    Spec("SENTIMENT", lambda t: [t]),
    Spec("AI_SENTIMENT", lambda t: [t]),
    Spec("ENTITY_SENTIMENT", lambda t: [t, ["delivery", "support"]]),
    Spec("CLASSIFY_TEXT", lambda t: [t, CATEGORIES]),
    Spec("AI_CLASSIFY", lambda t: [t, CATEGORIES]),
    Spec("AI_FILTER", lambda t: [f"Is this review about a late delivery? {t}"]),
    Spec("SUMMARIZE", lambda t: [t]),
    Spec("TRANSLATE", lambda t: [t, "en", "de"]),
    Spec("AI_TRANSLATE", lambda t: [t, "en", "de"]),
    Spec("EXTRACT_ANSWER", lambda t: [t, "What arrived late?"]),
    Spec("AI_AGG", lambda t: [[t, t + " Second review."], "List the complaints."]),
    Spec("AI_SUMMARIZE_AGG", lambda t: [[t, t + " Second review."]]),
    Spec("EMBED_TEXT_768", lambda t: ["e5-base-v2", t]),
    Spec("EMBED_TEXT_1024", lambda t: ["snowflake-arctic-embed-l-v2.0", t]),
    Spec("AI_EMBED", lambda t: ["e5-base-v2", t]),
    Spec("AI_SIMILARITY", lambda t: [t, t.replace("late", "early")]),
    Spec("COUNT_TOKENS", lambda t: ["llama3.1-8b", t]),
    Spec("AI_COUNT_TOKENS", lambda t: ["ai_complete", "llama3.1-8b", t]),
    Spec("SPLIT_TEXT_RECURSIVE_CHARACTER", lambda t: [t, "none", 60, 10]),
]


@dataclass
class Throughput:
    label: str
    code: str
    batch_rows: int
    rows: int
    seconds: float
    server_cpu_s: float  # rows, seconds and server CPU: the window without the fakes timed (as in production)
    engine_cpu_s: float | None = None  # the fakes' own CPU in the timed window (None: not timed)
    timed_rows: int | None = None  # the timed window's rows and server CPU
    timed_cpu_s: float | None = None

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds

    @property
    def rows_per_cpu_s(self) -> float:
        return self.rows / self.server_cpu_s if self.server_cpu_s else float("nan")

    @property
    def engine_share(self) -> float | None:
        """The fakes' share of the server's CPU in the timed window."""
        if self.engine_cpu_s is None or not self.timed_cpu_s:
            return None
        return self.engine_cpu_s / self.timed_cpu_s

    @property
    def gateway_rows_per_cpu_s(self) -> float | None:
        """Rows per CPU-second of the gateway alone: the timed window's server CPU less the fakes' own."""
        if self.engine_cpu_s is None or self.timed_rows is None or self.timed_cpu_s is None:
            return None
        return self.timed_rows / (self.timed_cpu_s - self.engine_cpu_s)

    @property
    def fake_ceiling(self) -> float | None:
        """Rows per CPU-second of the fakes' own calls alone: the most a server core could answer on this fake
        engine if the gateway cost nothing (None when the fakes are not timed, or took no time)."""
        if not self.engine_cpu_s or self.timed_rows is None:
            return None
        return self.timed_rows / self.engine_cpu_s


@dataclass
class Latency:
    label: str
    code: str
    batch_rows: int
    batches: int
    p50_ms: float
    p99_ms: float
    max_ms: float

    @property
    def tail_ratio(self) -> float:
        return self.p99_ms / self.p50_ms


@dataclass
class Server:
    code: str  # "after" (this tree) or "before" (--before REV)
    proc: subprocess.Popen
    base: str
    gc_file: Path | None = None
    gc: dict[str, Any] = field(default_factory=dict)
    engine_cpu_file: Path | None = None  # the fakes' CPU seconds so far, written by SERVER_WRAPPER
    phases: list[tuple[str, float, float]] = field(default_factory=list)  # (what, start, end): wall clock

    def engine_cpu_s(self) -> float | None:
        if self.engine_cpu_file is None:
            return None
        return float(struct.unpack("d", self.engine_cpu_file.read_bytes()[:8])[0])

    def timing(self) -> bool:
        return self.engine_cpu_file is not None and struct.unpack("d", self.engine_cpu_file.read_bytes()[8:16])[0] > 0

    def time_fakes(self, on: bool) -> None:
        """Ask the server to time its fakes' calls, or to stop (it answers at its next request)."""
        self.proc.send_signal(signal.SIGUSR1 if on else signal.SIGUSR2)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (fields 14 and 15 of /proc/<pid>/stat, in clock ticks)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_server(
    code: str,
    src: Path,
    core: int,
    workdir: Path,
    profile: Path | None,
    gc_stats: bool,
    upstream: str | None = None,
    labels_first: bool = False,
) -> Server:
    """The server of code ``src``, on ``core``: the fakes in its process, or behind the engine hop at ``upstream``."""
    port = free_port()
    config = workdir / "gateway.toml"
    config.write_text(UPSTREAM_CONFIG.replace("UPSTREAM", upstream) if upstream else CONFIG)
    serve = ["serve", "--config", str(config), "--host", "127.0.0.1", "--port", str(port)]
    gc_file = workdir / f"gc-{code}.json" if gc_stats else None
    engine_cpu_file = workdir / f"engine-cpu-{code}"
    if profile is not None:
        cmd = [
            sys.executable,
            "-m",
            "pyinstrument",
            "-r",
            "text",
            *PROFILE_OPTIONS,
            "-o",
            str(profile),
            "-m",
            "spcs_llm.cli",
            *serve,
        ]
    else:
        engine_cpu_file.write_bytes(bytes(16))
        bench = str(Path(__file__).resolve().parent)
        cmd = [sys.executable, "-c", SERVER_WRAPPER, bench, str(engine_cpu_file), str(gc_file or "-"), *serve]
    env = os.environ | {"PYTHONPATH": str(src)} | ({"BENCH_LABELS_FIRST": "1"} if labels_first else {})
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.DEVNULL, preexec_fn=lambda: os.sched_setaffinity(0, {core}))
    base = f"http://127.0.0.1:{port}"
    wait_ready(proc, f"{base}/health", f"the {code} server")
    # no fakes to time when they are behind the hop, or under the profiler
    timed = profile is None and upstream is None
    return Server(code, proc, base, gc_file, engine_cpu_file=engine_cpu_file if timed else None)


def wait_ready(proc: subprocess.Popen[Any], url: str, what: str, seconds: float = 60) -> None:
    """Wait until ``url`` answers 200; a process that exits first, or no answer in ``seconds``, ends the bench."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"{what} did not become ready in {seconds:.0f} s")


def start_upstream(core: int, *args: str) -> tuple[subprocess.Popen[bytes], str]:
    """bench/fake_upstream.py on ``core`` (this checkout's code, for every code measured), with ``args`` after its
    port: the process and its /v1 URL."""
    port = free_port()
    script = Path(__file__).resolve().parent / "fake_upstream.py"
    proc = subprocess.Popen(
        [sys.executable, str(script), str(port), *args],
        env=os.environ | {"PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(script.parent)])},
        preexec_fn=lambda: os.sched_setaffinity(0, {core}),
    )
    url = f"http://127.0.0.1:{port}/v1"
    wait_ready(proc, f"{url}/models", "the fake upstream")
    return proc, url


async def fake_runtime(upstream: str | None) -> tuple[Any, Any, list[Any], Any]:
    """The settings, engine, embedders and runtime that the bench's server would build: the fakes in this process
    (``CONFIG``), or behind the engine hop at ``upstream`` (``UPSTREAM_CONFIG``), started."""
    from spcs_llm.config import Settings
    from spcs_llm.engines import build_embedder, build_engine
    from spcs_llm.metrics import Metrics
    from spcs_llm.server.app import build_runtime

    with tempfile.TemporaryDirectory() as tmp:
        config = UPSTREAM_CONFIG.replace("UPSTREAM", upstream) if upstream else CONFIG
        (Path(tmp) / "gateway.toml").write_text(config)
        settings = Settings.load(Path(tmp) / "gateway.toml")
    engine = build_engine(settings.engine)
    embedders = [build_embedder(e) for e in settings.embeddings]
    await asyncio.gather(engine.start(), *(e.start() for e in embedders))
    return settings, engine, embedders, build_runtime(settings, engine, Metrics(), embedders)


def stop_server(server: Server) -> None:
    server.proc.send_signal(signal.SIGINT)  # a clean exit, so a profiler or the GC hook writes its report
    try:
        server.proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        server.proc.kill()
    if server.gc_file is not None and server.gc_file.is_file():
        server.gc = json.loads(server.gc_file.read_text())


def extract_revision(rev: str, into: Path) -> Path:
    """The ``src`` tree of git revision ``rev``, extracted under ``into``; returns its ``src`` directory."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "src"], check=True, capture_output=True)
    tar = into / "src.tar"
    tar.write_bytes(archive.stdout)
    with tarfile.open(tar) as t:
        t.extractall(into, filter="data")
    return into / "src"


class Texts:
    """Distinct texts: every call gives new ones (a per-run nonce and a running counter)."""

    def __init__(self) -> None:
        self.nonce, self.n = secrets.token_hex(4), 0

    def __call__(self) -> str:
        self.n += 1
        return PROMPT.format(k=ITEMS[self.n % len(ITEMS)], nonce=self.nonce, n=self.n)


def batch_maker(spec: Spec, texts: Texts) -> Callable[[int], list[list[Any]]]:
    return lambda size: [[i, *spec.args(texts())] for i in range(size)]


def check(rows: list[list[Any]], response: httpx.Response) -> None:
    """Every row answered, in order, not NULL; fail loudly rather than time a server that answers errors."""
    if response.status_code != 200:
        raise SystemExit(f"{response.request.url.path}: HTTP {response.status_code}: {response.text[:200]}")
    data = orjson.loads(response.content)["data"]
    if len(data) != len(rows) or data[0][0] != rows[0][0] or data[-1][0] != rows[-1][0]:
        raise SystemExit("the answer does not hold one row per input row in order")
    if data[0][1] is None:
        raise SystemExit(f"{response.request.url.path}: the first row's answer is NULL: {rows[0]}")


async def throughput(
    server: Server,
    label: str,
    path: str,
    make: Callable[[int], list[list[Any]]],
    batch_rows: int,
    seconds: float,
    connections: int,
) -> Throughput:
    pid = server.proc.pid
    async with httpx.AsyncClient(
        base_url=server.base, timeout=120, limits=httpx.Limits(max_connections=connections)
    ) as c:

        async def one() -> int:
            rows = make(batch_rows)
            body = orjson.dumps({"data": rows})
            r = await c.post(path, content=body, headers={"content-type": "application/json"})
            check(rows, r)
            return len(rows)

        async def window(timed: bool) -> tuple[int, float, float, float | None]:
            """Rows, seconds, server CPU seconds and the fakes' own (None: not timed) of one window."""
            if server.engine_cpu_file is not None:
                server.time_fakes(timed)
            for _ in range(100):  # warm up every connection; the server takes the signal at its next request
                await asyncio.gather(*(one() for _ in range(connections)))
                if server.engine_cpu_file is None or server.timing() == timed:
                    break
            else:
                raise SystemExit(
                    f"the {server.code} server did not turn the timing of its fakes {'on' if timed else 'off'}"
                )
            done, stop = 0, time.perf_counter() + seconds

            async def worker() -> None:
                nonlocal done
                while time.perf_counter() < stop:
                    rows = await one()  # not `done += await one()`: that reads `done` before the await
                    done += rows

            cpu0, engine0, t0 = cpu_seconds(pid), server.engine_cpu_s(), time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(connections)))
            elapsed, cpu, engine1 = time.perf_counter() - t0, cpu_seconds(pid) - cpu0, server.engine_cpu_s()
            return done, elapsed, cpu, None if engine0 is None or engine1 is None else engine1 - engine0

        done, elapsed, cpu, _ = await window(False)  # the server as it runs in production
        if server.engine_cpu_file is None:
            return Throughput(label, server.code, batch_rows, done, elapsed, cpu)
        timed_rows, _, timed_cpu, engine = await window(True)  # the fakes' own share, in a window of its own
    return Throughput(label, server.code, batch_rows, done, elapsed, cpu, engine, timed_rows, timed_cpu)


async def latency(
    server: Server, label: str, path: str, make: Callable[[int], list[list[Any]]], batch_rows: int, batches: int
) -> Latency:
    bodies = [(rows, orjson.dumps({"data": rows})) for rows in (make(batch_rows) for _ in range(batches + 10))]
    times = []
    # The load generator's own garbage collections are not the server's tail: a full one here (14-21 ms, seen
    # with a gc.callbacks hook) fell inside the round trip of a 3 ms batch. Its garbage is freed by reference
    # counting meanwhile; the collector runs again after.
    gc.collect()
    gc.disable()
    try:
        async with httpx.AsyncClient(base_url=server.base, timeout=60) as c:
            for i, (rows, body) in enumerate(bodies):
                t0 = time.perf_counter()
                r = await c.post(path, content=body, headers={"content-type": "application/json"})
                dt = time.perf_counter() - t0
                check(rows, r)
                if i >= 10:  # the first ten warm up
                    times.append(dt * 1000)
    finally:
        gc.enable()
    times.sort()
    return Latency(
        label,
        server.code,
        batch_rows,
        len(times),
        statistics.median(times),
        times[min(len(times) - 1, round(0.99 * len(times)))],
        times[-1],
    )


async def measure(
    servers: list[Server],
    specs: list[Spec],
    args: argparse.Namespace,
) -> tuple[list[Throughput], list[Latency]]:
    """Function by function, each server in turn (the order alternates), so both see the same minutes."""
    texts = Texts()
    runs: list[Throughput] = []
    lat: list[Latency] = []
    for k, spec in enumerate(specs):
        make = batch_maker(spec, texts)
        for server in servers if k % 2 == 0 else servers[::-1]:
            t0 = time.time()
            repeats = [
                await throughput(server, spec.label, spec.path, make, args.batch_rows, args.seconds, args.connections)
                for _ in range(args.repeat)
            ]
            server.phases.append((f"{spec.label} (throughput)", t0, time.time()))
            runs.append(sorted(repeats, key=lambda r: r.rows_per_cpu_s)[len(repeats) // 2])  # the median run
            if not args.profile:
                t0 = time.time()
                lat.append(await latency(server, spec.label, spec.path, make, args.latency_rows, args.batches))
                server.phases.append((f"{spec.label} (sequential)", t0, time.time()))
    if args.profile or not any(s.label == "COMPLETE" for s in specs):
        return runs, lat
    complete = next(s for s in specs if s.label == "COMPLETE")
    fixed = batch_maker(complete, texts)(args.batch_rows)
    for server in servers:
        runs.append(
            await throughput(
                server,
                "COMPLETE, one batch repeated",
                complete.path,
                lambda _n: fixed,
                args.batch_rows,
                args.seconds,
                args.connections,
            )
        )
        # the fixed cost of a batch (HTTP on loopback, the client, the scheduling noise of a shared machine)
        lat.append(await latency(server, "COMPLETE", complete.path, batch_maker(complete, texts), 1, args.batches))
    return runs, lat


async def worker_in_process(specs: list[Spec], args: argparse.Namespace) -> dict[str, Any]:
    """The gateway's work without HTTP, in this process (run with the PYTHONPATH of the code measured): each
    batch's body is decoded, answered and encoded as the server does, and CPU time is this thread's, so the other
    sessions on a shared machine do not appear in it (they do in the HTTP round trips). Throughput: rows per CPU
    second with ``connections`` batches at once; tail: CPU milliseconds per sequential 100-row batch."""
    from spcs_llm.functions import FUNCTIONS
    from spcs_llm.server.snowflake import answer_batch, decode_rows, encode_rows
    from spcs_llm.server.tuning import tune_gc

    settings, engine, embedders, rt = await fake_runtime(args.upstream)
    limit = settings.server.max_response_bytes
    if args.labels_first:
        labels_first()
    # with the engine in its own process, all of this thread's CPU is the gateway's (the hop included)
    timer = None if args.upstream else FakeTimer(engine, embedders)
    tune_gc()
    texts = Texts()
    out: dict[str, Any] = {"throughput": [], "latency": []}

    async def one(fn: Any, body: bytes) -> int:
        rows = decode_rows(body)
        values = await answer_batch(fn, rt, rows)
        encode_rows([r[0] for r in rows], values, limit)
        return len(rows)

    for spec in specs:
        fn, make = FUNCTIONS[spec.label.lower()], batch_maker(spec, texts)
        await one(fn, orjson.dumps({"data": make(args.batch_rows)}))

        async def window(fn: Any, make: Callable[[int], list[list[Any]]]) -> tuple[int, float, float]:
            done, cpu, t0 = 0, 0.0, time.perf_counter()
            while time.perf_counter() - t0 < args.seconds:
                bodies = [orjson.dumps({"data": make(args.batch_rows)}) for _ in range(args.connections)]
                c0 = time.thread_time()  # the client's share (making the bodies) is not the gateway's
                done += sum(await asyncio.gather(*(one(fn, b) for b in bodies)))
                cpu += time.thread_time() - c0
            return done, time.perf_counter() - t0, cpu

        done, seconds, cpu = await window(fn, make)  # the gateway as it runs, the fakes' calls not timed
        row: dict[str, Any] = {"label": spec.label, "rows": done, "seconds": seconds, "server_cpu_s": cpu}
        if timer is not None:  # the fakes' own share, in a window of its own (timing them costs ~2 us a call)
            timer.on()
            timer.spent[0] = 0.0
            row["timed_rows"], _, row["timed_cpu_s"] = await window(fn, make)
            row["engine_cpu_s"] = timer.spent[0]
            timer.off()
        out["throughput"].append(row)
        if not args.batches:  # a repeat of the throughput only (in_process measures the tail once per code)
            continue
        times = []
        for i in range(args.batches + 10):
            body = orjson.dumps({"data": make(args.latency_rows)})
            c0 = time.thread_time()
            await one(fn, body)
            if i >= 10:
                times.append((time.thread_time() - c0) * 1000)
        times.sort()
        out["latency"].append(
            {
                "label": spec.label,
                "batches": len(times),
                "p50_ms": statistics.median(times),
                "p99_ms": times[min(len(times) - 1, round(0.99 * len(times)))],
                "max_ms": times[-1],
            }
        )
    return out


FAKE_ENGINE_CALLS = ("chat", "next_token", "token_pieces", "count_tokens")
FAKE_EMBEDDER_CALLS = ("embed_counted", "embed_array", "embed", "count_tokens")


class FakeTimer:
    """Times the fake engine's and embedders' calls (on the objects, or on their classes before any is made) while
    :meth:`on`: their own CPU time is added up in ``spent[0]`` (and given to ``publish`` after each call). They
    stand for the GPU, which is not the gateway's cost. Each call runs without suspending (the fakes have no delay
    here), so the thread's CPU time around it is that call's alone; a call made by another timed call (``embed``
    calls ``embed_array``) is counted once. The label walk (``score_labels``, ``choose_labels``) is the
    gateway's and is not wrapped; its steps (``next_token``) are.

    The timing itself costs ~2 us a call (two ``thread_time`` system calls and a coroutine), which counts as the
    gateway's, so the bench times the fakes in a window of its own and measures the gateway's rate with it
    :meth:`off` (the calls as they are)."""

    def __init__(self, engine: Any, embedders: list[Any], publish: Callable[[float], None] | None = None) -> None:
        self.spent, self.publish = [0.0], publish
        self._owners = [(engine, FAKE_ENGINE_CALLS), *((e, FAKE_EMBEDDER_CALLS) for e in embedders)]
        self._saved: list[tuple[Any, str, Any]] = []  # (owner, name, its own attribute before, or _MISSING)

    def on(self) -> None:
        if self._saved:
            return
        spent, depth, publish = self.spent, [0], self.publish
        for owner, names in self._owners:
            for name in names:
                if not hasattr(owner, name):
                    continue
                call = getattr(owner, name)

                async def wrapper(*args: Any, _call: Any = call, **kwargs: Any) -> Any:
                    if depth[0]:
                        return await _call(*args, **kwargs)
                    depth[0], c0 = 1, time.thread_time()
                    try:
                        return await _call(*args, **kwargs)
                    finally:
                        depth[0] = 0
                        spent[0] += time.thread_time() - c0
                        if publish is not None:
                            publish(spent[0])

                self._saved.append((owner, name, vars(owner).get(name, _MISSING)))
                setattr(owner, name, wrapper)

    def off(self) -> None:
        for owner, name, before in reversed(self._saved):
            if before is _MISSING:
                delattr(owner, name)
            else:
                setattr(owner, name, before)
        self._saved.clear()

    @property
    def timing(self) -> bool:
        return bool(self._saved)


_MISSING = object()

# every label the bench's rows of the label functions are scored on
LABELS = ("positive", "negative", "neutral", "mixed", "unknown", "TRUE", "FALSE", *CATEGORIES)


def labels_first() -> None:
    """Replace the fake engine's label step (``FakeEngine.next_token``) by a stand-in that answers as a model does
    at a label's position and costs almost nothing: the bench's labels first (in one of 97 orders, with
    log-probabilities, chosen by a CRC of the row's text), then two tokens that begin none. Every row of a label
    function then takes every label step (three for ENTITY_SENTIMENT) and none falls back to generating, and what
    is left of the row's CPU is the gateway's: a dict lookup of a step made once per (order, top), ~0.6 us a step
    with the coroutine (timed alone).

    The fake's own step costs more than the gateway's whole row (its "fake alone" column: a BLAKE2b hash, an
    exponential and a sort place for every word of the instruction and the row, 60-210 us a row): that is the
    model's work, which vLLM does on the GPU in another process. Its answers are not the fake model's."""
    import zlib

    from spcs_llm.engines import fake
    from spcs_llm.engines.base import Usage
    from spcs_llm.engines.labels import NextToken

    orders = []
    for r in range(97):
        ranked = sorted(((-0.2 - (r * (i + 7) % 97) / 20, label) for i, label in enumerate(LABELS)), reverse=True)
        orders.append(tuple((label, logprob) for logprob, label in ranked) + (("w", -9.0), ("The", -9.5)))
    usage, made, crc = Usage(50, 1), {}, zlib.crc32

    async def next_token(self: Any, messages: Any, prefix: str, top: int) -> NextToken:
        key = (crc(messages[-1].content.encode()) % 97, top)
        step = made.get(key)
        if step is None:
            step = made[key] = NextToken(orders[key[0]][:top], usage)
        return step

    fake.FakeEngine.next_token = next_token  # type: ignore[method-assign]


def run_worker(cmd: list[str], src: Path, core: int) -> Any:
    """Run a bench's worker process with the code of ``src`` (its PYTHONPATH), pinned to ``core``: the JSON it
    printed."""
    done = subprocess.run(
        cmd,
        env=os.environ | {"PYTHONPATH": str(src)},
        check=True,
        capture_output=True,
        preexec_fn=lambda: os.sched_setaffinity(0, {core}),
    )
    return json.loads(done.stdout)


def in_process(
    sources: list[tuple[str, Path]],
    specs: list[Spec],
    args: argparse.Namespace,
) -> tuple[list[Throughput], list[Latency]]:
    """Runs :func:`worker_in_process` in a process of its own, pinned to the server's core, for each function,
    code and repeat: function by function, the codes alternately (the order swapped each time), as the HTTP mode
    does, so that both codes see the same minutes of a shared machine. The tail is measured in each code's first
    run of a function; the throughput kept is the median of ``--repeat`` runs."""
    runs: list[Throughput] = []
    lat: list[Latency] = []
    for k, spec in enumerate(specs):
        repeats: dict[str, list[Throughput]] = {code: [] for code, _ in sources}
        for rep in range(args.repeat):
            for code, src in sources if (k + rep) % 2 == 0 else sources[::-1]:
                cmd = [
                    sys.executable,
                    __file__,
                    "--worker-in-process",
                    "--seconds",
                    str(args.seconds),
                    "--batch-rows",
                    str(args.batch_rows),
                    "--connections",
                    str(args.connections),
                    "--latency-rows",
                    str(args.latency_rows),
                    "--batches",
                    str(args.batches if rep == 0 else 0),
                    "--functions",
                    spec.label,
                    *(["--upstream", args.upstream] if args.upstream else []),
                    *(["--labels-first"] if args.labels_first else []),
                ]
                result = run_worker(cmd, src, args.server_core)
                repeats[code] += [
                    Throughput(
                        r["label"],
                        code,
                        args.batch_rows,
                        r["rows"],
                        r["seconds"],
                        r["server_cpu_s"],
                        r.get("engine_cpu_s"),
                        r.get("timed_rows"),
                        r.get("timed_cpu_s"),
                    )
                    for r in result["throughput"]
                ]
                lat += [
                    Latency(q["label"], code, args.latency_rows, q["batches"], q["p50_ms"], q["p99_ms"], q["max_ms"])
                    for q in result["latency"]
                ]
        for code, _ in sources:
            mine = sorted(repeats[code], key=lambda r: r.rows_per_cpu_s)
            runs.append(mine[len(mine) // 2])  # the median run
    return runs, lat


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"{os.cpu_count()} cores ({cpu}), {platform.system()} {platform.release()}, Python "
        f"{sys.version.split()[0]}, {load}"
    )


def _by(items: list[Any], code: str) -> dict[str, Any]:
    return {(i.label if i.batch_rows != 1 else f"{i.label}, 1 row"): i for i in items if i.code == code}


def report(runs: list[Throughput], lat: list[Latency], codes: list[str]) -> None:
    before = "before" in codes
    engine_split = any(r.engine_cpu_s is not None for r in runs if r.code == "after")
    print(
        f"\n{'rows per server CPU-second, 1,000-row batches':46} {'after':>8}"
        + (f" {'before':>8} {'ratio':>6}" if before else "")
        + f" {'rows/s':>8} {'srv CPU s':>9}"
        + (f" {'engine %':>8} {'gateway only':>12} {'fake alone':>10}" if engine_split else "")
    )
    after_runs, before_runs = _by(runs, "after"), _by(runs, "before")
    for label, r in after_runs.items():
        b = before_runs.get(label)
        line = f"{label:46} {r.rows_per_cpu_s:>8.0f}"
        if before:
            line += f" {b.rows_per_cpu_s:>8.0f} {r.rows_per_cpu_s / b.rows_per_cpu_s:>5.1f}x" if b else " " * 16
        line += f" {r.rows_per_s:>8.0f} {r.server_cpu_s:>9.2f}"
        if engine_split and r.engine_cpu_s is not None:
            ceiling = r.fake_ceiling
            line += f" {100 * (r.engine_share or 0.0):>7.0f}% {r.gateway_rows_per_cpu_s:>12.0f}"
            line += f" {ceiling:>10.0f}" if ceiling is not None else f" {'-':>10}"
        flag = "" if r.rows_per_cpu_s >= GOAL_ROWS_PER_CPU_S else "  < goal"
        if flag and r.fake_ceiling is not None and r.fake_ceiling < GOAL_ROWS_PER_CPU_S:
            flag += " (out of reach: the fake alone allows fewer)"
        print(f"{line}{flag}")
    print(
        f"\n{'sequential batches, ms per batch':34} {'rows':>4} {'p50':>6} {'p99':>6} {'max':>6} {'p99/p50':>7}"
        + (f"  |  before: {'p50':>6} {'p99':>6} {'max':>6} {'p99/p50':>7}" if before else "")
    )
    after_lat, before_lat = _by(lat, "after"), _by(lat, "before")
    for label, q in after_lat.items():
        line = (
            f"{q.label:34} {q.batch_rows:>4} {q.p50_ms:>6.2f} {q.p99_ms:>6.2f} {q.max_ms:>6.1f} {q.tail_ratio:>6.2f}x"
        )
        b = before_lat.get(label)
        if b is not None:
            line += f"  |          {b.p50_ms:>6.2f} {b.p99_ms:>6.2f} {b.max_ms:>6.1f} {b.tail_ratio:>6.2f}x"
        if q.batch_rows > 1 and q.tail_ratio > GOAL_TAIL_RATIO:
            line += "  tail > 2x"
        print(line)
    print(
        f"\ngoals (issue 18): >= {GOAL_ROWS_PER_CPU_S:,} rows per server CPU-second for every function; p99 of "
        f"sequential 100-row batches within {GOAL_TAIL_RATIO:g}x of the median; COMPLETE p99 < "
        f"{GOAL_COMPLETE_P99_MS:g} ms"
    )


def report_gc(servers: list[Server]) -> None:
    for s in servers:
        if not s.gc:
            continue
        pauses = s.gc["pauses"]
        print(f"\ngarbage collection in the {s.code} server: CPU ms (wall ms, which adds preemption)")
        for gen in (0, 1, 2):
            mine = [p for p in pauses if p[0] == gen]
            if mine:
                cpu, wall = sorted(p[2] for p in mine), sorted(p[1] for p in mine)
                print(
                    f"  generation {gen}: {len(mine):>5} collections, {sum(cpu):>8.1f} ms in all ({sum(wall):.0f}), "
                    f"median {statistics.median(cpu):6.2f} ms, max {cpu[-1]:7.2f} ms ({wall[-1]:.1f})"
                )
        worst = sorted(pauses, key=lambda p: -p[2])[:5]
        print("  the longest, and what the bench was measuring then:")
        for gen, _wall, cpu, *when in worst:
            during = next((what for what, t0, t1 in s.phases if when and t0 <= when[0] <= t1), "between phases")
            print(f"    {cpu:7.2f} ms  generation {gen}  {during}")


def plot(runs: list[Throughput], lat: list[Latency], codes: list[str], path: Path, where: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    after_runs = _by(runs, "after")
    labels = [label for label in after_runs if label in _by(lat, "after")]
    fig, (a, b) = plt.subplots(2, 1, figsize=(13, 8.5), sharex=True)
    width = 0.8 / len(codes)
    colors = {"before": "#aaaaaa", "after": "#1f77b4"}
    for k, code in enumerate(sorted(codes, reverse=True)):  # before first
        rr, ll = _by(runs, code), _by(lat, code)
        x = [i + (k - (len(codes) - 1) / 2) * width for i in range(len(labels))]
        a.bar(x, [rr[label].rows_per_cpu_s for label in labels], width=width, color=colors[code], label=code)
        b.bar(x, [ll[label].tail_ratio for label in labels], width=width, color=colors[code], label=code)
    a.axhline(GOAL_ROWS_PER_CPU_S, color="#d62728", ls="--", lw=1, label=f"goal: {GOAL_ROWS_PER_CPU_S:,}")
    a.set_yscale("log")
    a.set_ylabel("rows per server CPU-second")
    a.set_title(f"{runs[0].batch_rows}-row batches of distinct rows, {where}")
    a.legend(fontsize=8)
    b.axhline(GOAL_TAIL_RATIO, color="#d62728", ls="--", lw=1, label=f"goal: p99 within {GOAL_TAIL_RATIO:g}x")
    b.set_ylabel("p99 / p50, sequential 100-row batches")
    b.set_xticks(
        range(len(labels)),
        [label.replace("_", "_\n", 1) if len(label) > 14 else label for label in labels],
        rotation=60,
        fontsize=7,
    )
    b.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"plot written to {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=1.0, help="length of each throughput run")
    ap.add_argument("--batch-rows", type=int, default=1000)
    ap.add_argument("--connections", type=int, default=4, help="batches in flight during throughput runs")
    ap.add_argument("--repeat", type=int, default=1, help="throughput runs per function; the median is kept")
    ap.add_argument("--latency-rows", type=int, default=100)
    ap.add_argument("--batches", type=int, default=200, help="sequential batches for the latency percentiles")
    ap.add_argument("--functions", help="comma-separated function names (default: all of them)")
    ap.add_argument("--before", metavar="REV", help="also measure the code of this git revision, side by side")
    ap.add_argument("--server-core", type=int, default=0)
    ap.add_argument("--client-core", type=int, default=1)
    ap.add_argument("--plot", type=Path, help="write a PNG chart here")
    ap.add_argument("--json", action="store_true", help="print the results as one JSON object")
    ap.add_argument("--gc-stats", action="store_true", help="record every garbage collection in the servers")
    ap.add_argument(
        "--in-process",
        action="store_true",
        help="no HTTP: the gateway's decode/answer/encode in a "
        "process pinned to the server core, CPU time of that thread only (see worker_in_process)",
    )
    ap.add_argument(
        "--engine-process",
        action="store_true",
        help="the fake engine and embedders in a process of their own on the client core (bench/fake_upstream.py), "
        "reached over HTTP through the gateway's real engine hop, as vLLM is (with or without --in-process)",
    )
    ap.add_argument(
        "--labels-first",
        action="store_true",
        help="the fake engine's label step replaced by a free stand-in that puts the labels first, as a model does "
        "(see labels_first): the label functions' CPU is then the gateway's",
    )
    ap.add_argument("--worker-in-process", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--upstream", help=argparse.SUPPRESS)
    ap.add_argument(
        "--profile",
        type=Path,
        help="run the server under pyinstrument (throughput runs only) and "
        "write its flat text report (time per function, itself) here",
    )
    args = ap.parse_args()
    if args.labels_first and (args.engine_process or args.profile):
        ap.error("--labels-first patches the fake engine in the server's process: not with --engine-process, --profile")
    specs = SPECS
    if args.functions:
        wanted = {n.strip().upper() for n in args.functions.split(",")}
        specs = [s for s in SPECS if s.label in wanted]
        if unknown := wanted - {s.label for s in specs}:
            raise SystemExit(f"unknown functions: {sorted(unknown)}")

    if args.worker_in_process:
        import uvloop

        print(json.dumps(uvloop.run(worker_in_process(specs, args))))
        return
    if args.client_core != args.server_core:
        os.sched_setaffinity(0, {args.client_core})
    with tempfile.TemporaryDirectory() as tmp:
        sources = [("after", ROOT / "src")]
        if args.before:
            (Path(tmp) / "before").mkdir()
            sources.append(("before", extract_revision(args.before, Path(tmp) / "before")))
        servers: list[Server] = []
        if args.in_process and args.engine_process:
            upstream = start_upstream(args.client_core)
            args.upstream = upstream[1]
            try:
                runs, lat = in_process(sources, specs, args)
            finally:
                upstream[0].terminate()
                upstream[0].wait(timeout=30)
        elif args.in_process:
            runs, lat = in_process(sources, specs, args)
        else:
            upstream = start_upstream(args.client_core) if args.engine_process else None
            try:
                for code, src in sources:
                    (Path(tmp) / code).mkdir(exist_ok=True)
                    servers.append(
                        start_server(
                            code,
                            src,
                            args.server_core,
                            Path(tmp) / code,
                            args.profile if code == "after" else None,
                            args.gc_stats,
                            upstream[1] if upstream else None,
                            args.labels_first,
                        )
                    )
                runs, lat = asyncio.run(measure(servers, specs, args))
            finally:
                for server in servers:
                    stop_server(server)
                if upstream is not None:
                    upstream[0].terminate()
                    upstream[0].wait(timeout=30)

    codes = [code for code in ("after", "before") if any(r.code == code for r in runs)]
    if args.json:
        print(
            json.dumps(
                {
                    "machine": machine(),
                    "before": args.before,
                    "labels_first": args.labels_first,
                    "throughput": [
                        asdict(r)
                        | {
                            "rows_per_s": r.rows_per_s,
                            "rows_per_cpu_s": r.rows_per_cpu_s,
                            "gateway_rows_per_cpu_s": r.gateway_rows_per_cpu_s,
                        }
                        for r in runs
                    ],
                    "latency": [asdict(q) | {"tail_ratio": q.tail_ratio} for q in lat],
                    "gc": {s.code: s.gc for s in servers if s.gc},
                }
            )
        )
    else:
        where = (
            "in-process (no HTTP in), the fakes in their own process behind the engine hop (OpenAIHttpEngine), "
            "CPU time of the gateway's thread"
            if args.in_process and args.engine_process
            else "in-process (no HTTP), CPU time of the gateway's thread"
            if args.in_process
            else f"server pinned to core {args.server_core}, load and the fakes' own process (behind the engine hop) "
            f"on core {args.client_core}"
            if args.engine_process
            else f"server pinned to core {args.server_core}, load on core {args.client_core}"
        )
        print(
            "\nspcs-llm gateway on the fake engine"
            + (" (label steps: the free labels-first stand-in)" if args.labels_first else "")
            + f"; {where}; {machine()}"
            + (f"; before = {args.before}" if args.before else "")
        )
        report(runs, lat, codes)
        report_gc(servers)
    if args.plot and lat:
        where = (
            "the fakes in their own process behind the engine hop"
            if args.engine_process
            else "fake engine in process"
            if args.in_process
            else "fake engine, server on 1 core"
        )
        where += ", label steps: free labels-first stand-in" if args.labels_first else ""
        plot(runs, lat, codes, args.plot, where + ", gateway on 1 core" if args.in_process else where)
    if args.profile:
        print(f"server profile written to {args.profile}")


if __name__ == "__main__":
    main()
