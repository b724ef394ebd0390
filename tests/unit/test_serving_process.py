"""What `spcs-llm serve` does to its own process (GC tuning), and the served fake engine's memory."""

from __future__ import annotations

import subprocess
import sys

from spcs_llm.config import EmbeddingSettings, EngineSettings
from spcs_llm.engines import build_embedder, build_engine
from spcs_llm.engines.base import ChatRequest, Message
from spcs_llm.engines.fake import FakeEngine


def test_tune_gc_freezes_the_start_up_heap_and_raises_the_young_threshold() -> None:
    # in a child process: a frozen heap is never collected, which a test process must not inherit
    code = (
        "import gc; from spcs_llm.server.tuning import GEN0_THRESHOLD, tune_gc; before = gc.get_threshold(); "
        "tune_gc(); after = gc.get_threshold(); "
        "assert gc.get_freeze_count() > 10_000, gc.get_freeze_count(); "
        "assert after == (GEN0_THRESHOLD, *before[1:]), (before, after)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


async def test_a_configured_fake_engine_keeps_no_history_but_a_test_fake_does() -> None:
    request = ChatRequest((Message("user", "hello"),), max_tokens=4)
    served = build_engine(EngineSettings(kind="fake"))
    assert (await served.chat(request)).text == "echo:hello"
    assert served.calls == []
    embedder = build_embedder(EmbeddingSettings(kind="fake", dimension=8))
    await embedder.embed(["a b"])
    assert embedder.calls == []
    recording = FakeEngine()
    await recording.chat(request)
    assert recording.calls == [request]
