"""OpenAIHttpEngine and OpenAIEmbedder against stand-in upstreams (httpx.MockTransport, or a real spcs-llm app
over ASGI): every upstream failure's translation, the request bodies, streaming, discovery, counting, bounds."""

from __future__ import annotations

import asyncio
import base64
import json
import math
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np
import pytest
from asgi_lifespan import LifespanManager

from spcs_llm.config import ConfigError, EmbeddingSettings, Settings
from spcs_llm.engines.base import ChatRequest, Message
from spcs_llm.engines.openai_http import OpenAIEmbedder, OpenAIHttpEngine, share_tokens, upstream_error
from spcs_llm.errors import (
    EngineError,
    EngineTimeout,
    EngineUnavailable,
    InvalidInput,
    MaxTokensExceeded,
    Overloaded,
    SchemaValidationFailed,
    SpcsLlmError,
)
from spcs_llm.server import create_app
from spcs_llm.server.app import _embedder_names

from ..conftest import fake_settings

MODELS = {"object": "list", "data": [{"id": "qwen", "object": "model", "max_model_len": 2048}]}
Handler = Callable[[httpx.Request], httpx.Response]


def req(text: str = "hi", **kw: Any) -> ChatRequest:
    return ChatRequest(messages=(Message("user", text),), max_tokens=kw.pop("max_tokens", 16), **kw)


def answer(text: str = "hello", **choice: Any) -> dict[str, Any]:
    return {
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop", **choice}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1},
    }


def upstream(
    chat: Handler | dict[str, Any], seen: list[httpx.Request] | None = None, **routes: Handler
) -> httpx.MockTransport:
    """A stand-in upstream: /v1/models lists "qwen"; /v1/chat/completions answers with ``chat``."""

    def handle(request: httpx.Request) -> httpx.Response:
        if seen is not None:
            seen.append(request)
        path = request.url.path
        if path in routes:
            return routes[path](request)
        if path == "/v1/models":
            return httpx.Response(200, json=MODELS)
        if path == "/v1/chat/completions":
            return chat(request) if callable(chat) else httpx.Response(200, json=chat)
        return httpx.Response(404, json={"detail": "Not Found"})

    return httpx.MockTransport(handle)


async def started(transport: httpx.AsyncBaseTransport, **kw: Any) -> OpenAIHttpEngine:
    engine = OpenAIHttpEngine(
        "http://up:8000/v1",
        kw.pop("model", "qwen"),
        transport=transport,
        startup_timeout_s=kw.pop("startup_timeout_s", 1.0),
        **kw,
    )
    await engine.start()
    return engine


def status(code: int, body: Any) -> Handler:
    return lambda _r: httpx.Response(code, json=body) if not isinstance(body, str) else httpx.Response(code, text=body)


def raising(exc: Exception) -> Handler:
    def handle(request: httpx.Request) -> httpx.Response:
        raise exc

    return handle


# OpenAI's own older wording (no vLLM release emits it)
OPENAI_CTX = (
    "This model's maximum context length is 2048 tokens. However, you requested 3000 tokens "
    "(2000 in the messages, 1000 in the completion). Please reduce the length of the messages or completion."
)
# vLLM's texts, verbatim (vllm-audit.md §2.3): 0.11.0:vllm/entrypoints/openai/serving_engine.py:674-688 (the
# trailing " None" is serving_chat.py:261-264's f"{e} {e.__cause__}"), 0.18.0 and 0.33.0:vllm/renderers/params.py
VLLM_CTX_NEW = (
    "'max_tokens' or 'max_completion_tokens' is too large: 1000. This model's maximum context length is "
    "4096 tokens and your request has 3500 input tokens (1000 > 4096 - 3500). None"
)
VLLM_011_PROMPT = (
    "This model's maximum context length is 2048 tokens. However, your request has 3000 input tokens. "
    "Please reduce the length of the input messages. None"
)
VLLM_018_OUTPUT = (
    "This model's maximum context length is 4096 tokens. However, you requested 4096 output tokens and "
    "your prompt contains 100 input tokens, for a total of 4196 tokens. Please reduce the length of "
    "the input prompt or the number of requested output tokens. (parameter=input_tokens, value=100)"
)
VLLM_033_PROMPT = (
    "This model's maximum context length is 2048 tokens. However, your prompt contains 3000 input "
    "tokens, which exceeds this limit even without any output tokens. Please reduce the length of the "
    "input prompt. (parameter=input_tokens, value=3000)"
)
VLLM_PROMPT = "The decoder prompt (length 9000) is longer than the maximum model length of 8192."

