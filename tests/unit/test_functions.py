"""The Cortex function family over the fake engine and fake embedders: shapes, errors, NULL policy, batching.

The fake engine answers a JSON schema with its simplest instance (the first enum value), so these tests check
the code path (prompt layout, constraints, shapes, errors); answer quality is measured in bench/quality.py and
the integration tests run the real model.
"""

from __future__ import annotations

import asyncio
import math
import random
from typing import Any

import orjson
import pytest

from spcs_llm.config import EmbeddingSettings
from spcs_llm.engines import FakeEmbedder, FakeEngine
from spcs_llm.engines.base import ChatResult, TokenLogprob
from spcs_llm.engines.labels import MATCHES_MEMO
from spcs_llm.functions import FUNCTIONS, tasks
from spcs_llm.functions.sentiment import sentiment_score
from spcs_llm.functions.tasks import label_distribution
from spcs_llm.functions.text import MARKDOWN_SEPARATORS, recursive_split
from spcs_llm.server import create_app

from ..conftest import batch, fake_settings, in_process, wait_ready

CORTEX_FUNCTIONS = {
    "complete",
    "try_complete",
    "ai_complete",
    "sentiment",
    "ai_sentiment",
    "entity_sentiment",
    "summarize",
    "ai_summarize_agg",
    "ai_agg",
    "translate",
    "ai_translate",
    "extract_answer",
    "classify_text",
    "ai_classify",
    "ai_filter",
    "embed_text_768",
    "embed_text_1024",
    "ai_embed",
    "ai_similarity",
    "count_tokens",
    "ai_count_tokens",
    "split_text_recursive_character",
}


async def call(client: Any, fn: str, *rows: list[Any]) -> tuple[int, Any]:
    r = await client.post(f"/functions/{fn}", **batch(*rows))
    return r.status_code, (r.json()["data"] if r.status_code == 200 else r.text)


def values(data: list[list[Any]]) -> list[Any]:
    return [v for _, v in data]


def test_every_cortex_function_is_registered_with_its_error_policy() -> None:
    assert set(FUNCTIONS) == CORTEX_FUNCTIONS
    for name, fn in FUNCTIONS.items():
        assert fn.null_on_error == (name.startswith(("ai_", "try_"))), name


# --- SPLIT_TEXT_RECURSIVE_CHARACTER ----------------------------------------------------------------------------


async def test_split_text_gives_the_documented_example(client) -> None:
    status, data = await call(client, "split_text_recursive_character", ["hello world are you here", "none", 15, 10])
    assert status == 200 and values(data) == [["hello world are", "world are you", "are you here"]]


def test_split_text_matches_the_reference_splitter_on_random_text() -> None:
    from langchain_text_splitters import Language, RecursiveCharacterTextSplitter

    rng = random.Random(7)
    words = ["alpha", "be", "c", "delta-epsilon", "中文字符", "x" * 30, "\n", "\n\n", " ", ".", "# ", "```\n"]
    for _ in range(500):
        text = "".join(rng.choice(words) + rng.choice([" ", "", "\n"]) for _ in range(rng.randint(0, 60)))
        size = rng.randint(1, 60)
        overlap = rng.randint(0, size - 1)
        plain = RecursiveCharacterTextSplitter(chunk_size=size, chunk_overlap=overlap).split_text(text)
        assert recursive_split(text, size, overlap) == plain, (text, size, overlap)
        markdown = RecursiveCharacterTextSplitter.from_language(
            Language.MARKDOWN, chunk_size=size, chunk_overlap=overlap
        ).split_text(text)
        assert recursive_split(text, size, overlap, MARKDOWN_SEPARATORS, regex=True) == markdown


