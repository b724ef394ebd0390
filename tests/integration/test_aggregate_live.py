"""AI_AGG over 500 rows on the real packaged model with its default context and output allowance: the case that
returned NULL (``max tokens of 2048 exceeded`` in the reduce step) before partial answers were bounded."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

from spcs_llm.server.health import wait_healthy

from .conftest import _free_port

pytestmark = pytest.mark.integration

ADJECTIVES = ["great", "slow", "cheap", "sturdy", "noisy", "lovely", "broken", "fast", "comfortable", "confusing"]
THINGS = ["battery", "delivery", "screen", "price", "support", "packaging", "sound", "manual", "fit", "app"]


def reviews(n: int) -> list[str]:
    return [f"The {THINGS[i % 10]} was {ADJECTIVES[(i * 7) % 10]}{'.' if i % 3 else ', sadly.'}" for i in range(n)]


@pytest.fixture(scope="module")
def default_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`spcs-llm serve` with the packaged model and its defaults (2048 tokens per slot, the catalogue's output cap)."""
    port = _free_port()
    log_path = tmp_path_factory.mktemp("agg") / "server.log"
    cmd = [sys.executable, "-m", "spcs_llm", "serve", "--port", str(port), "--n-parallel", "4"]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ))
    base = f"http://127.0.0.1:{port}"
    try:
        if not wait_healthy(base, timeout_s=300, still_running=lambda: proc.poll() is None):
            raise RuntimeError(f"server not healthy (exit code {proc.poll()}):\n{log_path.read_text()}")
        yield base
    finally:
        proc.terminate()  # in-flight rows finish first; on a loaded machine that can take long
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)


def test_ai_agg_over_500_rows_answers(default_server: str) -> None:
    body = {"data": [[0, reviews(500), "Summarize what customers say about the products."]]}
    start = time.monotonic()
    r = httpx.post(f"{default_server}/functions/ai_agg", json=body, timeout=3600)
    elapsed = time.monotonic() - start
    assert r.status_code == 200, r.text
    [[row, value]] = r.json()["data"]
    assert row == 0 and isinstance(value, str) and value.strip(), f"NULL after {elapsed:.0f}s"
    metrics = httpx.get(f"{default_server}/metrics", timeout=30).text
    assert 'kind="max_tokens_exceeded"' not in metrics
    print(f"\nAI_AGG over 500 rows: {len(value)} characters in {elapsed:.1f}s")
