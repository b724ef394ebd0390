"""spcs_llm.cortex, the drop-in for snowflake.cortex: each function over HTTP (a real server on loopback with the
fake engine), as a Snowpark Column (the SQL text, parsed by sqlglot's Snowflake dialect), and through a Snowpark
local-testing session bound to the service."""

from __future__ import annotations

import inspect
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import sqlglot

from spcs_llm import cortex
from spcs_llm.client import FunctionError
from spcs_llm.config import Settings
from spcs_llm.engines import FakeEmbedder, FakeEngine
from spcs_llm.server import create_app

from .loopback import serve

snowpark = pytest.importorskip("snowflake.snowpark")
F = snowpark.functions


@pytest.fixture(scope="module")
def engine() -> FakeEngine:
    return FakeEngine("fake-model", context_window=256)


@pytest.fixture(scope="module")
def service(engine: FakeEngine) -> Iterator[str]:
    settings = Settings.load(overrides={"engine": {"kind": "fake", "max_output_tokens": 32}})
    app = create_app(
        settings, engine=engine, embedders=[FakeEmbedder("fake-embed-768", 768), FakeEmbedder("fake-embed-1024", 1024)]
    )
    with serve(app) as base:
        yield base


@pytest.fixture
def url(service: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("SPCS_LLM_URL", service)
    monkeypatch.delenv("SPCS_LLM_SCHEMA", raising=False)
    yield service
    cortex.close()


@pytest.fixture
def local_session(url: str) -> Iterator[Any]:
    from spcs_llm.cortex import local_testing

    session = snowpark.Session.builder.config("local_testing", True).create()
    local_testing.bind(session)
    yield session
    session.close()


# -- the public surface is snowflake.cortex's -------------------------------------------------------------------

SNOWFLAKE_CORTEX = [
    "ClassifyText",
    "Complete",
    "CompleteOptions",
    "ConversationMessage",
    "EmbedText1024",
    "EmbedText768",
    "ExtractAnswer",
    "Sentiment",
    "Summarize",
    "Translate",
    "classify_text",
    "complete",
    "embed_text_1024",
    "embed_text_768",
    "extract_answer",
    "sentiment",
    "summarize",
    "translate",
]


def test_public_api_is_declared() -> None:
    assert cortex.__all__ == sorted(
        n
        for n in vars(cortex)
        if not n.startswith("_") and n != "annotations" and not inspect.ismodule(getattr(cortex, n))
    )
    assert set(SNOWFLAKE_CORTEX) <= set(cortex.__all__)


def test_signatures_match_snowflake_ml_python() -> None:
    real = pytest.importorskip("snowflake.cortex")
    for name in SNOWFLAKE_CORTEX:
        mine, theirs = getattr(cortex, name), getattr(real, name)
        if inspect.isfunction(theirs) and name[0].islower():
            assert list(inspect.signature(mine).parameters) == list(inspect.signature(theirs).parameters), name
    assert cortex.CompleteOptions.__annotations__.keys() == real.CompleteOptions.__annotations__.keys()


# -- plain values over HTTP --------------------------------------------------------------------------------------


def test_summarize_over_http(url: str) -> None:
    assert cortex.summarize("The cat sat on the mat.") == "echo:The cat sat on the mat."


def test_sentiment_is_a_float(url: str) -> None:
    value = cortex.sentiment("I really enjoyed this restaurant")
    assert isinstance(value, float) and -1 <= value <= 1


def test_translate_extract_classify(url: str) -> None:
    assert cortex.translate("hello", "en", "de") == "echo:hello"
    answer = json.loads(cortex.extract_answer("The sky is blue.", "What color is the sky?"))
    assert set(answer[0]) == {"answer", "score"} and "The sky is blue." in answer[0]["answer"]
    # the same answer as the SQL function's route gives (the fake engine's scored label), in Python's shape
    label = json.loads(cortex.classify_text("I love cats", ["pets", "cars"]))
    route = httpx.post(f"{url}/functions/classify_text", json={"data": [[0, "I love cats", ["pets", "cars"]]]})
    assert label == route.json()["data"][0][1] and label["label"] in {"pets", "cars"}


def test_embeddings(url: str) -> None:
    v768 = cortex.embed_text_768("e5-base-v2", "hello")
    v1024 = cortex.embed_text_1024("snowflake-arctic-embed-l-v2.0", "hello")
    assert (len(v768), len(v1024)) == (768, 1024) and all(isinstance(x, float) for x in v768)
    with pytest.raises(FunctionError, match='unknown model "snowflake-arctic-embed-l-v2.0"'):
        cortex.embed_text_768("snowflake-arctic-embed-l-v2.0", "hello")  # a 1024-d name is not a 768-d model


def test_complete_over_rest(url: str, engine: FakeEngine) -> None:
    assert cortex.complete("llama3.1-8b", "hi") == "echo:hi"
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "yo"}]
    options = {"temperature": 0.3, "top_p": 0.8, "max_tokens": 9}
    assert cortex.complete("mistral-7b", messages, options=options) == "echo:yo"
    sent = engine.calls[-1]
    assert (sent.temperature, sent.top_p, sent.max_tokens, len(sent.messages)) == (0.3, 0.8, 9, 2)


