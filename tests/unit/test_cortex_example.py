"""examples/cortex_python.py runs to the end against a real loopback server (fake engine and embedders)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from spcs_llm.config import Settings
from spcs_llm.engines import FakeEmbedder, FakeEngine
from spcs_llm.server import create_app

from .loopback import serve

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "cortex_python.py"


def test_example_runs_against_the_service() -> None:
    pytest.importorskip("snowflake.snowpark")
    settings = Settings.load(overrides={"engine": {"kind": "fake"}})
    app = create_app(settings, engine=FakeEngine(), embedders=[FakeEmbedder("fake-embed-768", 768)])
    with serve(app) as base:
        env = {**os.environ, "SPCS_LLM_URL": base, "PYTHONPATH": str(EXAMPLE.parents[1] / "src")}
        env.pop("SPCS_LLM_API_KEY", None)
        done = subprocess.run([sys.executable, str(EXAMPLE)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "summarize: echo:The Snowflake Summit" in out and "stream: echo:Name three planets." in out
    assert "embed_text_768: 768 floats" in out and "|echo:Containers run any model." in out
    assert "openai SDK: echo:Say hello in French." in out