async def test_split_text_markdown_separators_and_errors(client) -> None:
    doc = "# Title\n\nIntro text.\n\n## Part\n\nBody of the part."
    status, data = await call(
        client, "split_text_recursive_character", [doc, "markdown", 30, 0], ["a b c", "none", 3, 0, ["b"]]
    )
    assert status == 200
    assert values(data)[0] == ["# Title\n\nIntro text.", "## Part\n\nBody of the part."]
    assert values(data)[1] == ["a", "b c"]
    status, text = await call(client, "split_text_recursive_character", ["abc", "none", 5, 5])
    assert status == 400 and "overlap" in text
    status, text = await call(client, "split_text_recursive_character", ["abc", "html", 5])
    assert status == 400 and "format" in text


# --- COUNT_TOKENS ------------------------------------------------------------------------------------------------


async def test_count_tokens_uses_the_named_models_tokenizer(client) -> None:
    status, data = await call(
        client,
        "count_tokens",
        ["llama3.1-8b", "one two three"],
        ["sentiment", "a b"],
        ["e5-base-v2", "x y z w"],
        ["fake-model", None],
    )
    assert status == 200 and values(data) == [3, 2, 4, None]  # the fake tokenizers count words
    status, text = await call(client, "count_tokens", ["gpt-17", "x"])
    assert (status, text) == (400, 'unknown model "gpt-17"')
    status, data = await call(
        client, "ai_count_tokens", ["ai_sentiment", "a b"], ["no_such_fn", "a"], ["ai_complete", "fake-model", "a b c"]
    )
    assert status == 200 and values(data) == [2, None, 3]


# --- SENTIMENT ---------------------------------------------------------------------------------------------------


def _result(text: str, top: list[tuple[str, float]]) -> ChatResult:
    tokens = (TokenLogprob('"', 0.0, (('"', 0.0),)), TokenLogprob(top[0][0], top[0][1], tuple(top)))
    return ChatResult(text, logprobs=tokens)


def test_sentiment_score_is_the_expected_polarity_under_label_probabilities() -> None:
    labels = ["positive", "negative", "neutral"]
    dist = label_distribution(
        _result(
            '"positive"',
            [
                ("positive", math.log(0.6)),
                ("negative", math.log(0.3)),
                ("The", math.log(0.05)),
                ("neutral", math.log(0.05)),
            ],
        ),
        labels,
    )
    assert dist == pytest.approx({"positive": 0.6 / 0.95, "negative": 0.3 / 0.95, "neutral": 0.05 / 0.95})
    assert sentiment_score(dist) == pytest.approx(0.3 / 0.95, abs=1e-6)
    # a token that begins two labels is shared; pieces of a label count toward it ("pos" -> positive)
    dist = label_distribution(_result('"negative"', [("ne", math.log(0.5)), ("pos", math.log(0.5))]), labels)
    assert dist == pytest.approx({"positive": 0.5, "negative": 0.25, "neutral": 0.25})
    # an object answer {"sentiment": "..."}: the key and punctuation before the label are skipped
    keyed = ChatResult(
        '{"sentiment": "negative"}',
        logprobs=(
            TokenLogprob('{"', 0.0, (("positive", math.log(0.9)),)),
            TokenLogprob("sent", 0.0, ()),
            TokenLogprob('": "', 0.0, ()),
            TokenLogprob("negative", math.log(0.6), (("negative", math.log(0.6)), ("positive", math.log(0.2)))),
        ),
    )
    assert label_distribution(keyed, labels) == pytest.approx({"positive": 0.25, "negative": 0.75, "neutral": 0})
    # no logprobs at all: the chosen label is certain
    assert label_distribution(ChatResult('"negative"'), labels) == {"positive": 0, "negative": 1, "neutral": 0}


