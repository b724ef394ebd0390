"""Memory of `spcs-llm serve` while it refuses oversized uploads (413): a declared 1 GB body, a 1 GB chunked body
(no Content-Length) and a gzip body that would inflate to 1 GB. The server runs as its own process (fake engine);
its RSS is read from /proc before and after each upload, and its peak (VmHWM) at the end.

    python bench/bench_limits.py [--size-mb 1024] [--limit-mb 64]
"""

from __future__ import annotations

import argparse
import gzip
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

from spcs_llm.server.health import wait_healthy  # noqa: E402
from tests.unit.test_auth_limits import upload  # noqa: E402


def mem(pid: int) -> tuple[float, float]:
    """(RSS, peak RSS) in MiB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def gzip_bomb(size: int) -> bytes:
    return gzip.compress(b'{"data": [[0, "' + b"a" * size + b'"]]}', compresslevel=9)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mb", type=int, default=1024)
    ap.add_argument("--limit-mb", type=float, default=64)
    args = ap.parse_args()
    size = args.size_mb * 2**20
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    env.pop("SPCS_LLM_API_KEY", None)
    cmd = [
        sys.executable,
        "-m",
        "spcs_llm",
        "serve",
        "--engine",
        "fake",
        "--port",
        str(port),
        "--max-request-mb",
        str(args.limit_mb),
    ]
    server = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_healthy(f"http://127.0.0.1:{port}", 60, lambda: server.poll() is None)
        bomb = gzip_bomb(size)  # made before timing: compressing 1 GB takes the client a while
        start_rss, _ = mem(server.pid)
        print(f"limit {args.limit_mb:g} MB; server RSS at start {start_rss:.0f} MiB\n")
        print(f"{'upload':<34}{'status':>7}{'MiB sent':>10}{'seconds':>9}{'RSS after':>11}{'peak so far':>13}")
        cases = [
            ("declared Content-Length", lambda: upload("127.0.0.1", port, size)),
            ("chunked, no Content-Length", lambda: upload("127.0.0.1", port, size, chunked=True)),
            ("gzip inflating to the size", lambda: _gzip(port, bomb)),
        ]
        for name, run in cases:
            t = time.perf_counter()
            status, sent = run()
            rss, peak = mem(server.pid)
            print(
                f"{name + f' ({args.size_mb} MB)':<34}{status:>7}{sent / 2**20:>10.0f}"
                f"{time.perf_counter() - t:>9.2f}{rss:>11.0f}{peak:>13.0f}"
            )
        r = httpx.post(f"http://127.0.0.1:{port}/functions/sentiment", json={"data": [[0, "ok"]]}, timeout=30)
        print(
            f"\nafterwards a normal batch: {r.status_code}; peak RSS over the run {mem(server.pid)[1]:.0f} MiB "
            f"(start {start_rss:.0f} MiB)"
        )
    finally:
        server.terminate()
        server.wait(timeout=30)


def _gzip(port: int, body: bytes) -> tuple[int, int]:
    r = httpx.post(
        f"http://127.0.0.1:{port}/functions/sentiment",
        content=body,
        headers={"content-encoding": "gzip", "content-type": "application/json"},
        timeout=120,
    )
    return r.status_code, len(body)


if __name__ == "__main__":
    main()
