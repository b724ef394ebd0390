"""spcs_llm.cortex and the Cortex REST routes on the real service (packaged llama.cpp model and embedder), with
real clients: the drop-in over HTTP, a Snowpark local-testing DataFrame, the openai SDK, and snowflake-ml-python's
own complete() over TLS (an in-process server with the same real engine and a throw-away certificate)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from spcs_llm import cortex
from spcs_llm.config import Settings

from ..unit.loopback import make_certificate, serve
from .conftest import CTX_PER_SLOT, MAX_OUTPUT_TOKENS, LiveServer

pytestmark = pytest.mark.integration
snowpark = pytest.importorskip("snowflake.snowpark")


@pytest.fixture
def url(live_server: LiveServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("SPCS_LLM_URL", live_server.base_url)
    monkeypatch.delenv("SPCS_LLM_API_KEY", raising=False)
    yield live_server.base_url
    cortex.close()


def test_dropin_streams_token_by_token(url: str) -> None:
    pieces = list(
        cortex.complete("llama3.1-8b", "Count from one to ten in words.", stream=True, options={"max_tokens": 24})
    )
    assert len(pieces) > 3 and "".join(pieces).strip()  # many pieces: the model's tokens as they came


def test_dropin_functions_on_the_real_model(url: str) -> None:
    assert cortex.summarize("The committee met on Tuesday and approved the new budget for the library.").strip()
    assert -1 <= cortex.sentiment("I really enjoyed this restaurant, the food was wonderful.") <= 1
    assert json.loads(cortex.classify_text("My cat sleeps all day", ["pets", "cars"]))["label"] in {"pets", "cars"}
    assert len(cortex.embed_text_768("e5-base-v2", "hello world")) == 768


def test_rest_events_from_the_real_engine(url: str) -> None:
    body = {"model": "llama3.1-8b", "messages": [{"content": "Say hello."}], "max_tokens": 16}
    with httpx.stream("POST", f"{url}/api/v2/cortex/inference:complete", json=body, timeout=120) as r:
        assert r.status_code == 200 and r.headers["content-type"] == "text/event-stream"
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]
    assert len(events) > 1 and len({e["id"] for e in events}) == 1
    usage = events[-1]["usage"]
    assert 0 < usage["completion_tokens"] <= 16 and usage["prompt_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_dataframe_summarize_on_the_real_model(url: str) -> None:
    from snowflake.snowpark.functions import col

    from spcs_llm.cortex import local_testing

    session = snowpark.Session.builder.config("local_testing", True).create()
    try:
        local_testing.bind(session)
        df = session.create_dataframe(
            [["Snowflake launched a container service for running models."]], schema=["abstract_text"]
        )
        with pytest.warns(DeprecationWarning, match="Summarize"):  # the docs' spelling: the deprecated alias
            summary = cortex.Summarize(col("abstract_text"))
        rows = df.withColumn("abstract_summary", summary).collect()
    finally:
        session.close()
    assert isinstance(rows[0]["ABSTRACT_SUMMARY"], str) and rows[0]["ABSTRACT_SUMMARY"].strip()


def test_openai_sdk_on_the_cortex_route(url: str) -> None:
    openai = pytest.importorskip("openai")
    with openai.OpenAI(base_url=f"{url}/api/v2/cortex/v1", api_key="unused") as client:
        chunks = list(
            client.chat.completions.create(
                model="llama3.1-8b", stream=True, max_tokens=16, messages=[{"role": "user", "content": "Say hi."}]
            )
        )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).strip()


@pytest.fixture(scope="module")
def tls_live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    from spcs_llm.server import create_app

    settings = Settings.load(
        overrides={"engine": {"n_parallel": 2, "ctx_per_slot": CTX_PER_SLOT, "max_output_tokens": MAX_OUTPUT_TOKENS}}
    )
    cert, key = make_certificate(tmp_path_factory.mktemp("tls"))
    with serve(create_app(settings.model_copy(update={"embeddings": []})), tls=(cert, key), ready_s=300) as base:
        yield base, cert


@pytest.mark.filterwarnings("ignore:snowflake.cortex.complete is deprecated:DeprecationWarning")
def test_ml_python_complete_on_the_real_model(tls_live: tuple[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    real_cortex = pytest.importorskip("snowflake.cortex")
    base, cert = tls_live
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert))
    session = snowpark.Session.builder.config("local_testing", True).create()
    try:
        session.connection._host = base.removeprefix("https://")
        session.connection.rest.token = "token"
        pieces = list(
            real_cortex.complete(
                "llama3.1-8b", "Name three colors.", session=session, stream=True, options={"max_tokens": 16}
            )
        )
    finally:
        session.close()
    assert len(pieces) > 1 and "".join(pieces).strip()
