"""AI_AGG / AI_SUMMARIZE_AGG always finish: with an engine that answers every request at full length (the worst
case for a map-reduce), every request fits the context and the reduce converges for any number of rows."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from spcs_llm.engines import ChatRequest, ChatResult, FakeEngine, Usage
from spcs_llm.errors import MaxTokensExceeded
from spcs_llm.server import create_app

from ..conftest import batch, fake_settings, in_process, wait_ready


class FullLengthEngine(FakeEngine):
    """Answers every request with exactly ``max_tokens`` tokens, and is as strict as vLLM: a request whose prompt
    plus ``max_tokens`` is over the context window is refused (``max tokens of <n> exceeded``)."""

    def _answer(self, request: ChatRequest) -> ChatResult:
        prompt = sum(len(m.content.split()) + 1 for m in request.messages)
        if prompt + request.max_tokens > self.context_window:
            raise MaxTokensExceeded(self.context_window)
        text = " ".join(f"t{i}" for i in range(request.max_tokens))
        return ChatResult(text, "length", Usage(prompt, request.max_tokens, 0))


async def run_agg(rows: int, window: int, function: str = "ai_agg", words: int = 6) -> tuple[Any, FullLengthEngine]:
    engine = FullLengthEngine("fake-model", context_window=window, max_concurrency=8)
    app = create_app(fake_settings(max_output_tokens=4096), engine=engine, embedders=[])
    texts = [" ".join(f"r{r}w{w}" for w in range(words)) for r in range(rows)]
    args = [texts, "Summarize the reviews."] if function == "ai_agg" else [texts]
    async with in_process(app) as client:
        await wait_ready(app)
        r = await client.post(f"/functions/{function}", **batch(args))
    assert r.status_code == 200, r.text
    return orjson.loads(r.content)["data"][0][1], engine


@pytest.mark.parametrize("rows", [1, 2, 3, 17, 150, 1000, 5000])
@pytest.mark.parametrize("window", [256, 2048])
async def test_ai_agg_finishes_for_any_number_of_rows(rows: int, window: int) -> None:
    value, engine = await run_agg(rows, window)
    assert isinstance(value, str) and value  # never NULL
    mapped = [c for c in engine.calls if c.messages[0].content.startswith("You are given numbered texts")]
    seen = " ".join(c.messages[-1].content for c in mapped)
    assert all(f"r{r}w0 " in seen for r in range(rows))  # every row reached a map step
    assert len(engine.calls) >= len(mapped) + (len(mapped) > 1)  # more than one group: answers were reduced


async def test_each_reduce_round_at_least_halves_the_answers() -> None:
    _, engine = await run_agg(2000, 512)
    reduces = [c for c in engine.calls if c.messages[0].content.startswith("You are given partial results")]
    groups = [c.messages[-1].content.count("\n\n[") + 1 for c in reduces]
    assert reduces and min(groups) >= 2  # every reduce request combines at least two answers


async def test_ai_summarize_agg_and_long_summarize_finish_at_full_length() -> None:
    value, _ = await run_agg(800, 300, "ai_summarize_agg")
    assert isinstance(value, str) and value
    engine = FullLengthEngine("fake-model", context_window=300, max_concurrency=8)
    app = create_app(fake_settings(max_output_tokens=4096), engine=engine, embedders=[])
    async with in_process(app) as client:
        await wait_ready(app)
        r = await client.post("/functions/summarize", **batch([" ".join(f"w{i}" for i in range(20_000))]))
    assert r.status_code == 200 and isinstance(orjson.loads(r.content)["data"][0][1], str)


async def test_an_instruction_that_leaves_no_room_is_a_row_error() -> None:
    engine = FullLengthEngine("fake-model", context_window=128, max_concurrency=8)
    app = create_app(fake_settings(max_output_tokens=4096), engine=engine, embedders=[])
    async with in_process(app) as client:
        await wait_ready(app)
        r = await client.post("/functions/ai_agg", **batch([["a", "b"], " ".join(["word"] * 200)]))
    assert r.status_code == 200 and orjson.loads(r.content)["data"] == [[0, None]]  # NULL, as AI_* do