def test_label_distribution_remembers_tokens_per_label_set() -> None:
    """What a token begins is remembered per label set: the same token counts anew under other labels, and a
    full memo is emptied, not grown."""
    answer = _result('"negative"', [("ne", math.log(0.5)), ("Pos", math.log(0.3)), (" ", math.log(0.2))])
    three = ["positive", "negative", "neutral"]
    assert label_distribution(answer, three) == pytest.approx(
        {"positive": 0.375, "negative": 0.3125, "neutral": 0.3125}
    )
    # "ne" begins only "negative" here, "Pos" nothing: the memo of the first label set is not this one's
    assert label_distribution(answer, ["negative", "mixed"]) == {"negative": 1.0, "mixed": 0.0}
    assert label_distribution(answer, three) == pytest.approx(
        {"positive": 0.375, "negative": 0.3125, "neutral": 0.3125}
    )
    for i in range(MATCHES_MEMO + 5):  # a row's own words are new every time: the memo stays bounded
        label_distribution(_result('"x"', [(f"w{i}", -1.0)]), three)
    assert 0 < len(tasks._LABEL_ROOTS[tuple(three)].matches) <= MATCHES_MEMO


async def test_sentiment_returns_a_float_from_a_constrained_label_request(client, fake_engine) -> None:
    status, data = await call(client, "sentiment", ["I love it"], [None], ["中文 很好"])
    assert status == 200
    assert values(data)[1] is None
    for v in (values(data)[0], values(data)[2]):
        assert isinstance(v, float) and -1 <= v <= 1
    # scored: one step after the answer's fixed start, reading ten alternatives; no generation
    assert fake_engine.steps == [('{"sentiment": "', 10)] * 2 and fake_engine.calls == []


async def test_sentiment_falls_back_to_a_constrained_label_request(client, fake_engine) -> None:
    fake_engine.label_scoring = False  # an engine that cannot score: the constrained request of before
    status, data = await call(client, "sentiment", ["I love it"], [None], ["中文 很好"])
    assert status == 200 and values(data)[1] is None and fake_engine.steps == []
    for v in (values(data)[0], values(data)[2]):
        assert isinstance(v, float) and -1 <= v <= 1
    request = fake_engine.calls[0]
    assert orjson.loads(request.json_schema)["properties"]["sentiment"] == {
        "enum": ["positive", "negative", "neutral"],
        "type": "string",
    }
    assert request.top_logprobs > 0 and request.temperature == 0
    assert request.messages[0].role == "system" and request.messages[-1].content == "I love it"


async def test_ai_sentiment_scores_one_step_per_aspect(client, fake_engine) -> None:
    status, data = await call(client, "ai_sentiment", ["good food, slow service", ["food", "service"]])
    assert status == 200 and fake_engine.calls == []
    (answer,) = values(data)
    assert [c["name"] for c in answer["categories"]] == ["overall", "food", "service"]
    labels = [c["sentiment"] for c in answer["categories"]]
    assert set(labels) <= {"positive", "negative", "neutral", "mixed", "unknown"}
    # each step continues the object so far, with the labels chosen before it
    assert [prefix for prefix, _ in fake_engine.steps] == [
        '{"overall": "',
        f'{{"overall": "{labels[0]}", "food": "',
        f'{{"overall": "{labels[0]}", "food": "{labels[1]}", "service": "',
    ]


async def test_ai_sentiment_shape_and_entity_limits(client, fake_engine) -> None:
    fake_engine.label_scoring = False  # generated under the schema: the fake answers its first enum values
    status, data = await call(
        client, "ai_sentiment", ["good food, slow service", ["food", "service"]], ["fine"], ["x", ["a"] * 11]
    )
    assert status == 200
    assert values(data) == [
        {
            "categories": [
                {"name": "overall", "sentiment": "positive"},
                {"name": "food", "sentiment": "positive"},
                {"name": "service", "sentiment": "positive"},
            ]
        },
        {"categories": [{"name": "overall", "sentiment": "positive"}]},
        None,
    ]
    status, text = await call(client, "entity_sentiment", ["x", ["a"] * 11])
    assert status == 400 and "at most 10" in text


# --- SUMMARIZE / AI_AGG ------------------------------------------------------------------------------------------


