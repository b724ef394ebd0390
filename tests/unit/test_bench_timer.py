"""The bench's timing of the fakes (bench/bench_gateway.py ``FakeTimer``): it counts the fakes' own calls only while
on, each outermost call once, and off leaves the classes and objects as they were (the main column of the bench
is measured with the timing off, as the production server runs)."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from spcs_llm.engines.base import ChatRequest, Message
from spcs_llm.engines.fake import FakeEmbedder, FakeEngine

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench_gateway.py"


@pytest.fixture
def bench() -> Iterator[Any]:
    spec = importlib.util.spec_from_file_location("bench_gateway_under_test", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while it loads
    try:
        spec.loader.exec_module(module)
        ticks = iter(range(1_000_000))
        module.time = type("Clock", (), {"thread_time": staticmethod(lambda: float(next(ticks)))})  # one a read
        yield module
    finally:
        del sys.modules[spec.name]


def request() -> ChatRequest:
    return ChatRequest(messages=(Message("user", "hello there"),), max_tokens=8)


async def test_the_fakes_are_timed_only_while_on_and_each_outer_call_once(bench: Any) -> None:
    engine, embedder = FakeEngine(record=False), FakeEmbedder(record=False)
    await engine.start()
    timer = bench.FakeTimer(engine, [embedder])
    await engine.chat(request())
    assert timer.spent == [0.0] and not timer.timing
    timer.on()
    assert timer.timing
    await engine.chat(request())  # two clock reads: one tick
    assert timer.spent == [1.0]
    await embedder.embed(["a text"])  # embed calls embed_array, both wrapped: counted once
    assert timer.spent == [2.0]
    await engine.count_tokens("three words here")
    assert timer.spent == [3.0]
    timer.off()
    await engine.chat(request())
    await embedder.embed(["a text"])
    assert timer.spent == [3.0] and not timer.timing


def test_off_leaves_objects_and_classes_as_they_were(bench: Any) -> None:
    engine = FakeEngine(record=False)
    timer = bench.FakeTimer(engine, [])
    timer.on()
    timer.on()  # a second on wraps nothing again
    assert "chat" in vars(engine) and "next_token" in vars(engine)
    timer.off()
    assert not {"chat", "next_token", "token_pieces", "count_tokens"} & set(vars(engine))
    originals = {name: vars(FakeEngine)[name] for name in ("chat", "next_token", "token_pieces", "count_tokens")}
    on_classes = bench.FakeTimer(FakeEngine, [FakeEmbedder])
    on_classes.on()
    try:
        assert all(vars(FakeEngine)[name] is not fn for name, fn in originals.items())
    finally:
        on_classes.off()
    assert all(vars(FakeEngine)[name] is fn for name, fn in originals.items())


async def test_the_labels_first_stand_in_takes_every_label_step_and_never_generates(
    bench: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--labels-first`` claims that every label row then takes its label steps (three for ENTITY_SENTIMENT, one
    for the others) and none falls back to generating: what is left is the gateway's path."""
    import orjson

    from spcs_llm.functions import FUNCTIONS
    from spcs_llm.server.snowflake import answer_batch, decode_rows

    monkeypatch.setattr(FakeEngine, "next_token", FakeEngine.next_token)  # put back after the test
    bench.labels_first()
    _settings, engine, _embedders, rt = await bench.fake_runtime(None)
    steps, chats, stand_in = [], [], FakeEngine.next_token

    async def counted_step(self: Any, messages: Any, prefix: str, top: int) -> Any:
        steps.append(prefix)
        return await stand_in(self, messages, prefix, top)

    async def counted_chat(request: Any) -> Any:
        chats.append(request)
        raise AssertionError("the stand-in's rows should not generate")

    monkeypatch.setattr(FakeEngine, "next_token", counted_step)
    monkeypatch.setattr(engine, "chat", counted_chat)
    for label, per_row in (("SENTIMENT", 1), ("ENTITY_SENTIMENT", 3), ("CLASSIFY_TEXT", 1), ("AI_FILTER", 1)):
        spec = next(s for s in bench.SPECS if s.label == label)
        rows = decode_rows(orjson.dumps({"data": bench.batch_maker(spec, bench.Texts())(20)}))
        steps.clear()
        values = await answer_batch(FUNCTIONS[label.lower()], rt, rows)
        assert len(values) == 20 and all(v is not None for v in values), label
        assert len(steps) == 20 * per_row, label
    assert chats == []
    a = await stand_in(engine, (Message("user", "one row"),), '"', 5)
    b = await stand_in(engine, (Message("user", "another row"),), '"', 5)
    assert [t for t, _ in a.top] != [t for t, _ in b.top]  # the order follows the row
    assert {t for t, _ in a.top} <= set(bench.LABELS) and len(a.top) == 5