# (what the upstream does, the error we must raise, its HTTP status, a detail it must carry)
FAILURES: list[tuple[str, Handler, type[SpcsLlmError], int, Any]] = [
    ("refused", raising(httpx.ConnectError("Connection refused")), EngineUnavailable, 503, "unreachable"),
    ("reset", raising(httpx.RemoteProtocolError("peer closed")), EngineUnavailable, 503, "unreachable"),
    ("read timeout", raising(httpx.ReadTimeout("timed out")), EngineTimeout, 503, "in time"),
    ("connect timeout", raising(httpx.ConnectTimeout("timed out")), EngineTimeout, 503, "in time"),
    (
        "500",
        status(500, {"error": {"message": "boom", "type": "InternalServerError"}}),
        EngineUnavailable,
        503,
        "HTTP 500",
    ),
    ("502 text", status(502, "<html>bad gateway</html>"), EngineUnavailable, 503, "HTTP 502"),
    ("503", status(503, {"error": {"message": "loading", "code": 503}}), EngineUnavailable, 503, "HTTP 503"),
    ("504", status(504, "gateway timeout"), EngineTimeout, 503, "timed out"),
    ("429", status(429, {"error": {"message": "slow down"}}), Overloaded, 429, "overloaded"),
    ("401", status(401, {"error": "unauthorized"}), EngineUnavailable, 503, "credentials"),
    (
        "404 model",
        status(404, {"error": {"message": "The model `x` does not exist.", "type": "NotFoundError"}}),
        EngineUnavailable,
        503,
        "does not serve",
    ),
    (
        "spcs-llm unknown model",
        status(400, {"error": {"message": 'unknown model "x"', "type": "unknown_model"}}),
        EngineUnavailable,
        503,
        "does not serve",
    ),
    (
        "OpenAI context",
        status(400, {"error": {"message": OPENAI_CTX, "type": "BadRequestError", "code": 400}}),
        MaxTokensExceeded,
        400,
        2048,
    ),
    (
        "vLLM 0.11 prompt alone",
        status(400, {"error": {"message": VLLM_011_PROMPT, "type": "BadRequestError", "param": None, "code": 400}}),
        MaxTokensExceeded,
        400,
        2048,
    ),
    (
        "vLLM 0.33 prompt alone",
        status(400, {"error": {"message": VLLM_033_PROMPT, "type": "BadRequestError", "param": None, "code": 400}}),
        MaxTokensExceeded,
        400,
        2048,
    ),
    (
        "vLLM context, new wording",
        status(400, {"error": {"message": VLLM_CTX_NEW, "type": "BadRequestError"}}),
        MaxTokensExceeded,
        400,
        4096,
    ),
    (
        "vLLM prompt too long, flat shape",
        status(400, {"object": "error", "message": VLLM_PROMPT, "code": 400}),
        MaxTokensExceeded,
        400,
        8192,
    ),
    (
        "llama-server context",
        status(
            400,
            {
                "error": {
                    "code": 400,
                    "type": "exceed_context_size_error",
                    "n_ctx": 1024,
                    "message": "the request exceeds the available context size",
                }
            },
        ),
        MaxTokensExceeded,
        400,
        1024,
    ),
    (
        "spcs-llm context",
        status(400, {"error": {"message": "max tokens of 512 exceeded", "type": "max_tokens_exceeded", "code": 400}}),
        MaxTokensExceeded,
        400,
        512,
    ),
    (
        "context without a number",
        status(400, {"error": {"message": "prompt exceeds the context window"}}),
        MaxTokensExceeded,
        400,
        2048,
    ),  # the engine's discovered window
    (
        "other 400",
        status(400, {"error": {"message": "temperature must be <= 2", "type": "BadRequestError"}}),
        InvalidInput,
        400,
        "temperature must be <= 2",
    ),
    (
        "422 validation",
        status(422, {"detail": [{"loc": ["body", "top_p"], "msg": "bad"}]}),
        InvalidInput,
        400,
        "upstream rejected",
    ),
    ("Ollama string error", status(400, {"error": "invalid stop"}), InvalidInput, 400, "invalid stop"),
]


@pytest.mark.parametrize(("case", "handler", "error", "code", "detail"), FAILURES, ids=[f[0] for f in FAILURES])
async def test_every_upstream_failure_is_translated(
    case: str, handler: Handler, error: type[SpcsLlmError], code: int, detail: Any
) -> None:
    engine = await started(upstream(handler))
    with pytest.raises(error) as caught:
        await engine.chat(req())
    assert caught.value.status == code and type(caught.value) is error
    if isinstance(detail, int):
        assert caught.value.message == f"max tokens of {detail} exceeded"
    else:
        assert detail in caught.value.message
    # the stream path goes through the same translation
    with pytest.raises(error):
        async for _ in engine.chat_stream(req()):
            pass
    await engine.aclose()


