"""`spcs-llm serve --model qwen2.5-0.5b-instruct`: the real server and llama.cpp, the GGUF from a mirror stand-in.

How a user tries a Qwen model on a laptop. The stand-in hub (tests/unit/hubserver.py, Hugging Face layout with the
302 to a CDN path) serves the packaged SmolLM2 GGUF under Qwen's file name: a real GGUF that llama.cpp loads (the
real Qwen file is not reachable here). The container variant is tests/integration/test_image_rootfs.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from spcs_llm.models import packaged
from spcs_llm.server.health import wait_healthy

from ..unit.hubserver import Hub, HubServer
from .conftest import _free_port

pytestmark = pytest.mark.integration
NAME, REPO, FILE = "qwen2.5-0.5b-instruct", "Qwen/Qwen2.5-0.5B-Instruct-GGUF", "qwen2.5-0.5b-instruct-q4_k_m.gguf"


def test_serve_a_catalogue_name_pulls_its_gguf_and_serves_it(tmp_path: Path) -> None:
    hub = Hub({REPO: {FILE: packaged.ensure_packaged_model().read_bytes(), "README.md": b"# GGUF"}})
    port = _free_port()
    log = tmp_path / "serve.log"
    with HubServer(hub) as url:
        env = dict(os.environ, SPCS_LLM_CACHE=str(tmp_path / "cache"), SPCS_LLM_SOURCES=f"hf={url},modelscope={url}")
        cmd = [
            sys.executable,
            "-m",
            "spcs_llm",
            "serve",
            "--model",
            NAME,
            "--port",
            str(port),
            "--n-parallel",
            "2",
            "--ctx-per-slot",
            "512",
        ]
        with open(log, "wb") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        base = f"http://127.0.0.1:{port}"
        try:
            assert wait_healthy(base, timeout_s=300, still_running=lambda: proc.poll() is None), log.read_text()
            assert httpx.get(f"{base}/health").json()["model"] == NAME
            ids = {m["id"] for m in httpx.get(f"{base}/v1/models").json()["data"]}
            assert NAME in ids
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    cached = tmp_path / "cache" / "hub" / f"Qwen--Qwen2.5-0.5B-Instruct-GGUF--{FILE}" / FILE
    assert cached.is_file()
    assert hub.count("/cdn-lfs/") == 1 and hub.count("README.md") == 0  # one file, fetched once
