"""The Cortex REST routes (server/cortex_rest.py) on the fake engine: SSE and JSON shapes, errors, authorization."""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest

from spcs_llm.server import cortex_rest
from spcs_llm.server.cortex_rest import authorization_token

COMPLETE = "/api/v2/cortex/inference:complete"
EMBED = "/api/v2/cortex/inference:embed"


def sse_events(text: str) -> list[dict[str, Any]]:
    """The JSON of every ``data:`` event; fails on any data line that is not JSON (as snowflake-ml-python does)."""
    return [orjson.loads(block[len("data: ") :]) for block in text.split("\n\n") if block.startswith("data: ")]


async def test_complete_streams_cortex_events(client: httpx.AsyncClient) -> None:
    r = await client.post(COMPLETE, json={"model": "llama3.1-8b", "messages": [{"content": "hello there"}]})
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/event-stream"  # verbatim: snowflake-ml-python compares it exactly
    assert r.headers[cortex_rest.REQUEST_ID]
    events = sse_events(r.text)
    assert "".join(e["choices"][0]["delta"]["content"] for e in events) == "echo:hello there"
    assert {e["id"] for e in events} == {events[0]["id"]} and {e["model"] for e in events} == {"fake-model"}
    assert all(isinstance(e["created"], int) for e in events)
    first, last = events[0], events[-1]
    assert first["choices"][0]["delta"]["content_list"] == [{"type": "text", "text": "echo:hello there"}]
    assert first["usage"] == {}
    assert last["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    assert last["choices"][0]["finish_reason"] == "stop"
    assert "[DONE]" not in r.text


async def test_complete_json_when_not_streamed(client: httpx.AsyncClient, fake_engine: Any) -> None:
    r = await client.post(
        COMPLETE,
        json={
            "model": "mistral-7b",
            "stream": False,
            "temperature": 0.5,
            "top_p": 0.9,
            "max_tokens": 5,
            "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
        },
    )
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    body = r.json()
    assert body["choices"][0]["message"]["content"] == "echo:hi" and body["model"] == "fake-model"
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]
    sent = fake_engine.calls[-1]
    assert (sent.temperature, sent.top_p, sent.max_tokens) == (0.5, 0.9, 5)
    assert [m.role for m in sent.messages] == ["system", "user"]


async def test_complete_reads_ml_python_body(client: httpx.AsyncClient, fake_engine: Any) -> None:
    """snowflake-ml-python sends max_tokens and max_output_tokens, and content_list messages are text too."""
    r = await client.post(
        COMPLETE,
        json={
            "model": "llama3.1-8b",
            "stream": True,
            "max_output_tokens": 7,
            "messages": [{"content_list": [{"type": "text", "text": "a b"}]}],
        },
    )
    assert r.status_code == 200
    assert fake_engine.calls[-1].max_tokens == 7 and fake_engine.calls[-1].messages[0].content == "a b"


async def test_complete_structured_output(client: httpx.AsyncClient) -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    r = await client.post(
        COMPLETE,
        json={
            "model": "llama3.1-8b",
            "stream": False,
            "messages": [{"content": "x"}],
            "response_format": {"type": "json", "schema": schema},
        },
    )
    assert r.status_code == 200
    assert "n" in orjson.loads(r.json()["choices"][0]["message"]["content"])


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"model": "nope", "messages": [{"content": "x"}]}, 400, 'unknown model "nope"'),
        ({"model": "llama3.1-8b", "messages": [{"content": "x"}], "temperature": 3}, 400, "invalid options object"),
        ({"model": "llama3.1-8b", "messages": []}, 400, "invalid prompt object"),
        ({"model": "llama3.1-8b", "messages": [{"role": "robot", "content": "x"}]}, 400, "invalid prompt object"),
        (
            {"model": "llama3.1-8b", "messages": [{"content": "x"}], "guardrails": {"enabled": True}},
            400,
            "invalid options object",
        ),
        (
            {"model": "llama3.1-8b", "messages": [{"content": "x"}], "tools": [{"tool_spec": {}}]},
            400,
            "invalid options object",
        ),
        (
            {
                "model": "llama3.1-8b",
                "messages": [{"content": "x"}],
                "response_format": {"type": "json", "schema": {"type": 5}},
            },
            400,
            "schema validation failed",
        ),
        ({"model": "llama3.1-8b", "messages": [{"content": " ".join(["w"] * 100)}]}, 400, "max tokens of 64 exceeded"),
        (
            {"model": "llama3.1-8b", "messages": [{"content": "<<engine-down>>"}], "stream": False},
            503,
            "fake engine: injected failure",
        ),
    ],
)
async def test_complete_errors(client: httpx.AsyncClient, body: dict[str, Any], status: int, message: str) -> None:
    r = await client.post(COMPLETE, json=body)
    assert r.status_code == status, r.text
    assert r.json()["message"] == message and set(r.json()) == {"message", "code", "request_id"}


async def test_error_before_first_token_has_its_status(client: httpx.AsyncClient) -> None:
    r = await client.post(COMPLETE, json={"model": "llama3.1-8b", "messages": [{"content": "<<engine-down>>"}]})
    assert (r.status_code, r.json()["message"]) == (503, "fake engine: injected failure")


