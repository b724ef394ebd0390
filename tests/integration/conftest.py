"""Starts the real service (``spcs-llm serve``) on loopback with the real packaged llama.cpp model."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from spcs_llm.client import PollingTransport
from spcs_llm.server.health import wait_healthy

MAX_OUTPUT_TOKENS = 48
CTX_PER_SLOT = 1024


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LiveServer:
    def __init__(self, base_url: str, log_path: Path) -> None:
        self.base_url = base_url
        self.log_path = log_path

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")


@pytest.fixture(scope="session")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    port = _free_port()
    log_path = tmp_path_factory.mktemp("server") / "server.log"
    cmd = [
        sys.executable,
        "-m",
        "spcs_llm",
        "serve",
        "--port",
        str(port),
        "--n-parallel",
        "4",
        "--ctx-per-slot",
        str(CTX_PER_SLOT),
        "--max-output-tokens",
        str(MAX_OUTPUT_TOKENS),
    ]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ))
    base = f"http://127.0.0.1:{port}"
    try:
        if not wait_healthy(base, timeout_s=300, still_running=lambda: proc.poll() is None):
            raise RuntimeError(f"server not healthy (exit code {proc.poll()}):\n{log_path.read_text()}")
        yield LiveServer(base, log_path)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture
def http(live_server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live_server.base_url, timeout=300, transport=PollingTransport()) as c:
        yield c