def test_complete_stream_over_rest(url: str) -> None:
    pieces = cortex.complete("llama3.1-8b", "stream me", stream=True)
    assert not isinstance(pieces, str)
    assert "".join(pieces) == "echo:stream me"


def test_complete_structured_output_over_rest(url: str) -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    answer = cortex.complete("llama3.1-8b", "where?", options={"response_format": {"type": "json", "schema": schema}})
    assert "city" in json.loads(answer)


def test_http_errors_carry_the_cortex_message(url: str) -> None:
    with pytest.raises(FunctionError, match='unknown model "nope"') as err:
        cortex.complete("nope", "hi")
    assert err.value.status == 400
    with pytest.raises(FunctionError, match="invalid options object"):
        cortex.complete("llama3.1-8b", "hi", options={"guardrails": True})
    with pytest.raises(FunctionError, match='invalid language "xx"'):
        cortex.translate("hello", "en", "xx")


def test_rest_errors_are_also_requests_http_errors(url: str) -> None:
    """snowflake-ml-python's complete() raises requests.HTTPError: code catching that keeps working."""
    requests = pytest.importorskip("requests")
    with pytest.raises(requests.HTTPError) as err:
        cortex.complete("nope", "hi")
    assert isinstance(err.value, FunctionError) and str(err.value) == 'unknown model "nope"'
    assert err.value.response.status_code == 400 and err.value.response.json()["message"] == 'unknown model "nope"'


def test_unreachable_service_says_where(monkeypatch: pytest.MonkeyPatch) -> None:
    from .loopback import free_port

    monkeypatch.setenv("SPCS_LLM_URL", f"http://127.0.0.1:{free_port()}")
    with pytest.raises(FunctionError, match="cannot reach the spcs-llm service at http://127.0.0.1"):
        cortex.summarize("x")
    with pytest.raises(FunctionError, match="cannot reach the spcs-llm service"):
        cortex.complete("llama3.1-8b", "x")
    cortex.close()


def test_api_key_is_sent(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPCS_LLM_API_KEY", "k1")  # read by the server's REST check and by the client alike
    assert cortex.complete("llama3.1-8b", "hi") == "echo:hi"
    monkeypatch.setenv("SPCS_LLM_API_KEY", "other")  # the server now wants "other"; the client sends it too
    assert cortex.complete("llama3.1-8b", "hi") == "echo:hi"


# -- snowflake-ml-python's own argument errors -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"model": "m", "prompt": "p", "timeout": 1, "deadline": 1.0},
            'only one of "timeout" and "deadline" must be set',
        ),
        ({"model": F.col("m"), "prompt": "p", "stream": True}, "in REST mode, 'model' must be a string"),
        (
            {"model": "m", "prompt": F.col("p"), "stream": True},
            "in REST mode, 'prompt' must be a string or a list of ConversationMessage",
        ),
        ({"model": F.col("m"), "prompt": "p"}, "'model' cannot be a snowpark.Column when 'prompt' is a string."),
        (
            {"model": "m", "prompt": "p", "options": F.col("o")},
            "'options' cannot be a snowpark.Column when 'prompt' is a string.",
        ),
        (
            {"model": "m", "prompt": "p", "options": {"response_format": {"schema": {}}}},
            "'type' cannot be empty for 'response_format' object",
        ),
        (
            {"model": "m", "prompt": "p", "options": {"response_format": {"type": "json"}}},
            "'schema' cannot be empty for 'response_format' object",
        ),
    ],
)
def test_complete_argument_errors(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError) as err:
        cortex.complete(**kwargs)
    assert str(err.value) == message


def test_camel_case_aliases_warn(url: str) -> None:
    with pytest.warns(DeprecationWarning, match=r"Summarize\(\) is deprecated .* Use summarize\(\) instead"):
        assert cortex.Summarize("abc") == "echo:abc"
    with pytest.warns(DeprecationWarning, match="Complete"):
        assert cortex.Complete("llama3.1-8b", "abc") == "echo:abc"