@pytest.fixture
async def roomy() -> Any:
    """An app whose fake engine holds 400 tokens per request, to watch long inputs being cut to fit."""
    engine = FakeEngine("fake-model", context_window=400, max_concurrency=4)
    app = create_app(fake_settings(max_output_tokens=64), engine=engine, embedders=[])
    async with in_process(app) as client:
        await wait_ready(app)
        yield client, engine


async def test_summarize_short_text_is_one_request(roomy) -> None:
    client, engine = roomy
    status, data = await call(client, "summarize", ["The meeting moved to Tuesday."])
    assert status == 200 and values(data)[0].startswith("echo:")
    assert len(engine.calls) == 1 and engine.calls[0].messages[-1].content == "The meeting moved to Tuesday."


async def test_long_input_is_cut_to_fit_and_reduced_never_truncated(roomy) -> None:
    client, engine = roomy
    words = [f"w{i}" for i in range(3000)]
    status, data = await call(client, "summarize", [" ".join(words)])
    assert status == 200 and isinstance(values(data)[0], str)
    seen = [w for c in engine.calls for m in c.messages for w in m.content.split() if w.startswith("w")]
    assert set(words) <= set(seen)  # every word of the input reached the model
    assert all(sum(len(m.content.split()) + 1 for m in c.messages) + c.max_tokens <= 400 for c in engine.calls)


async def test_ai_agg_reduces_any_number_of_rows_hierarchically(roomy) -> None:
    client, engine = roomy
    reviews = [f"review {i} says the product is fine" for i in range(200)]
    status, data = await call(client, "ai_agg", [reviews, "What do customers like?"], [[], "x"])
    assert status == 200 and isinstance(values(data)[0], str) and values(data)[1] is None
    assert len(engine.calls) > 1
    mapped = [c for c in engine.calls if c.messages[0].content.startswith("You are given numbered texts")]
    assert sum("review 0 " in c.messages[-1].content for c in mapped) == 1  # each row goes to one group once
    assert len(mapped) < len(engine.calls)  # and the groups' answers were reduced
    status, data = await call(client, "ai_summarize_agg", [["a b", "c d"]])
    assert status == 200 and isinstance(values(data)[0], str)


# --- TRANSLATE ---------------------------------------------------------------------------------------------------


async def test_translate_languages_and_errors(roomy) -> None:
    client, fake_engine = roomy
    status, data = await call(client, "translate", ["hello", "en", "zh"], ["bonjour", "", "en"], ["same", "de", "de"])
    assert status == 200 and values(data)[:2] == ["echo:hello", "echo:bonjour"] and values(data)[2] == "same"
    instructions = [c.messages[0].content for c in fake_engine.calls]
    assert "from English into Chinese" in instructions[0]
    assert "user into English" in instructions[1]  # '' = detect the source language
    assert len(fake_engine.calls) == 2  # same source and target: no request
    status, text = await call(client, "translate", ["x", "en", "ar"])
    assert (status, text) == (400, 'invalid language "ar"')  # Arabic is AI_TRANSLATE's, not TRANSLATE's
    status, data = await call(client, "ai_translate", ["x", "en", "ar"], ["x", "klingon", "en"])
    assert status == 200 and values(data) == ["echo:x", None]


# --- EXTRACT_ANSWER ----------------------------------------------------------------------------------------------


async def test_extract_answer_shape(client, fake_engine) -> None:
    status, data = await call(client, "extract_answer", ["Alice moved to Paris in 2019.", "Where did Alice move?"])
    assert status == 200
    (value,) = values(data)
    assert isinstance(value, list) and len(value) == 1 and set(value[0]) == {"answer", "score"}
    assert isinstance(value[0]["answer"], str) and 0 <= value[0]["score"] <= 1
    assert fake_engine.calls[0].top_logprobs > 0


# --- CLASSIFY_TEXT / AI_CLASSIFY / AI_FILTER ---------------------------------------------------------------------