# vLLM 0.11.0's structured-output refusals (M8): backend "auto" tries xgrammar, then llguidance, whose text is last
# (v1/engine/processor.py:273-289, v1/structured_output/backend_guidance.py:243-245, backend_xgrammar.py:284-293).
GRAMMAR_ERRORS = [
    'Grammar error: Unimplemented keys: ["if"]',
    "Failed to transform json schema into a grammar: Unsupported keyword",
    "The provided JSON schema contains features not supported by xgrammar.",
]


@pytest.mark.parametrize("message", GRAMMAR_ERRORS)
async def test_schema_rejection_is_schema_validation_failed_only_with_a_schema(message: str) -> None:
    bad = status(400, {"error": {"message": message, "type": "BadRequestError", "param": None, "code": 400}})
    engine = await started(upstream(bad))
    with pytest.raises(SchemaValidationFailed):
        await engine.chat(req(json_schema='{"type": "object"}'))
    with pytest.raises(InvalidInput):
        await engine.chat(req())
    await engine.aclose()


def refusing_vllm_011(window: int, prompt_tokens: int, seen: list[dict[str, Any]]) -> Handler:
    """Chat as vLLM 0.11.0 answers it: 400 when prompt + max_tokens is over the window, else the budget used up."""

    def handle(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        seen.append(body)
        asked = body["max_tokens"]
        if prompt_tokens >= window:
            text = (
                f"This model's maximum context length is {window} tokens. However, your request has "
                f"{prompt_tokens} input tokens. Please reduce the length of the input messages. None"
            )
            return httpx.Response(
                400, json={"error": {"message": text, "type": "BadRequestError", "param": None, "code": 400}}
            )
        if prompt_tokens + asked > window:
            text = (
                f"'max_tokens' or 'max_completion_tokens' is too large: {asked}. This model's maximum context "
                f"length is {window} tokens and your request has {prompt_tokens} input tokens ({asked} > "
                f"{window} - {prompt_tokens}). None"
            )
            return httpx.Response(
                400, json={"error": {"message": text, "type": "BadRequestError", "param": None, "code": 400}}
            )
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": asked}
        if body.get("stream"):
            return sse(chunk("x" * 3), chunk(finish="length"), {"choices": [], "usage": usage}, "[DONE]")(request)
        return httpx.Response(
            200,
            json={
                "choices": [{"index": 0, "message": {"content": "x" * 3}, "finish_reason": "length"}],
                "usage": usage,
            },
        )

    return handle


async def test_output_that_does_not_fit_is_clamped_to_what_the_context_leaves() -> None:
    """M1: COMPLETE's 4096 output tokens on a 4096-token model, as vLLM 0.10-0.31 see it."""
    seen: list[dict[str, Any]] = []
    engine = await started(upstream(refusing_vllm_011(4096, 100, seen)))
    result = await engine.chat(req(max_tokens=4096))
    assert [b["max_tokens"] for b in seen] == [4096, 3996]  # refused once, then what fits
    assert result.finish_reason == "length" and result.usage.completion_tokens == 3996
    seen.clear()
    deltas = [d async for d in engine.chat_stream(req(max_tokens=4096))]
    assert [b["max_tokens"] for b in seen] == [4096, 3996] and all(b["stream"] for b in seen)
    assert [d.finish_reason for d in deltas if d.finish_reason] == ["length"]
    seen.clear()
    await engine.chat(req(max_tokens=100))
    assert [b["max_tokens"] for b in seen] == [100]  # a row that fits costs one request
    await engine.aclose()


async def test_only_a_prompt_that_alone_fills_the_context_is_max_tokens_exceeded() -> None:
    seen: list[dict[str, Any]] = []
    engine = await started(upstream(refusing_vllm_011(4096, 4096, seen)))
    for call in (engine.chat(req(max_tokens=4096)), _drain(engine.chat_stream(req(max_tokens=4096)))):
        with pytest.raises(MaxTokensExceeded) as caught:
            await call
        assert type(caught.value) is MaxTokensExceeded and caught.value.message == "max tokens of 4096 exceeded"
    assert len(seen) == 2  # no second try: nothing fits
    await engine.aclose()


async def test_newer_vllm_wording_is_clamped_too() -> None:
    """vLLM 0.18-0.31 word the refusal differently; the prompt count is still read from it."""
    bodies: list[dict[str, Any]] = []

    def handle(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        if bodies[-1]["max_tokens"] > 3996:
            return httpx.Response(
                400,
                json={
                    "error": {
                        "message": VLLM_018_OUTPUT,
                        "type": "BadRequestError",
                        "param": "input_tokens",
                        "code": 400,
                    }
                },
            )
        return httpx.Response(200, json=answer("ok", finish_reason="length"))

    engine = await started(upstream(handle))
    assert (await engine.chat(req(max_tokens=4096))).finish_reason == "length"
    assert [b["max_tokens"] for b in bodies] == [4096, 3996]
    await engine.aclose()


async def _drain(stream: Any) -> None:
    async for _ in stream:
        pass


def test_every_exception_httpx_raises_is_translated() -> None:
    """Like httpx's own test of its httpcore mapping: no transport exception escapes untranslated."""

    def subclasses(cls: type) -> set[type]:
        return {cls} | {s for c in cls.__subclasses__() for s in subclasses(c)}

    for cls in subclasses(httpx.TransportError):
        err = upstream_error(exc=cls("x"))
        expected = EngineTimeout if issubclass(cls, httpx.TimeoutException) else EngineUnavailable
        assert type(err) is expected and err.status == 503, cls


@pytest.mark.parametrize(
    ("structured", "field"), [("structured_outputs", "structured_outputs"), ("response_format", "response_format")]
)
async def test_request_body_carries_schema_logprobs_and_options(structured: str, field: str) -> None:
    seen: list[httpx.Request] = []
    engine = await started(upstream(answer(), seen), structured_output=structured)
    schema = ChatRequest.schema_key({"type": "object", "properties": {"a": {"type": "integer"}}})
    await engine.chat(req("hi", json_schema=schema, top_logprobs=3, stop=("END",), seed=7, temperature=0.5))
    body = json.loads(seen[-1].content)
    assert body["model"] == "qwen" and body["messages"] == [{"role": "user", "content": "hi"}]
    assert body["max_tokens"] == 16 and body["temperature"] == 0.5 and body["stop"] == ["END"] and body["seed"] == 7
    assert body["logprobs"] is True and body["top_logprobs"] == 3
    wanted = json.loads(schema)
    if field == "structured_outputs":
        assert body["structured_outputs"] == {"json": wanted} and "response_format" not in body
    else:
        assert body["response_format"]["type"] == "json_schema"
        assert body["response_format"]["json_schema"]["schema"] == wanted and "structured_outputs" not in body
    await engine.chat(req("plain"))
    plain = json.loads(seen[-1].content)
    assert not {"logprobs", "top_logprobs", "structured_outputs", "response_format", "stop"} & set(plain)
    await engine.aclose()


async def test_answer_usage_and_logprobs_are_parsed() -> None:
    logprobs = {
        "content": [
            {
                "token": "hel",
                "logprob": -0.25,
                "bytes": [104],
                "top_logprobs": [{"token": "hel", "logprob": -0.25}, {"token": "hi", "logprob": -1.5}],
            },
            {"token": "lo", "logprob": -0.01, "top_logprobs": [{"token": "lo", "logprob": -0.01}]},
        ]
    }
    engine = await started(upstream(answer("hello", logprobs=logprobs)))
    result = await engine.chat(req(top_logprobs=2))
    assert result.text == "hello" and result.finish_reason == "stop"
    assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (3, 1)
    assert [(t.token, t.logprob, t.top) for t in result.logprobs] == [
        ("hel", -0.25, (("hel", -0.25), ("hi", -1.5))),
        ("lo", -0.01, (("lo", -0.01),)),
    ]
    await engine.aclose()


def sse(*events: dict[str, Any] | str) -> Handler:
    text = "".join(f"data: {e if isinstance(e, str) else json.dumps(e)}\n\n" for e in events)
    return lambda _r: httpx.Response(200, text=text, headers={"content-type": "text/event-stream"})


def chunk(text: str = "", finish: str | None = None) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": {"content": text} if text else {}, "finish_reason": finish}]}


async def test_stream_yields_text_finish_and_usage() -> None:
    seen: list[httpx.Request] = []
    events = sse(
        chunk(),
        chunk("hel"),
        chunk("lo"),
        chunk(finish="stop"),
        {"choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 2}},
        "[DONE]",
    )
    engine = await started(upstream(events, seen))
    deltas = [d async for d in engine.chat_stream(req())]
    assert "".join(d.text for d in deltas) == "hello"
    assert [d.finish_reason for d in deltas if d.finish_reason] == ["stop"]
    assert [(d.usage.prompt_tokens, d.usage.completion_tokens) for d in deltas if d.usage] == [(4, 2)]
    body = json.loads(seen[-1].content)
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    await engine.aclose()


async def test_error_inside_a_stream_is_translated() -> None:
    events = sse(chunk("par"), {"error": {"message": "engine died", "type": "engine_unavailable", "code": 503}})
    engine = await started(upstream(events))
    got = []
    with pytest.raises(EngineUnavailable):
        async for d in engine.chat_stream(req()):
            got.append(d.text)
    assert got == ["par"]
    await engine.aclose()


# (the event vLLM sends inside a 200 stream, what it must become): 0.11.0 labels everything code 400
STREAM_EVENTS = [
    (
        {
            "error": {
                "message": "EngineCore encountered an issue. See stack trace (above) for the root cause.",
                "type": "BadRequestError",
                "param": None,
                "code": 400,
            }
        },
        EngineUnavailable,
    ),
    (
        {
            "error": {
                "message": "The server had an error while processing your request.",
                "type": "InternalServerError",
                "param": None,
                "code": 500,
            }
        },
        EngineUnavailable,
    ),  # 0.33.0
    ({"error": {"message": "", "type": "BadRequestError", "param": None, "code": 400}}, EngineUnavailable),
    ({"error": {"message": "Grammar error: bad", "type": "BadRequestError", "param": None, "code": 400}}, InvalidInput),
]


@pytest.mark.parametrize(("event", "error"), STREAM_EVENTS)
async def test_engine_death_inside_a_stream_is_503_other_errors_stay_row_errors(
    event: dict[str, Any], error: type[Exception]
) -> None:
    engine = await started(upstream(sse(chunk("par"), event, "[DONE]")))
    with pytest.raises(error) as caught:
        await _drain(engine.chat_stream(req()))
    assert type(caught.value) is error
    await engine.aclose()


@pytest.mark.parametrize(
    ("version", "structured", "refused"),
    [
        ("0.10.2", "structured_outputs", True),
        ("0.11.0", "structured_outputs", False),
        ("0.12.0rc1.dev5+g1234", "structured_outputs", False),
        ("0.10.2", "response_format", False),
    ],
)
async def test_vllm_older_than_0_11_is_refused_when_structured_outputs_is_sent(
    version: str, structured: str, refused: bool
) -> None:
    models = {"data": [{"id": "qwen", "owned_by": "vllm", "max_model_len": 2048}]}
    routes = {"/v1/models": status(200, models), "/version": status(200, {"version": version})}
    if refused:
        with pytest.raises(EngineUnavailable, match=f"runs vLLM {version}; spcs-llm needs vLLM 0.11.0 or later"):
            await started(upstream(answer(), **routes), structured_output=structured)
        return
    engine = await started(upstream(answer(), **routes), structured_output=structured)
    assert engine.vllm_version == version
    await engine.aclose()


async def test_a_server_that_is_not_vllm_is_not_asked_its_version() -> None:
    seen: list[httpx.Request] = []
    engine = await started(upstream(answer(), seen), structured_output="structured_outputs")
    assert engine.vllm_version is None and not any(r.url.path == "/version" for r in seen)
    await engine.aclose()


async def test_a_stream_event_that_is_not_json_is_an_engine_error() -> None:
    engine = await started(upstream(sse(chunk("a"), "{not json")))
    with pytest.raises(EngineUnavailable, match="not JSON"):
        async for _ in engine.chat_stream(req()):
            pass
    await engine.aclose()


async def test_start_discovers_context_window_and_default_model() -> None:
    engine = await started(upstream(answer()), model="default")
    assert (engine.upstream_model, engine.model_name, engine.context_window) == ("qwen", "qwen", 2048)
    await engine.aclose()
    configured = await started(upstream(answer()), context_window=1000, model_name="served-as")
    assert configured.context_window == 1000 and configured.model_name == "served-as"
    await configured.aclose()


async def test_llama_server_context_comes_from_props() -> None:
    models = {"data": [{"id": "m.gguf", "object": "model"}]}
    props = {"default_generation_settings": {"n_ctx": 1536}}
    engine = await started(
        upstream(answer(), **{"/v1/models": status(200, models), "/props": status(200, props)}), model="m.gguf"
    )
    assert engine.context_window == 1536
    await engine.aclose()


async def test_start_refuses_a_model_the_upstream_does_not_serve() -> None:
    with pytest.raises(EngineUnavailable, match="does not serve 'llama'.*qwen"):
        await started(upstream(answer()), model="llama")


async def test_start_waits_for_the_upstream_then_gives_up() -> None:
    calls = 0

    def flaky(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise httpx.ConnectError("refused")
        return httpx.Response(200, json=MODELS)

    engine = await started(upstream(answer(), **{"/v1/models": flaky}), startup_timeout_s=10)
    assert calls == 3 and engine.context_window == 2048
    await engine.aclose()
    with pytest.raises(EngineUnavailable, match="not ready after"):
        await started(
            upstream(answer(), **{"/v1/models": raising(httpx.ConnectError("refused"))}), startup_timeout_s=0.2
        )


async def test_count_tokens_vllm_shape_llama_shape_and_absent() -> None:
    seen: list[httpx.Request] = []
    vllm = await started(
        upstream(
            answer(), seen, **{"/tokenize": status(200, {"count": 5, "max_model_len": 2048, "tokens": [1, 2, 3, 4, 5]})}
        )
    )
    assert await vllm.count_tokens("a b c") == 5
    sent = json.loads(seen[-1].content)
    assert str(seen[-1].url) == "http://up:8000/tokenize" and sent["prompt"] == "a b c" and sent["model"] == "qwen"
    llama = await started(upstream(answer(), **{"/tokenize": status(200, {"tokens": [7, 8]})}))
    assert await llama.count_tokens("x") == 2
    ollama = await started(upstream(answer()))
    with pytest.raises(InvalidInput, match="does not count tokens"):
        await ollama.count_tokens("x")
    for e in (vllm, llama, ollama):
        await e.aclose()


async def test_health_uses_root_health_then_models() -> None:
    ok = await started(upstream(answer(), **{"/health": status(200, {})}))
    assert await ok.health() is True
    no_health = await started(upstream(answer()))  # /health 404 (Ollama): /v1/models answers
    assert await no_health.health() is True
    down = await started(upstream(answer(), **{"/health": status(503, {})}))
    assert await down.health() is False
    for e in (ok, no_health, down):
        await e.aclose()


async def test_requests_in_flight_are_bounded_by_max_concurrency() -> None:
    in_flight = peak = 0

    class Slow(httpx.AsyncBaseTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            nonlocal in_flight, peak
            if request.url.path == "/v1/models":
                return httpx.Response(200, json=MODELS)
            in_flight += 1
            peak = max(peak, in_flight)
            await asyncio.sleep(0.02)
            in_flight -= 1
            return httpx.Response(200, json=answer())

    engine = await started(Slow(), max_concurrency=3)
    results = await asyncio.gather(*(engine.chat(req(str(i))) for i in range(12)))
    assert len(results) == 12 and peak == 3
    await engine.aclose()


async def test_fronting_a_real_spcs_llm_app_over_asgi() -> None:
    """The engine against the real server code (fake engine behind it): chat, logprobs, schema, stream, count."""
    app = create_app(fake_settings(ctx_per_slot=512, model_name="fake-model"))
    async with LifespanManager(app):
        for _ in range(200):
            if app.state.runtime is not None:
                break
            await asyncio.sleep(0.005)
        engine = await started(httpx.ASGITransport(app), model="fake-model")
        assert engine.context_window == 512
        result = await engine.chat(req("one two", top_logprobs=2, temperature=0.0))
        assert result.text == "echo:one two" and result.usage.completion_tokens == 2
        assert [t.token for t in result.logprobs] == ["echo:one", "two"]
        assert result.logprobs[0].top == (("echo:one", -0.1), ("alt1", -2.0))
        assert "".join([d.text async for d in engine.chat_stream(req("x y"))]) == "echo:x y"
        assert await engine.count_tokens("a b c d") == 4
        with pytest.raises(MaxTokensExceeded, match="max tokens of 512 exceeded"):
            await engine.chat(req("w " * 600))
        await engine.aclose()


def embedding_upstream(dim: int, seen: list[Any]) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"data": [{"id": "e5"}]})
        texts = json.loads(request.content)["input"]
        seen.append(texts)
        # vectors of 3, 4, 0, ...; answered in reverse index order to check the reordering
        data = [
            {"index": i, "embedding": [3.0 * (i + 1), 4.0 * (i + 1)] + [0.0] * (dim - 2)} for i in range(len(texts))
        ]
        return httpx.Response(200, json={"data": data[::-1]})

    return httpx.MockTransport(handle)


async def test_embedder_probes_dimension_normalises_and_keeps_order() -> None:
    seen: list[Any] = []
    embedder = OpenAIEmbedder(
        "http://up/v1", "e5", dimension=768, transport=embedding_upstream(8, seen), startup_timeout_s=1
    )
    await embedder.start()
    assert embedder.dimension == 8  # the real one; the app refuses to start when the config says otherwise
    texts = [f"t{i}" for i in range(150)]
    vectors = await embedder.embed(texts)
    assert len(vectors) == 150 and [len(c) for c in seen[1:]] == [64, 64, 22]
    assert all(math.isclose(sum(x * x for x in v), 1.0) for v in vectors)
    assert vectors[0][:2] == pytest.approx([0.6, 0.8])
    await embedder.aclose()


def vllm_vector(values: list[float], body: dict[str, Any]) -> Any:
    """One vector as vLLM 0.11.0 writes it (serving_embedding.py ``_get_embedding``): ``tolist()`` of the float32
    tensor for ``"float"``, its float32 bytes in base64 for ``"base64"``; anything else is refused before."""
    fmt = body.get("encoding_format", "float")
    assert fmt in ("float", "base64"), fmt  # EmbeddingCompletionRequest.encoding_format: Literal["float", "base64"]
    tensor = np.asarray(values, dtype=np.float32)
    return tensor.tolist() if fmt == "float" else base64.b64encode(tensor.tobytes()).decode()


def refusing_embeddings(seen: list[dict[str, Any]], owner: str = "vllm") -> httpx.MockTransport:
    """vLLM's /v1/embeddings: a text over 512 "tokens" (words) fails the whole call unless truncation is asked."""

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"data": [{"id": "e5", "owned_by": owner, "max_model_len": 512}]})
        body = json.loads(request.content)
        seen.append(body)
        lengths = [len(t.split()) for t in body["input"]]
        if body.get("truncate_prompt_tokens") == -1:
            lengths = [min(n, 512) for n in lengths]
        if too_long := [n for n in lengths if n > 512]:
            message = (
                f"This model's maximum context length is 512 tokens. However, your request has {too_long[0]} "
                "input tokens. Please reduce the length of the input messages."
            )
            return httpx.Response(
                400, json={"error": {"message": message, "type": "BadRequestError", "param": None, "code": 400}}
            )
        data = [{"index": i, "embedding": vllm_vector([float(n), 1.0], body)} for i, n in enumerate(lengths)]
        # vLLM's EmbeddingResponse: one usage for the whole call (UsageInfo: prompt_tokens, total_tokens)
        usage = {"prompt_tokens": sum(lengths), "total_tokens": sum(lengths), "completion_tokens": 0}
        return httpx.Response(200, json={"data": data, "usage": usage})

    return httpx.MockTransport(handle)


async def test_base64_and_float_vectors_are_the_same_doubles() -> None:
    """vLLM's two encodings of one float32 tensor give bit-identical normalised vectors, and they are the doubles
    of the Python loop the numpy normalisation replaced (squares summed left to right, then x / norm)."""
    rng = np.random.default_rng(3)
    tensors = [rng.normal(size=768).astype(np.float32) * scale for scale in (1e-3, 1.0, 40.0)]
    tensors.append(np.zeros(768, dtype=np.float32))

    def upstream(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"data": [{"id": "e5", "owned_by": "vllm"}]})
        body = json.loads(request.content)
        picked = [tensors[int(t)] if t.isdigit() else tensors[1] for t in body["input"]]
        data = [{"index": i, "embedding": vllm_vector(t.tolist(), body)} for i, t in enumerate(picked)]
        return httpx.Response(200, json={"data": data, "usage": {"prompt_tokens": 1}})

    texts = [str(i) for i in range(len(tensors))]
    got = []
    for fmt in (True, False):
        embedder = OpenAIEmbedder("http://up/v1", "e5", transport=httpx.MockTransport(upstream), base64=fmt)
        await embedder.start()
        got.append((await embedder.embed_counted(texts)).vectors)
        await embedder.aclose()
    for vectors in got:  # each row owns its memory: a cached row must not keep its call's other vectors alive
        assert all(v.flags.owndata for v in vectors)
    for tensor, b64, floats in zip(tensors, *got, strict=True):
        assert b64.dtype == floats.dtype == np.float64 and b64.tobytes() == floats.tobytes()
        acc = 0.0
        for x in tensor.tolist():
            acc += x * x
        norm = math.sqrt(acc) or 1.0
        assert b64.tolist() == [x / norm for x in tensor.tolist()]


