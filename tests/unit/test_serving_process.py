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


SETTLE = """
import asyncio, gc
from asgi_lifespan import LifespanManager
from spcs_llm.config import Settings
from spcs_llm.server import create_app, tuning

async def main():
    app = create_app(Settings.load(overrides={"engine": {"kind": "fake"}}))
    tuning.tune_gc()  # as `spcs-llm serve` does: after the app is made, before the engines start
    async with LifespanManager(app):
        while app.state.runtime is None:
            await asyncio.sleep(0.01)
        shards = app.state.runtime.scheduler.cache._shards
        assert shards and all(gc.is_tracked(s.items) for s in shards)
        walked = {id(o) for o in gc.get_objects()}  # the generations a collection walks (not the frozen)
        assert not any(id(s.items) in walked for s in shards), "the cache's containers are walked by collections"

asyncio.run(main())
"""


def test_the_result_cache_made_at_engine_start_is_frozen_in_a_tuned_process() -> None:
    """A young collection walks every entry of a young container: the cache's shards, made after tune_gc, were
    first collected when they held ~360,000 entries (150-490 ms). settle() freezes them once the engines are up."""
    subprocess.run([sys.executable, "-c", SETTLE], check=True)


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