async def test_classify_text_is_constrained_to_the_categories(client, fake_engine) -> None:
    cats = [{"label": "travel", "description": "trips", "examples": ["flight to Rome"]}, "cooking"]
    fake_engine.label_scoring = False  # the fallback: decoding under a schema of exactly the categories
    status, data = await call(client, "classify_text", ["I booked a hotel", cats, {"task_description": "topic"}])
    assert status == 200 and values(data) == [{"label": "travel"}]
    fake_engine.label_scoring = True  # scored: one step, no generation
    status, data = await call(client, "classify_text", ["I booked a hotel", cats, {"task_description": "topic"}])
    assert status == 200 and values(data)[0]["label"] in {"travel", "cooking"}
    assert fake_engine.steps == [('{\n  "label": "', 20)] and len(fake_engine.calls) == 1
    schema = orjson.loads(fake_engine.calls[0].json_schema)
    assert schema["properties"]["label"]["enum"] == ["travel", "cooking"]
    system = fake_engine.calls[0].messages[0].content
    assert "topic" in system and "flight to Rome" in system


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (["x", ["only"]], "invalid number of categories: 1"),
        (["x", [f"c{i}" for i in range(101)]], "invalid number of categories: 101"),
        (["x", ["a", "a"]], "invalid number of categories: 2"),
        (["x", ["a", 3]], "invalid category input type"),
        (["x", "not json"], "invalid category input type"),
        ([None, ["a", "b"]], "empty classification input"),
        (["  ", ["a", "b"]], "empty classification input"),
        (["x", ["a", "b"], {"colour": "red"}], "invalid options object"),
    ],
)
async def test_classify_text_errors_fail_the_batch_with_the_cortex_message(client, row, message) -> None:
    assert await call(client, "classify_text", row) == (400, message)


async def test_ai_classify_single_multi_and_null_on_error(client, fake_engine) -> None:
    status, data = await call(
        client,
        "ai_classify",
        ["x", ["a", "b"]],
        ["y", ["a", "b", "c"], {"output_mode": "multi"}],
        ["z", ["a"]],
        [None, ["a", "b"]],
    )
    assert status == 200 and values(data)[1:] == [{"labels": ["a"]}, None, None]
    assert values(data)[0] in ({"labels": ["a"]}, {"labels": ["b"]})  # single: scored
    assert fake_engine.steps == [('{\n  "label": "', 20)]
    (generated,) = fake_engine.calls  # multi: generated under the array schema
    multi = orjson.loads(generated.json_schema)["properties"]["labels"]
    assert multi["type"] == "array" and multi["items"]["enum"] == ["a", "b", "c"]


async def test_ai_filter_returns_booleans(client, fake_engine) -> None:
    status, data = await call(client, "ai_filter", ["Is the sky blue?"], [None])
    assert status == 200 and isinstance(values(data)[0], bool) and values(data)[1] is None
    assert fake_engine.steps == [('{\n  "answer": "', 20)]  # scored (this row's fake step proposes no label: it
    calls = len(fake_engine.calls)  # then generates, which is the fallback)
    fake_engine.label_scoring = False
    status, data = await call(client, "ai_filter", ["Is the sky green?"], [None])
    assert status == 200 and values(data) == [True, None] and len(fake_engine.calls) == calls + 1


# --- embeddings ------------------------------------------------------------------------------------------------


async def test_embed_text_dimensions_and_model_names(client) -> None:
    status, data = await call(
        client,
        "embed_text_768",
        ["snowflake-arctic-embed-m-v1.5", "hello"],
        ["fake-embed-768", "你好"],
        ["e5-base-v2", None],
    )
    assert status == 200
    a, b, c = values(data)
    assert len(a) == len(b) == 768 and c is None
    assert math.isclose(sum(x * x for x in a), 1.0, rel_tol=1e-5)
    status, data = await call(client, "embed_text_1024", ["snowflake-arctic-embed-l-v2.0", "hello"])
    assert status == 200 and len(values(data)[0]) == 1024
    # a 1024-d model name is unknown to the 768 function, and vice versa
    status, text = await call(client, "embed_text_768", ["multilingual-e5-large", "x"])
    assert (status, text) == (400, 'unknown model "multilingual-e5-large"')
    status, data = await call(client, "ai_embed", ["fake-embed-1024", "x"], ["nope", "x"])
    assert status == 200 and len(values(data)[0]) == 1024 and values(data)[1] is None


