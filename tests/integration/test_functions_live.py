"""Every Cortex function through the real server, the real SmolLM2 (llama.cpp) and the real CPU embedding model.

These check what the functions return (types, keys, ranges, dimension), NULL handling, the documented error
strings (HTTP 400 for legacy names, a NULL row for TRY_/AI_ names) and Chinese input. How good the 135M
model's answers are is measured by bench/quality.py, not asserted here.
"""

from __future__ import annotations

import math
import re

import httpx
import pytest

from .conftest import CTX_PER_SLOT
from .test_live_service import MODEL, post_batch

pytestmark = pytest.mark.integration
EMBED = "snowflake-arctic-embed-m-v1.5"  # a Cortex 768-d name, served by the packaged embedding model


def answer(http: httpx.Client, fn: str, *rows: list) -> list:
    r = post_batch(http, fn, list(rows))
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    assert [n for n, _ in data] == list(range(len(rows)))
    return [v for _, v in data]


def fails(http: httpx.Client, fn: str, *rows: list) -> str:
    r = post_batch(http, fn, list(rows))
    assert r.status_code == 400, r.text
    return r.text


def test_sentiment_is_a_float_in_range(http: httpx.Client) -> None:
    good, bad, none, chinese = answer(
        http,
        "sentiment",
        ["I absolutely love this phone, it is wonderful!"],
        ["Terrible. It broke after one day and support ignored me."],
        [None],
        ["这家餐厅太棒了，我非常喜欢！"],
    )
    for v in (good, bad, chinese):
        assert isinstance(v, float) and -1.0 <= v <= 1.0
    assert none is None


def test_ai_sentiment_and_entity_sentiment_shapes(http: httpx.Client) -> None:
    labels = {"positive", "negative", "neutral", "mixed", "unknown"}
    (value, zh) = answer(
        http, "ai_sentiment", ["The food was great but the service was slow.", ["food", "service"]], ["服务很好"]
    )
    assert [c["name"] for c in value["categories"]] == ["overall", "food", "service"]
    assert [c["name"] for c in zh["categories"]] == ["overall"]
    assert all(c["sentiment"] in labels for c in value["categories"] + zh["categories"])
    (value,) = answer(http, "entity_sentiment", ["Great camera, awful battery.", ["camera", "battery"]])
    assert {c["sentiment"] for c in value["categories"]} <= labels
    assert "at most 10" in fails(http, "entity_sentiment", ["x", [f"e{i}" for i in range(11)]])


def test_classify_text_always_answers_one_of_the_categories(http: httpx.Client) -> None:
    cats = ["sports", "cooking", "finance"]
    values = answer(
        http,
        "classify_text",
        ["The striker scored twice in the final.", cats],
        ["Whisk the eggs and fold in the flour.", cats],
        ["股票市场今天大涨。", [{"label": "finance", "description": "money, markets"}, "sports"]],
    )
    assert [set(v) for v in values] == [{"label"}] * 3
    assert values[0]["label"] in cats and values[1]["label"] in cats and values[2]["label"] in ("finance", "sports")
    assert fails(http, "classify_text", ["x", ["one"]]) == "invalid number of categories: 1"
    assert fails(http, "classify_text", [None, ["a", "b"]]) == "empty classification input"
    assert fails(http, "classify_text", ["x", [1, 2]]) == "invalid category input type"


def test_ai_classify_single_and_multi(http: httpx.Client) -> None:
    cats = ["travel", "food", "work"]
    single, multi, bad = answer(
        http,
        "ai_classify",
        ["I flew to Tokyo and ate ramen.", cats],
        ["I flew to Tokyo and ate ramen.", cats, {"output_mode": "multi"}],
        ["x", ["a"]],
    )
    assert len(single["labels"]) == 1 and single["labels"][0] in cats
    assert set(multi["labels"]) <= set(cats) and len(set(multi["labels"])) == len(multi["labels"])
    assert bad is None


def test_ai_filter_is_boolean(http: httpx.Client) -> None:
    values = answer(http, "ai_filter", ["Is Paris the capital of France?"], [None], ["2 + 2 = 5. Is that true?"])
    assert isinstance(values[0], bool) and values[1] is None and isinstance(values[2], bool)


def test_extract_answer_shape_and_score(http: httpx.Client) -> None:
    (value, zh) = answer(
        http,
        "extract_answer",
        ["Marie Curie was born in Warsaw in 1867.", "Where was Marie Curie born?"],
        ["李雷住在北京。", "李雷住在哪里？"],
    )
    for v in (value, zh):
        assert isinstance(v, list) and len(v) == 1 and set(v[0]) == {"answer", "score"}
        assert isinstance(v[0]["answer"], str) and 0.0 <= v[0]["score"] <= 1.0


def test_summarize_and_translate(http: httpx.Client) -> None:
    text = (
        "The city council met on Monday and approved a new budget for public parks. The budget adds two "
        "million dollars for playgrounds and tree planting, and work starts in the spring."
    )
    (summary,) = answer(http, "summarize", [text])
    assert isinstance(summary, str) and summary.strip()
    en, zh, same = answer(
        http, "translate", ["Good morning, how are you?", "en", "zh"], ["你好，世界", "", "en"], ["Hallo", "de", "de"]
    )
    assert isinstance(en, str) and en.strip() and isinstance(zh, str) and zh.strip() and same == "Hallo"
    assert fails(http, "translate", ["x", "en", "xx"]) == 'invalid language "xx"'
    assert answer(http, "ai_translate", ["x", "en", "xx"], ["Hello", "en", "tr"])[0] is None


