"""Clients no one here wrote, against the Cortex REST routes on a real loopback server (fake engine):

- snowflake-ml-python's own ``snowflake.cortex.complete()``, unmodified, over TLS with a throw-away certificate. It
  builds ``https://<session.connection.host>/api/v2/cortex/inference:complete`` and sends
  ``Authorization: Snowflake Token="<session.connection.rest.token>"``; the session is Snowpark's local-testing
  session, whose connection (the connector's real class with login mocked) is given the loopback host and a token.
- the official ``openai`` SDK against ``/api/v2/cortex/v1`` (base URL as Snowflake documents it).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from spcs_llm.config import Settings
from spcs_llm.engines import FakeEmbedder, FakeEngine
from spcs_llm.engines.base import StreamDelta
from spcs_llm.errors import EngineTimeout, Overloaded
from spcs_llm.server import create_app

from .loopback import make_certificate, serve

snowpark = pytest.importorskip("snowflake.snowpark")
real_cortex = pytest.importorskip("snowflake.cortex")
pytestmark = pytest.mark.filterwarnings("ignore:snowflake.cortex.complete is deprecated:DeprecationWarning")

TOKEN = "test-session-token"


def make_app() -> Any:
    settings = Settings.load(overrides={"engine": {"kind": "fake", "max_output_tokens": 32}})
    return create_app(
        settings, engine=FakeEngine("fake-model", context_window=256), embedders=[FakeEmbedder("fake-embed-768", 768)]
    )


@pytest.fixture(scope="module")
def app() -> Any:
    return make_app()


@pytest.fixture(scope="module")
def tls_service(app: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    cert, key = make_certificate(tmp_path_factory.mktemp("tls"))
    with serve(app, tls=(cert, key)) as base:
        yield base, cert


@pytest.fixture
def session(tls_service: tuple[str, Path], monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    base, cert = tls_service
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert))  # requests (ml-python's HTTP client) trusts the test cert
    monkeypatch.delenv("SPCS_LLM_API_KEY", raising=False)
    s = snowpark.Session.builder.config("local_testing", True).create()
    s.connection._host = base.removeprefix("https://")  # a Snowflake host has no port; this one must have
    s.connection.rest.token = TOKEN
    yield s
    s.close()


def test_ml_python_complete_unmodified(session: Any) -> None:
    assert real_cortex.complete("llama3.1-8b", "hello there", session=session) == "echo:hello there"


def test_ml_python_complete_stream_and_options(session: Any, app: Any) -> None:
    pieces = list(
        real_cortex.complete(
            "mistral-7b",
            [{"role": "user", "content": "streamed"}],
            session=session,
            stream=True,
            options={"max_tokens": 5, "temperature": 0.4, "top_p": 0.9},
        )
    )
    assert "".join(pieces) == "echo:streamed"
    sent = app.state.engine.calls[-1]
    assert (sent.max_tokens, sent.temperature, sent.top_p) == (5, 0.4, 0.9)


def test_ml_python_structured_output(session: Any) -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    answer = real_cortex.complete(
        "llama3.1-8b", "count", session=session, options={"response_format": {"type": "json", "schema": schema}}
    )
    assert '"n"' in answer


def test_ml_python_sees_the_cortex_errors(session: Any) -> None:
    import requests

    with pytest.raises(requests.HTTPError) as err:
        real_cortex.complete("no-such-model", "x", session=session)
    assert err.value.response.status_code == 400
    assert err.value.response.json()["message"] == 'unknown model "no-such-model"'
    with pytest.raises(requests.HTTPError) as err:  # it sends guardrails={enabled: true}: no guard model runs here
        real_cortex.complete("llama3.1-8b", "x", session=session, options={"guardrails": True})
    assert err.value.response.json()["message"] == "invalid options object"


def test_ml_python_raises_mid_stream_error(session: Any, app: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    async def half(request: Any) -> Any:
        yield StreamDelta(text="Cor")
        raise EngineTimeout()

    monkeypatch.setattr(app.state.runtime.scheduler, "stream", half)
    with pytest.raises(real_cortex._complete.MidStreamException, match="inference timed out"):
        real_cortex.complete("llama3.1-8b", "x", session=session)


def test_ml_python_retries_429(session: Any, app: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    scheduler = app.state.runtime.scheduler
    real_stream, refused = scheduler.stream, []

    def once_overloaded(request: Any) -> Any:
        if not refused:
            refused.append(request)
            raise Overloaded()
        return real_stream(request)

    monkeypatch.setattr(scheduler, "stream", once_overloaded)
    assert real_cortex.complete("llama3.1-8b", "again", session=session) == "echo:again"
    assert len(refused) == 1  # refused once with 429 (Retry-After: 1), then answered


def test_ml_python_token_checked_against_api_key(session: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import requests

    monkeypatch.setenv("SPCS_LLM_API_KEY", TOKEN)  # Snowflake Token="<token>" is accepted as the key
    assert real_cortex.complete("llama3.1-8b", "ok", session=session) == "echo:ok"
    monkeypatch.setenv("SPCS_LLM_API_KEY", "another-key")
    with pytest.raises(requests.HTTPError) as err:
        real_cortex.complete("llama3.1-8b", "ok", session=session)
    assert (err.value.response.status_code, err.value.response.json()["message"]) == (403, "Not Authorized")


# -- the openai SDK on the OpenAI-compatible Cortex route -------------------------------------------------------


@pytest.fixture
def openai_client(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    openai = pytest.importorskip("openai")
    monkeypatch.setenv("SPCS_LLM_API_KEY", "pat-123")
    with serve(make_app()) as base, openai.OpenAI(base_url=f"{base}/api/v2/cortex/v1", api_key="pat-123") as client:
        yield client


def test_openai_sdk_chat(openai_client: Any) -> None:
    answer = openai_client.chat.completions.create(
        model="llama3.1-8b", messages=[{"role": "user", "content": "hi sdk"}]
    )
    assert answer.choices[0].message.content == "echo:hi sdk" and answer.usage.total_tokens > 0


def test_openai_sdk_stream_with_usage(openai_client: Any) -> None:
    chunks = list(
        openai_client.chat.completions.create(
            model="llama3.1-8b",
            messages=[{"role": "user", "content": "streamed sdk"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "echo:streamed sdk"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_openai_sdk_errors(openai_client: Any) -> None:
    import openai

    with pytest.raises(openai.BadRequestError, match='unknown model \\\\"nope\\\\"|unknown model "nope"'):
        openai_client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    bad_key = openai_client.with_options(api_key="wrong")
    with pytest.raises(openai.PermissionDeniedError):
        bad_key.chat.completions.create(model="llama3.1-8b", messages=[{"role": "user", "content": "x"}])
