"""The app's tests: ``spcs_llm_app`` importable from ``apps/``, and a real ``spcs-llm serve --engine fake``
on loopback for AppTest to talk to over HTTP."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from spcs_llm.server.health import wait_healthy

APPS = Path(__file__).resolve().parents[2] / "apps"
sys.path.insert(0, str(APPS))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def fake_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The real server process with the deterministic fake engine (answers ``echo:<last user message>``)."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("fake-server") / "server.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "spcs_llm", "serve", "--engine", "fake", "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        if not wait_healthy(base, timeout_s=60, still_running=lambda: proc.poll() is None):
            raise RuntimeError(f"fake server not healthy (exit code {proc.poll()}):\n{log_path.read_text()}")
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=30)