async def test_embedding_rows_are_batched_and_duplicates_computed_once(client, fake_embedders) -> None:
    rows = [["e5-base-v2", f"text {i % 25}"] for i in range(100)]
    status, data = await call(client, "embed_text_768", *rows)
    assert status == 200 and len(data) == 100
    calls = fake_embedders[0].calls
    assert sum(len(c) for c in calls) == 25 and len(calls) <= 2  # 25 distinct texts in one or two passes
    assert values(data)[0] == values(data)[25]


async def test_ai_similarity(client) -> None:
    status, data = await call(
        client,
        "ai_similarity",
        ["the cat sat", "the cat sat"],
        ["a b c", "x y z"],
        ["a", "b", {"model": "e5-base-v2"}],
        ["a", "b", {"model": "nope"}],
    )
    assert status == 200
    same, different, with_model, bad = values(data)
    assert same == pytest.approx(1.0) and -1 <= different <= 1 and -1 <= with_model <= 1 and bad is None


async def test_an_embedder_of_the_wrong_dimension_stops_start_up() -> None:
    settings = fake_settings()
    settings.embeddings = [EmbeddingSettings(kind="fake", model_name="small", dimension=768)]
    app = create_app(settings, engine=FakeEngine(), embedders=[FakeEmbedder("small", 384)])
    async with in_process(app) as c:
        for _ in range(200):
            if app.state.startup_error:
                break
            await asyncio.sleep(0.005)
        r = await c.get("/health")
    assert r.status_code == 503 and "gives 384-d vectors, but its entry says dimension = 768" in r.json()["error"]


# --- AI_COMPLETE -------------------------------------------------------------------------------------------------

SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


async def test_ai_complete_forms(client, fake_engine) -> None:
    status, data = await call(
        client,
        "ai_complete",
        ["fake-model", "hi"],
        ["fake-model", "hi", {"temperature": 0.2, "max_tokens": 5}],
        ["fake-model", "where?", None, {"type": "json", "schema": SCHEMA}],
        ["fake-model", "where?", {}, SCHEMA, True],
        ["fake-model", "hi", None, None, True],
        ["nope", "hi"],
        ["fake-model", "x", None, {"type": "json", "schema": {"type": 12}}],
        ["fake-model", "x", {"response_format": {"type": "json", "schema": SCHEMA}}],
    )
    assert status == 200
    text, params, obj, detailed_obj, detailed, unknown, bad_schema, misplaced = values(data)
    assert text == "echo:hi" and params == "echo:hi" and obj == {"city": "echo"}
    assert set(detailed_obj) == {"created", "model", "structured_output", "usage"}
    assert detailed_obj["structured_output"] == [{"raw_message": {"city": "echo"}, "type": "json"}]
    assert detailed["choices"] == [{"messages": "echo:hi"}] and detailed["model"] == "fake-model"
    assert unknown is None and bad_schema is None and misplaced is None
    assert any(c.temperature == 0.2 and c.max_tokens == 5 for c in fake_engine.calls)
    assert any(c.json_schema and orjson.loads(c.json_schema) == SCHEMA for c in fake_engine.calls)


async def test_complete_with_an_invalid_schema_is_schema_validation_failed(client) -> None:
    options = {"response_format": {"type": "json", "schema": {"type": "object", "properties": 5}}}
    status, text = await call(client, "complete", ["fake-model", [{"role": "user", "content": "x"}], options])
    assert (status, text) == (400, "schema validation failed")