# -- Column arguments: the deployed function's SQL ---------------------------------------------------------------


def sql_of(column: Any) -> str:
    """The SQL Snowpark generates for a Column, checked to parse as Snowflake SQL."""
    from snowflake.snowpark._internal.analyzer.analyzer import Analyzer

    session = snowpark.Session.builder.config("local_testing", True).create()
    try:
        text = Analyzer(session).analyze(column._expression, {})
    finally:
        session.close()
    sqlglot.parse_one(f"SELECT {text}", read="snowflake")
    return text


@pytest.mark.parametrize(
    ("column", "sql"),
    [
        (lambda: cortex.summarize(F.col("abstract_text")), 'SPCS_LLM.LLM.SUMMARIZE("ABSTRACT_TEXT")'),
        (lambda: cortex.sentiment(F.col("t")), 'SPCS_LLM.LLM.SENTIMENT("T")'),
        (lambda: cortex.translate(F.col("t"), "en", "de"), "SPCS_LLM.LLM.TRANSLATE(\"T\", 'en', 'de')"),
        (lambda: cortex.extract_answer(F.col("doc"), "who?"), "SPCS_LLM.LLM.EXTRACT_ANSWER(\"DOC\", 'who?')"),
        (
            lambda: cortex.classify_text(F.col("t"), ["a", "b"]),
            'SPCS_LLM.LLM.CLASSIFY_TEXT("T", PARSE_JSON(\'["a", "b"]\') :: ARRAY)',
        ),
        (lambda: cortex.embed_text_768("e5-base-v2", F.col("t")), "SPCS_LLM.LLM.EMBED_TEXT_768('e5-base-v2', \"T\")"),
        (lambda: cortex.embed_text_1024(F.col("m"), F.col("t")), 'SPCS_LLM.LLM.EMBED_TEXT_1024("M", "T")'),
        (lambda: cortex.complete("llama3.1-8b", F.col("p")), "SPCS_LLM.LLM.COMPLETE('llama3.1-8b', \"P\")"),
    ],
)
def test_column_becomes_the_deployed_function(column: Any, sql: str) -> None:
    assert sql_of(column()) == sql


def test_complete_column_with_options_uses_the_options_form() -> None:
    sql = sql_of(cortex.complete("llama3.1-8b", F.col("p"), options={"temperature": 0.2}))
    assert sql == (
        "CAST(parse_json(SPCS_LLM.LLM.COMPLETE('llama3.1-8b', array_construct(object_construct('role', "
        "'user', 'content', \"P\")), PARSE_JSON('{\"temperature\": 0.2}') :: OBJECT))['choices'][0]"
        "['messages'] AS STRING)"
    ).replace("CAST(", " CAST (")


def test_schema_is_configurable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPCS_LLM_SCHEMA", "ANALYTICS.AI")
    assert sql_of(cortex.summarize(F.col("t"))) == 'ANALYTICS.AI.SUMMARIZE("T")'
    with pytest.raises(ValueError, match="must be DATABASE.SCHEMA"):
        cortex.configure(schema="NOSCHEMA")


# -- a Snowpark session: DataFrames end to end, and plain values as one query ------------------------------------


def test_dataframe_with_column_end_to_end(local_session: Any) -> None:
    df = local_session.create_dataframe([["A long abstract."], ["Another one."]], schema=["abstract_text"])
    rows = df.with_column("abstract_summary", cortex.summarize(F.col("abstract_text"))).collect()
    assert [r["ABSTRACT_SUMMARY"] for r in rows] == ["echo:A long abstract.", "echo:Another one."]
    scored = df.with_column("s", cortex.sentiment(F.col("abstract_text"))).collect()
    assert all(-1 <= r["S"] <= 1 for r in scored)
    answered = df.with_column("a", cortex.complete("llama3.1-8b", F.col("abstract_text"))).collect()
    assert [r["A"] for r in answered] == ["echo:A long abstract.", "echo:Another one."]


def test_plain_values_through_the_session(local_session: Any, engine: FakeEngine) -> None:
    before = len(engine.calls)
    assert cortex.summarize("through SQL", session=local_session) == "echo:through SQL"
    assert cortex.translate("hallo", "de", "en", session=local_session) == "echo:hallo"
    assert isinstance(cortex.sentiment("great", session=local_session), float)
    assert len(engine.calls) > before  # the session's UDF reached the service


def test_stream_over_sql_yields_the_whole_answer_once(local_session: Any) -> None:
    pieces = list(cortex.complete("llama3.1-8b", "all at once", session=local_session, stream=True))
    assert pieces == ["echo:all at once"]