async def test_error_after_stream_start_is_an_error_event(
    client: httpx.AsyncClient, app: Any, monkeypatch: Any
) -> None:
    from spcs_llm.engines.base import StreamDelta
    from spcs_llm.errors import EngineTimeout

    async def half(request: Any) -> Any:
        yield StreamDelta(text="Cor")
        raise EngineTimeout()

    monkeypatch.setattr(app.state.runtime.scheduler, "stream", half)
    r = await client.post(COMPLETE, json={"model": "llama3.1-8b", "messages": [{"content": "x"}]})
    assert r.status_code == 200  # the engine failed after the SSE status line was sent
    events = sse_events(r.text)
    assert events[0]["choices"][0]["delta"]["content"] == "Cor"
    assert events[-1] == {"error": {"message": "inference timed out", "code": "engine_timeout"}}


async def test_not_json_is_400(client: httpx.AsyncClient) -> None:
    r = await client.post(COMPLETE, content=b"{nope")
    assert r.status_code == 400 and r.json()["message"].startswith("request body is not JSON")


async def test_overload_is_429_too_many_requests(client: httpx.AsyncClient, app: Any, monkeypatch: Any) -> None:
    from spcs_llm.errors import Overloaded

    async def refuse(*a: Any, **k: Any) -> Any:
        raise Overloaded()

    monkeypatch.setattr(app.state.runtime.scheduler, "chat", refuse)
    r = await client.post(COMPLETE, json={"model": "llama3.1-8b", "stream": False, "messages": [{"content": "x"}]})
    assert (r.status_code, r.json()["message"], r.headers["retry-after"]) == (429, "too many requests", "1")


async def test_embed(client: httpx.AsyncClient) -> None:
    r = await client.post(EMBED, json={"model": "fake-embed-768", "text": ["one", "two words"]})
    assert r.status_code == 200
    body = r.json()
    assert body["model"] == "fake-embed-768" and [d["index"] for d in body["data"]] == [0, 1]
    assert all(len(d["embedding"]) == 1 and len(d["embedding"][0]) == 768 for d in body["data"])
    plain = (await client.post("/v1/embeddings", json={"model": "fake-embed-768", "input": ["one"]})).json()
    assert body["data"][0]["embedding"][0] == pytest.approx(plain["data"][0]["embedding"], abs=1e-6)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"model": "e5-nope", "text": ["x"]}, 'unknown model "e5-nope"'),
        ({"model": "fake-embed-768", "text": []}, "text must be a non-empty array of strings"),
        ({"model": "fake-embed-768", "text": ["x"] * 1281}, "text has 1281 entries; at most 1280 are allowed"),
        ({"model": "fake-embed-768", "text": ["x" * 4097]}, "a text is longer than 4096 characters"),
    ],
)
async def test_embed_errors(client: httpx.AsyncClient, body: dict[str, Any], message: str) -> None:
    r = await client.post(EMBED, json=body)
    assert (r.status_code, r.json()["message"]) == (400, message)


async def test_openai_compatible_route(client: httpx.AsyncClient) -> None:
    r = await client.post(
        "/api/v2/cortex/v1/chat/completions",
        json={"model": "llama3.1-8b", "messages": [{"role": "user", "content": "yo"}]},
    )
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "echo:yo"
    bad = await client.post("/api/v2/cortex/v1/chat/completions", json={"model": "x", "messages": [{"content": "a"}]})
    assert bad.status_code == 400 and bad.json()["error"]["message"] == 'unknown model "x"'


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer abc", "abc"),
        ("bearer  abc ", "abc"),
        ('Snowflake Token="abc"', "abc"),
        ('Snowflake token="a b"', "a b"),
        (None, None),
        ("", None),
        ("Basic abc", None),
        ("Snowflake Token=abc", None),
        ('Snowflake Token=""', None),
        ("Bearer", None),
    ],
)
def test_authorization_token_forms(header: str | None, token: str | None) -> None:
    assert authorization_token(header) == token


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"Authorization": "Bearer wrong"}, 403),
        ({"Authorization": "Bearer s3cret"}, 200),
        ({"Authorization": 'Snowflake Token="s3cret"'}, 200),
    ],
)
async def test_api_key_checked_when_configured(
    client: httpx.AsyncClient, monkeypatch: Any, headers: dict[str, str], status: int
) -> None:
    monkeypatch.setenv("SPCS_LLM_API_KEY", "s3cret")
    body = {"model": "llama3.1-8b", "stream": False, "messages": [{"content": "x"}]}
    for path in (COMPLETE, "/api/v2/cortex/v1/chat/completions"):
        r = await client.post(path, json=body, headers=headers)
        assert r.status_code == status, (path, r.text)
        if status != 200:
            message = r.json()["message"] if path == COMPLETE else r.json()["error"]["message"]
            assert message == "Not Authorized"


async def test_no_key_configured_accepts_any_caller(client: httpx.AsyncClient, monkeypatch: Any) -> None:
    monkeypatch.delenv("SPCS_LLM_API_KEY", raising=False)
    r = await client.post(COMPLETE, json={"model": "llama3.1-8b", "stream": False, "messages": [{"content": "x"}]})
    assert r.status_code == 200
