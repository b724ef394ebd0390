"""Usage metering against the real service: `spcs-llm serve` with the real packaged llama.cpp model on loopback,
Snowflake-shaped batches with the context headers, the official openai SDK, a kill -9 and a restart, and
`spcs-llm usage --url` as a user would run it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import orjson
import pytest

from spcs_llm.server.health import wait_healthy

from ..conftest import post_batch_like_snowflake, sf_headers
from .conftest import _free_port

pytestmark = pytest.mark.integration
MODEL = "smollm2-135m-instruct"
FLUSH_SECONDS = 0.5

CONFIG = f"""
embeddings = []

[engine]
n_parallel = 2
ctx_per_slot = 512
max_output_tokens = 8

[usage]
db_path = "{{db}}"
flush_seconds = {FLUSH_SECONDS}
credits_per_node_hour = 1.2

[[budgets]]
role = "ANALYST"
tokens = 40
period = "day"

[[budgets]]
user = "anonymous"
tokens = 1
period = "month"
"""


class Server:
    def __init__(self, config: Path, log: Path) -> None:
        self.config, self.log = config, log
        self.proc: subprocess.Popen[bytes] | None = None
        self.base = ""

    def start(self) -> None:
        port = _free_port()
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "spcs_llm", "serve", "--config", str(self.config), "--port", str(port)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.base = f"http://127.0.0.1:{port}"
        if not wait_healthy(self.base, timeout_s=300, still_running=lambda: self.proc.poll() is None):
            raise RuntimeError(f"server not healthy:\n{self.log.read_text()}")

    def kill9(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    config = tmp_path / "spcs-llm.toml"
    config.write_text(CONFIG.replace("{db}", str(tmp_path / "usage.sqlite3")))
    s = Server(config, tmp_path / "server.log")
    s.start()
    try:
        yield s
    finally:
        s.stop()


def batch(base: str, fn: str, rows: list[list], role: str = "ANALYST") -> httpx.Response:
    headers = {
        **sf_headers(query_id=f"q-{fn}-{role}"),
        "sf-context-current-user": "ALICE",
        "sf-context-current-role": role,
    }
    body = orjson.dumps({"data": [[i, *r] for i, r in enumerate(rows)]})
    return post_batch_like_snowflake(f"{base}/functions/{fn}", body, headers, timeout=300)


def usage(base: str, by: str) -> list[dict]:
    r = httpx.get(f"{base}/usage", params={"by": by}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()["rows"]


def test_metering_budgets_and_history_on_the_real_server(server: Server) -> None:
    first = batch(server.base, "complete", [["llama3.1-8b", "Say hello."], ["llama3.1-8b", "Name a colour."]])
    assert first.status_code == 200, first.text
    (row,) = [r for r in usage(server.base, "user,role,function,model") if r["user"] == "ALICE"]
    assert (row["role"], row["function"], row["model"]) == ("ANALYST", "complete", MODEL)
    assert row["rows"] == 2 and row["engine_calls"] == 2
    assert row["input_tokens"] > 2 and 0 < row["output_tokens"] <= 16  # llama.cpp's own counts, 8 max per row
    assert row["busy_seconds"] > 0 and row["credits"] > 0

    # spend the rest of ANALYST's 40 tokens, then Cortex's budget exceeded on each surface
    while (r := batch(server.base, "complete", [["llama3.1-8b", "Tell me a short fact."]])).status_code == 200:
        pass
    assert (r.status_code, r.text) == (402, "budget exceeded")
    tried = batch(server.base, "try_complete", [["llama3.1-8b", "Anything at all."]])
    assert tried.status_code == 200 and tried.json()["data"] == [[0, None]]
    assert batch(server.base, "complete", [["llama3.1-8b", "Say hello."]], role="OPS").status_code == 200
    client = openai.OpenAI(base_url=f"{server.base}/v1", api_key="unused", max_retries=0)
    client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=4)
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=4)
    assert caught.value.status_code == 429 and caught.value.body["message"] == "budget exceeded"

    time.sleep(4 * FLUSH_SECONDS)  # let the flush loop write everything, then kill without a clean shutdown
    before = {(r["user"], r["role"]): r for r in usage(server.base, "user,role")}
    server.kill9()
    server.start()
    after = {(r["user"], r["role"]): r for r in usage(server.base, "user,role")}
    assert after == before  # nothing lost (it had been flushed) and nothing counted twice
    again = batch(server.base, "complete", [["llama3.1-8b", "Say hello."]])
    assert (again.status_code, again.text) == (402, "budget exceeded")  # the spent budget survived the restart

    out = subprocess.run(
        [sys.executable, "-m", "spcs_llm", "usage", "--url", server.base, "--since", "1d", "--by", "role"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[1].split()[:3] == ["role", "rows", "in"] and any(line.startswith("ANALYST") for line in lines)