async def test_a_vector_that_is_not_base64_float32_is_an_engine_error() -> None:
    for bad, message in (("not base64!", "not base64"), (base64.b64encode(b"12345").decode(), "5 bytes")):

        def upstream(request: httpx.Request, bad: str = bad) -> httpx.Response:
            if request.url.path == "/v1/models":
                return httpx.Response(200, json={"data": [{"id": "e5", "owned_by": "vllm"}]})
            return httpx.Response(200, json={"data": [{"index": 0, "embedding": bad}]})

        embedder = OpenAIEmbedder("http://up/v1", "e5", transport=httpx.MockTransport(upstream), startup_timeout_s=1)
        with pytest.raises(EngineError, match=message):
            await embedder.start()
        await embedder.aclose()


def test_share_tokens_splits_a_total_by_length_and_keeps_the_sum() -> None:
    assert share_tokens(10, [1, 1]) == [5, 5]
    assert share_tokens(10, [3, 1]) == [8, 2]  # 7.5 / 2.5: one remainder of 0.5 goes to the first
    assert share_tokens(7, [5]) == [7] and share_tokens(0, [4, 2]) == [0, 0] and share_tokens(5, []) == []
    assert share_tokens(3, [0, 0, 0]) == [1, 1, 1]  # empty texts: an even split
    for total, weights in ((101, [3, 9, 27, 1]), (1, [5, 5, 5]), (1000, [7] * 13)):
        parts = share_tokens(total, weights)
        assert sum(parts) == total
        assert all(abs(p - total * w / sum(weights)) < 1 for p, w in zip(parts, weights, strict=True))