def test_long_input_is_split_to_fit_not_truncated_or_refused(http: httpx.Client) -> None:
    paragraph = (
        "The museum opened a new wing for modern art. Visitors can see paintings, sculptures and video "
        "installations from artists around the world. "
    )
    long_text = "\n\n".join(f"Part {i}. {paragraph}" for i in range(40))  # more than one slot holds
    before = _engine_requests(http)
    (summary,) = answer(http, "summarize", [long_text])
    assert isinstance(summary, str) and summary.strip()
    assert _engine_requests(http) - before > 2  # pieces, then the reduction
    # a function that does not chunk says the Cortex error instead (legacy) or NULL (AI_)
    assert fails(http, "sentiment", [long_text]) == f"max tokens of {CTX_PER_SLOT} exceeded"
    assert answer(http, "ai_sentiment", [long_text]) == [None]


def _engine_requests(http: httpx.Client) -> float:
    match = re.search(r"^spcs_llm_engine_requests_total (\S+)$", http.get("/metrics").text, re.M)
    assert match
    return float(match.group(1))


def test_ai_agg_over_many_rows(http: httpx.Client) -> None:
    reviews = [f"Review {i}: the delivery was fast and the packaging was good." for i in range(40)]
    (value,) = answer(http, "ai_agg", [reviews, "What do customers say about delivery?"])
    (summary,) = answer(http, "ai_summarize_agg", [reviews[:5]])
    assert isinstance(value, str) and value.strip() and isinstance(summary, str) and summary.strip()
    assert answer(http, "ai_agg", [[], "anything"]) == [None]


def test_ai_complete_structured_output_is_constrained(http: httpx.Client) -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "country": {"type": "string"}},
        "required": ["city", "country"],
        "additionalProperties": False,
    }
    plain, obj, detailed, bad = answer(
        http,
        "ai_complete",
        [MODEL, "Say hello."],
        [MODEL, "Where is the Eiffel Tower?", {"max_tokens": 40}, {"type": "json", "schema": schema}],
        [MODEL, "Where is the Colosseum?", {}, schema, True],
        [MODEL, "x", None, {"type": "json", "schema": {"type": "object", "properties": 3}}],
    )
    assert isinstance(plain, str)
    assert isinstance(obj, dict) and set(obj) == {"city", "country"} and all(isinstance(v, str) for v in obj.values())
    assert set(detailed) == {"created", "model", "structured_output", "usage"} and detailed["model"] == MODEL
    assert set(detailed["structured_output"][0]["raw_message"]) == {"city", "country"}
    assert bad is None
    options = {"response_format": {"type": "json", "schema": {"type": "object", "properties": 3}}}
    assert fails(http, "complete", [MODEL, [{"role": "user", "content": "x"}], options]) == "schema validation failed"


def test_embeddings_are_real_768_d_unit_vectors(http: httpx.Client) -> None:
    cat, kitten, tax, zh, none = answer(
        http,
        "embed_text_768",
        [EMBED, "A cat sits on the mat."],
        [EMBED, "A kitten is sitting on a rug."],
        [EMBED, "Quarterly tax filing deadlines for corporations."],
        [EMBED, "一只猫坐在垫子上。"],
        [EMBED, None],
    )
    for v in (cat, kitten, tax, zh):
        assert len(v) == 768 and all(isinstance(x, float) for x in v)
        assert math.isclose(math.sqrt(sum(x * x for x in v)), 1.0, rel_tol=1e-4)
    assert none is None

    def cos(a: list[float], b: list[float]) -> float:
        return sum(x * y for x, y in zip(a, b, strict=True))

    assert cos(cat, kitten) > cos(cat, tax) + 0.2
    assert fails(http, "embed_text_1024", [EMBED, "x"]) == f'unknown model "{EMBED}"'
    assert fails(http, "embed_text_768", ["no-such-embedder", "x"]) == 'unknown model "no-such-embedder"'
    (vec, missing) = answer(http, "ai_embed", [EMBED, "hello"], ["no-such-embedder", "x"])
    assert len(vec) == 768 and missing is None
    same, related, unrelated = answer(
        http,
        "ai_similarity",
        ["A cat sits on the mat.", "A cat sits on the mat."],
        ["A cat sits on the mat.", "A kitten is sitting on a rug."],
        ["A cat sits on the mat.", "Quarterly tax filing deadlines."],
    )
    assert same == pytest.approx(1.0, abs=1e-4) and -1 <= unrelated < related <= 1


def test_count_tokens_and_split_text(http: httpx.Client) -> None:
    short, chinese, fn, embed = answer(
        http,
        "count_tokens",
        [MODEL, "Hello world"],
        [MODEL, "你好世界"],
        ["sentiment", "Hello world"],
        [EMBED, "Hello world"],
    )
    assert isinstance(short, int) and 1 <= short <= 4 and chinese >= 2 and fn == short
    assert isinstance(embed, int) and embed >= 2
    assert fails(http, "count_tokens", ["no-such-model", "x"]) == 'unknown model "no-such-model"'
    (chunks,) = answer(http, "split_text_recursive_character", ["hello world are you here", "none", 15, 10])
    assert chunks == ["hello world are", "world are you", "are you here"]
