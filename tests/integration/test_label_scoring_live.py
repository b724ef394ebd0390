"""Label scoring on the real packaged model (llama.cpp in process, and its own HTTP server as an OpenAI-compatible
upstream): the label functions answer through one forward step, never through generation, with valid labels and
scores in range, and SENTIMENT reads the same label probabilities as the constrained answer of before."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from spcs_llm.config import EngineSettings
from spcs_llm.engines import resolve_model_file
from spcs_llm.engines.base import ChatRequest, Message
from spcs_llm.engines.labels import ScoreRequest
from spcs_llm.engines.llamacpp import LlamaCppEngine
from spcs_llm.engines.openai_http import OpenAIHttpEngine
from spcs_llm.functions import FUNCTIONS
from spcs_llm.functions.registry import Runtime
from spcs_llm.functions.sentiment import (
    ASPECT_LABELS,
    POLARITY,
    SENTIMENT_INSTRUCTION,
    SENTIMENT_PREFIX,
    sentiment_score,
)
from spcs_llm.functions.tasks import label_distribution
from spcs_llm.metrics import Metrics
from spcs_llm.models.catalog import ModelResolver
from spcs_llm.scheduler import Scheduler

REVIEWS = [
    "I love this phone, the battery lasts for days.",
    "The worst meal I have ever had. Cold and bland.",
    "The package arrived on Tuesday.",
]


pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def engine() -> AsyncIterator[LlamaCppEngine]:
    path, name = resolve_model_file(EngineSettings())
    eng = LlamaCppEngine(path, name, n_parallel=2, ctx_per_slot=1024, threads=2)
    await eng.start()
    yield eng
    await eng.aclose()


def runtime(engine: LlamaCppEngine) -> Runtime:
    return Runtime(Scheduler(engine, Metrics()), ModelResolver([engine.model_name], {}), 48)


class NoGeneration:
    """Stands in for the engine's chat while a label function runs: any generation fails the test."""

    async def __call__(self, request: ChatRequest) -> None:
        raise AssertionError("a label function generated instead of scoring")


async def call(rt: Runtime, fn: str, *args: object) -> object:
    return await FUNCTIONS[fn].overload(len(args)).prepare(rt, list(args))()


async def test_label_functions_answer_through_the_scoring_path(engine, monkeypatch) -> None:
    monkeypatch.setattr(engine, "chat", NoGeneration())
    rt = runtime(engine)
    for text in REVIEWS:
        score = await call(rt, "sentiment", text)
        assert isinstance(score, float) and -1 <= score <= 1
    assert isinstance(await call(rt, "ai_filter", "Is Paris the capital of France?"), bool)
    categories = ["sports", "politics", "food quality", "food"]
    for text in ("The striker scored twice.", "The soup was salty."):
        answer = await call(rt, "classify_text", text, categories)
        assert answer["label"] in categories
    answer = await call(rt, "ai_classify", "The soup was salty.", categories)
    assert len(answer["labels"]) == 1 and answer["labels"][0] in categories
    answer = await call(rt, "ai_sentiment", "Great food, rude waiter.", ["food", "service"])
    assert [c["name"] for c in answer["categories"]] == ["overall", "food", "service"]
    assert {c["sentiment"] for c in answer["categories"]} <= set(ASPECT_LABELS)


async def test_sentiment_reads_the_label_probabilities_of_the_constrained_answer(engine) -> None:
    """The same expectation over the labels' probabilities at the label position. The positions are not the same
    text: under the JSON grammar this model writes ```json and newlines before ``"sentiment": "``, while scoring
    continues the canonical ``{"sentiment": "``, so the probabilities differ a little (measured here: up to 0.09);
    on a clear review the likeliest label and the sign of the score stay."""
    schema = {
        "type": "object",
        "properties": {"sentiment": {"type": "string", "enum": list(POLARITY)}},
        "required": ["sentiment"],
    }
    for text in REVIEWS[:2]:
        messages = (Message("system", SENTIMENT_INSTRUCTION), Message("user", text))
        generated = await engine.chat(
            ChatRequest(messages, 16, json_schema=ChatRequest.schema_key(schema), top_logprobs=10)
        )
        before = label_distribution(generated, list(POLARITY))
        scored = await engine.score_labels(ScoreRequest(messages, SENTIMENT_PREFIX, tuple(POLARITY), 10))
        assert scored is not None and scored.steps == 1
        assert scored.best == max(before, key=lambda label: before[label]) == json.loads(generated.text)["sentiment"]
        assert sentiment_score(scored.distribution) * sentiment_score(before) > 0
        assert scored.distribution == pytest.approx(before, abs=0.25)


async def test_shared_first_tokens_take_another_step_on_the_real_tokenizer(engine) -> None:
    assert await engine.token_pieces("food quality") == ["food", " quality"]
    messages = (
        Message("system", "Categories:\n- food\n- food quality\n- service\nAnswer with one category."),
        Message("user", "The soup was cold and salty."),
    )
    scores = await engine.score_labels(ScoreRequest(messages, '{"label": "', ("food", "food quality", "service")))
    assert scores is not None and set(scores.distribution) == {"food", "food quality", "service"}
    assert sum(scores.distribution.values()) == pytest.approx(1)
    # "food" is the first token of two labels: a second step splits its mass, unless no mass went to it at all
    assert scores.steps == (2 if scores.distribution["food"] + scores.distribution["food quality"] > 0 else 1)


async def test_an_openai_compatible_llama_server_gives_the_same_scores(engine) -> None:
    upstream = OpenAIHttpEngine(engine.http_url.rstrip("/") + "/v1", "default", context_window=1024)
    await upstream.start()
    try:
        assert await upstream.token_pieces("food quality") == ["food", " quality"]
        for text in REVIEWS:
            request = ScoreRequest(
                (Message("system", SENTIMENT_INSTRUCTION), Message("user", text)), SENTIMENT_PREFIX, tuple(POLARITY), 10
            )
            direct, over_http = await engine.score_labels(request), await upstream.score_labels(request)
            assert direct is not None and over_http is not None
            assert over_http.distribution == pytest.approx(direct.distribution, abs=0.02)
    finally:
        await upstream.aclose()
