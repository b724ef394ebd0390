"""The asynchronous protocol end to end: ``spcs-llm serve`` on loopback with the real packaged llama.cpp model,
configured to answer every batch 202 at once, polled with GETs the way Snowflake polls (same headers, no body)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from spcs_llm.server.health import wait_healthy

from ..conftest import sf_headers
from .conftest import _free_port

pytestmark = pytest.mark.integration
MODEL = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def async_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    port = _free_port()
    tmp = tmp_path_factory.mktemp("async")
    config, log_path = tmp / "spcs-llm.toml", tmp / "server.log"
    config.write_text(
        f"""embeddings = []

[server]
port = {port}
async_after_secs = 0        # every batch not answered at once gets 202

[engine]
kind = "llamacpp"
n_parallel = 2
ctx_per_slot = 1024
max_output_tokens = 12
""",
        encoding="utf-8",
    )
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "spcs_llm", "serve", "--config", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(os.environ),
        )
    base = f"http://127.0.0.1:{port}"
    try:
        if not wait_healthy(base, timeout_s=300, still_running=lambda: proc.poll() is None):
            raise RuntimeError(f"server not healthy (exit code {proc.poll()}):\n{log_path.read_text()}")
        yield base, log_path
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_a_batch_answered_202_is_fetched_by_polling_gets(async_server: tuple[str, Path]) -> None:
    base, log_path = async_server
    rows = [[i, MODEL, f"Name a colour, row {i}."] for i in range(3)]
    headers = sf_headers()
    with httpx.Client(base_url=base, timeout=120) as http:
        accepted = http.post("/functions/complete", content=orjson.dumps({"data": rows}), headers=headers)
        assert accepted.status_code == 202 and accepted.content == b""
        answer = None
        for _ in range(600):  # poll as Snowflake does: same headers, no body, until 200
            answer = http.get("/functions/complete", headers=headers)
            if answer.status_code != 202:
                break
            time.sleep(0.2)
        assert answer is not None and answer.status_code == 200
        data = answer.json()["data"]
        assert [n for n, _ in data] == [0, 1, 2]
        assert all(isinstance(v, str) and v.strip() for _, v in data)
        again = http.get("/functions/complete", headers=headers)  # a repeated GET gets the same answer
        assert again.status_code == 200 and again.content == answer.content
        unknown = http.get("/functions/complete", headers=sf_headers("never-sent"))
        assert unknown.status_code == 404
        metrics = http.get("/metrics").text
    assert "spcs_llm_async_accepted_total 1.0" in metrics
    events = [orjson.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
    posts = [e for e in events if e.get("event") == "batch"]
    assert posts and posts[0]["status"] == 202 and "wait_ms" in posts[0]
    assert any(e.get("event") == "batch_poll" and e["status"] == 200 for e in events)