async def test_embedder_counts_each_texts_tokens_from_the_upstreams_usage() -> None:
    """vLLM reports one prompt_tokens per call: a one-text call is exact, a call of many is shared by length,
    the counts of a call sum to what vLLM reported, and a refused text counts 0 (nothing was read)."""
    seen: list[dict[str, Any]] = []
    embedder = OpenAIEmbedder(
        "http://up/v1", "e5", transport=refusing_embeddings(seen), startup_timeout_s=1, truncate=False
    )
    await embedder.start()
    alone = await embedder.embed_counted(["one two three"])
    assert list(alone.tokens) == [3]
    texts = ["a b", "c d e f", "g h i j k l", "w " * 3000]
    counted = await embedder.embed_counted(texts)
    assert isinstance(counted.vectors[3], MaxTokensExceeded) and counted.tokens[3] == 0
    assert sum(counted.tokens[:3]) == 2 + 4 + 6  # the sums of the calls that embedded them (split until refused)
    assert all(isinstance(n, int) and n > 0 for n in counted.tokens[:3])
    together = await embedder.embed_counted(texts[:3])
    assert list(together.tokens) == [2, 4, 6]  # 12 tokens shared by 3, 7 and 11 characters, largest remainder
    await embedder.aclose()


async def test_embedder_asks_vllm_to_truncate_and_no_one_else() -> None:
    seen: list[dict[str, Any]] = []
    texts = ["w " * 3000, *(f"short {i}" for i in range(63))]
    vllm = OpenAIEmbedder("http://up/v1", "e5", transport=refusing_embeddings(seen), startup_timeout_s=1)
    await vllm.start()
    vectors = await vllm.embed(texts)
    assert all(b["truncate_prompt_tokens"] == -1 for b in seen) and len(seen) == 2  # the probe, then one call
    assert all(b["encoding_format"] == "base64" for b in seen)  # vectors as float32 bytes from vLLM
    assert vectors[0][0] / vectors[0][1] == pytest.approx(512) and len(vectors) == 64
    seen.clear()
    other = OpenAIEmbedder(
        "http://up/v1", "e5", transport=refusing_embeddings(seen, owner="someone"), startup_timeout_s=1
    )
    await other.start()
    assert other.truncate is False and "truncate_prompt_tokens" not in seen[-1]
    assert other.base64 is False and "encoding_format" not in seen[-1]
    for e in (vllm, other):
        await e.aclose()


