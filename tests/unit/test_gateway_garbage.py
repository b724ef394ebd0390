"""A batch leaves nothing for the cyclic garbage collector: every object it makes is freed by reference counting
when the batch is answered. A reference cycle per row or per batch (a closure that refers to itself, an exception
kept with its traceback) would pile up to the young generation's threshold and make every few batches pay a
collection of tens of thousands of objects: the 8-40 ms stalls docs/bench-gateway.md traces."""

from __future__ import annotations

import gc
from typing import Any

import pytest

from spcs_llm.config import Settings
from spcs_llm.engines.fake import FakeEmbedder, FakeEngine
from spcs_llm.functions import FUNCTIONS
from spcs_llm.metrics import Metrics
from spcs_llm.server.app import build_runtime
from spcs_llm.server.snowflake import answer_batch, encode_rows

TEXT = "the lamp arrived two days late but works well and support answered quickly"
ROWS: dict[str, list[Any]] = {
    "complete": ["llama3.1-8b", TEXT],
    "try_complete": ["llama3.1-8b", TEXT],
    "sentiment": [TEXT],
    "ai_sentiment": [TEXT],
    "entity_sentiment": [TEXT, ["delivery", "support"]],
    "classify_text": [TEXT, ["complaint", "praise", "question"]],
    "ai_classify": [TEXT, ["complaint", "praise", "question"]],
    "ai_filter": [f"Is this about a late delivery? {TEXT}"],
    "summarize": [TEXT],
    "translate": [TEXT, "en", "de"],
    "extract_answer": [TEXT, "How long was the delivery late?"],
    "ai_agg": [[TEXT, TEXT + " again"], "Summarise the reviews."],
    "embed_text_768": ["snowflake-arctic-embed-m", TEXT],
    "ai_similarity": [TEXT, TEXT + " indeed"],
    "count_tokens": ["llama3.1-8b", TEXT],
}


@pytest.mark.parametrize("name", sorted(ROWS))
async def test_a_batch_leaves_no_cycle_for_the_garbage_collector(name: str) -> None:
    settings = Settings.load(overrides={"engine": {"kind": "fake"}})
    engine = FakeEngine(record=False)
    embedders = [FakeEmbedder("fake-embed-768", 768, record=False), FakeEmbedder("fake-embed-1024", 1024, record=False)]
    runtime = build_runtime(settings, engine, Metrics(), embedders)
    fn = FUNCTIONS[name]

    async def batch(tag: str) -> None:
        rows = [[i, *(f"{a} {tag}{i}" if a == TEXT else a for a in ROWS[name])] for i in range(50)]  # distinct
        values = await answer_batch(fn, runtime, rows)
        assert len(values) == 50 and values[0] is not None
        encode_rows(list(range(50)), values, 10**8)

    await batch("warm")  # what a first call makes once (plans, memos) is not the batch's garbage
    gc.collect()
    gc.disable()
    try:
        await batch("measured")
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        kinds = sorted({type(o).__name__ for o in gc.garbage})
        assert gc.garbage == [], f"{len(gc.garbage)} objects in cycles: {kinds}"
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