async def test_a_text_the_upstream_refuses_fails_only_its_own_row() -> None:
    seen: list[dict[str, Any]] = []
    embedder = OpenAIEmbedder(
        "http://up/v1", "e5", transport=refusing_embeddings(seen), startup_timeout_s=1, truncate=False
    )
    await embedder.start()
    texts = [f"short {i}" for i in range(64)]
    texts[40] = "w " * 3000
    rows = await embedder.embed_rows(texts)
    assert isinstance(rows[40], MaxTokensExceeded) and rows[40].message == "max tokens of 512 exceeded"
    assert all(isinstance(r, np.ndarray) and r.shape == (2,) for i, r in enumerate(rows) if i != 40)
    assert len(seen) <= 1 + 1 + 2 * 6  # the probe, the refused call, then halves down to the one text
    with pytest.raises(MaxTokensExceeded):  # embed() (the /v1/embeddings route) fails as a whole
        await embedder.embed(texts)
    await embedder.aclose()


async def test_embedder_with_wrong_dimension_stops_app_start() -> None:
    embedder = OpenAIEmbedder(
        "http://up/v1", "e5", dimension=768, transport=embedding_upstream(8, []), startup_timeout_s=1
    )
    await embedder.start()
    settings = Settings.load(overrides={"engine": {"kind": "fake"}})
    settings.embeddings = [EmbeddingSettings(kind="openai", model="e5", upstream="http://up/v1", dimension=768)]
    with pytest.raises(ConfigError, match="gives 8-d vectors"):
        _embedder_names(settings, [embedder])
    await embedder.aclose()


async def test_embedder_rejects_a_vector_of_another_length_later() -> None:
    seen: list[Any] = []
    embedder = OpenAIEmbedder("http://up/v1", "e5", transport=embedding_upstream(8, seen), startup_timeout_s=1)
    await embedder.start()
    embedder.dimension = 16  # as if the upstream had been swapped for another model since start-up
    with pytest.raises(EngineError, match="returned a 8-d vector; 16 expected"):
        await embedder.embed(["a"])
    await embedder.aclose()
