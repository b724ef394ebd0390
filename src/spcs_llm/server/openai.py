"""The OpenAI wire format: ``POST /v1/chat/completions`` (plain and SSE, with logprobs), ``POST /v1/embeddings``,
``GET /v1/models``, and vLLM's ``POST /tokenize``, so that another spcs-llm can use this one as its upstream.

The same chat path also answers the seed project's ``QWEN_COMPLETE`` service function: a body with a
``data`` key is a Snowflake batch whose rows each carry one OpenAI chat request (a JSON string or object), and
each row's answer is the assistant text.
"""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, Literal

import numpy as np
import orjson
from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..engines.base import ChatRequest, Message, TokenLogprob
from ..errors import InvalidInput, SpcsLlmError
from ..functions import Overload, Runtime, SqlFunction
from ..functions.registry import RowJob, json_arg
from ..usage import meter as usage_meter
from . import snowflake

router = APIRouter()


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="allow")  # OpenAI adds fields often; unknown ones are ignored


class ChatMessageIn(_Lenient):
    role: Literal["system", "user", "assistant", "developer", "tool"] = "user"
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.get("text", "") for p in self.content if p.get("type") == "text")
        return self.content or ""


class ChatCompletionIn(_Lenient):
    model: str | None = None
    messages: list[ChatMessageIn] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = Field(1, ge=1, le=1)
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)


def _schema(fmt: dict[str, Any] | None) -> str | None:
    kind = (fmt or {}).get("type", "text")
    if kind == "json_object":
        return ChatRequest.schema_key({"type": "object"})
    if kind == "json_schema":
        return ChatRequest.schema_key(((fmt or {}).get("json_schema") or {}).get("schema") or {"type": "object"})
    if kind != "text":
        raise InvalidInput(f"unsupported response_format type {kind!r}", param="response_format")
    return None


def to_request(body: ChatCompletionIn, rt: Runtime) -> ChatRequest:
    role = {"developer": "system"}
    stop = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
    wanted = body.max_completion_tokens or body.max_tokens or rt.max_output_tokens
    return ChatRequest(
        messages=tuple(Message(role.get(m.role, m.role), m.text()) for m in body.messages),
        max_tokens=min(wanted, rt.max_output_tokens),
        temperature=1.0 if body.temperature is None else body.temperature,  # OpenAI's default
        top_p=1.0 if body.top_p is None else body.top_p,
        json_schema=_schema(body.response_format),
        stop=stop,
        seed=body.seed,
        # logprobs without top_logprobs still needs each token's own log-probability: ask for one alternative
        top_logprobs=max(1, body.top_logprobs or 0) if body.logprobs else 0,
    )


def parse_chat(raw: Any) -> ChatCompletionIn:
    try:
        return ChatCompletionIn.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(map(str, first["loc"])) or "body"
        raise InvalidInput(f"invalid chat request: {where}: {first['msg']}", param=where) from exc


def _status(exc: SpcsLlmError) -> int:
    """The status on this wire: an error may name its own (``budget exceeded`` is 429 here, 402 elsewhere)."""
    return getattr(exc, "openai_status", exc.status)


def error_body(exc: SpcsLlmError) -> dict[str, Any]:
    """The one OpenAI error body."""
    return {"error": {"message": exc.message, "type": exc.kind, "param": exc.param, "code": _status(exc)}}


def error_response(exc: SpcsLlmError) -> Response:
    return Response(orjson.dumps(error_body(exc)), status_code=_status(exc), media_type="application/json")


# -- the seed's QWEN_COMPLETE envelope: each row is one OpenAI chat request, each answer the assistant text --


def _seed_row(rt: Runtime, args: list[Any]) -> RowJob:
    body = parse_chat(json_arg(args[0], dict, "the chat request"))
    if body.model is not None:
        rt.models.resolve(body.model)
    request = to_request(body, rt)

    async def run() -> str:
        return (await rt.scheduler.chat(request)).text

    return run


SEED_CHAT = SqlFunction("qwen_complete", (Overload((("request", "VARCHAR"),), "VARCHAR", _seed_row),))


@router.post("/v1/chat/completions")
async def chat_completions(request: Request) -> Response:
    request.state.wire = "openai"
    raw = await request.body()
    try:
        limit = int(request.app.state.settings.server.max_request_mb * 2**20)
        payload = orjson.loads(snowflake.decompress(raw, request.headers.get("content-encoding"), limit))
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"request body is not JSON: {exc}") from exc
    if isinstance(payload, dict) and "data" in payload:
        request.state.wire = "snowflake"
        return await snowflake.respond(SEED_CHAT, request, snowflake.rows_of(payload))
    rt: Runtime = request.app.state.require_runtime()
    body = parse_chat(payload)
    served = rt.models.resolve(body.model)
    chat = to_request(body, rt)
    attribution = _attribute(request, "chat.completions")
    if body.stream:
        if rt.scheduler.meter is not None:  # refuse before the 200 status line, not inside the stream
            rt.scheduler.meter.check(rt.scheduler.engine.model_name)
        _count_rows(request, attribution, True)
        include_usage = bool((body.stream_options or {}).get("include_usage"))
        return StreamingResponse(_sse(rt, chat, served, include_usage), media_type="text/event-stream")
    ok = False
    try:
        result = await rt.scheduler.chat(chat)
        ok = True
    finally:
        _count_rows(request, attribution, ok)
    usage = result.usage
    choice: dict[str, Any] = {
        "index": 0,
        "message": {"role": "assistant", "content": result.text},
        "finish_reason": result.finish_reason,
    }
    if body.logprobs:
        choice["logprobs"] = _logprobs(result.logprobs, body.top_logprobs or 0)
    return Response(
        orjson.dumps(
            {
                "id": f"chatcmpl-{uuid.uuid4().hex}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": served,
                "choices": [choice],
                "usage": {
                    "prompt_tokens": usage.prompt_tokens,
                    "completion_tokens": usage.completion_tokens,
                    "total_tokens": usage.total_tokens,
                },
            }
        ),
        media_type="application/json",
    )


def _attribute(request: Request, function: str) -> usage_meter.Attribution:
    """Count this request's work against its caller (the API key's name, else anonymous)."""
    attribution = usage_meter.from_api(request.state, function)
    usage_meter.current.set(attribution)
    return attribution


def _count_rows(request: Request, attribution: usage_meter.Attribution, result_ok: bool, rows: int = 1) -> None:
    service = request.app.state.usage
    if service is not None:
        service.meter.rows(attribution, rows if result_ok else 0, 0 if result_ok else rows)


def _logprobs(tokens: tuple[TokenLogprob, ...], top: int) -> dict[str, Any]:
    """OpenAI's ``choices[i].logprobs`` from the engine's TokenLogprobs (``top`` alternatives per token)."""

    def entry(token: str, logprob: float) -> dict[str, Any]:
        return {"token": token, "logprob": logprob, "bytes": list(token.encode())}

    return {
        "content": [
            {**entry(t.token, t.logprob), "top_logprobs": [entry(a, lp) for a, lp in t.top[:top]]} for t in tokens
        ]
    }


async def _sse(rt: Runtime, chat: ChatRequest, served: str, include_usage: bool) -> AsyncIterator[bytes]:
    base = {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": served,
    }

    def event(obj: dict[str, Any]) -> bytes:
        return b"data: " + orjson.dumps({**base, **obj}) + b"\n\n"

    yield event({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]})
    try:
        async for delta in rt.scheduler.stream(chat):
            if delta.text or delta.finish_reason:
                content = {"content": delta.text} if delta.text else {}
                yield event({"choices": [{"index": 0, "delta": content, "finish_reason": delta.finish_reason}]})
            if delta.usage is not None and include_usage:
                u = delta.usage
                yield event(
                    {
                        "choices": [],
                        "usage": {
                            "prompt_tokens": u.prompt_tokens,
                            "total_tokens": u.total_tokens,
                            "completion_tokens": u.completion_tokens,
                        },
                    }
                )
    except SpcsLlmError as exc:  # the status line is sent already: report the error in the stream
        yield b"data: " + orjson.dumps(error_body(exc)) + b"\n\n"
    yield b"data: [DONE]\n\n"


@router.get("/v1/models")
async def list_models(request: Request) -> Response:
    rt: Runtime = request.app.state.require_runtime()
    created = int(request.app.state.started_at)
    window = rt.scheduler.engine.context_window  # vLLM's field: an upstream client learns the context window here
    data = [
        {
            "id": name,
            "object": "model",
            "created": created,
            "owned_by": "spcs-llm",
            "root": real,
            "max_model_len": window,
        }
        for name, real in rt.models.names()
    ]
    return Response(orjson.dumps({"object": "list", "data": data}), media_type="application/json")


class EmbeddingsIn(_Lenient):
    model: str
    input: str | list[str] = Field(min_length=1)
    encoding_format: Literal["float", "base64"] = "float"  # the openai SDK asks for base64 by default


@router.post("/v1/embeddings")
async def embeddings(request: Request) -> Response:
    rt: Runtime = request.app.state.require_runtime()
    body = _validated(EmbeddingsIn, await request.body(), "embeddings request")
    embedder = rt.embedders.resolve(body.model)
    texts = [body.input] if isinstance(body.input, str) else body.input
    vectors, tokens = await embed_counted(request, "embeddings", embedder, texts)
    if body.encoding_format == "base64":
        data = [{"object": "embedding", "index": i, "embedding": _base64_floats(v)} for i, v in enumerate(vectors)]
    else:
        # as doubles: a float32 row serialised as float32 would print other (shorter) numbers than its value
        data = [{"object": "embedding", "index": i, "embedding": v.astype(np.float64)} for i, v in enumerate(vectors)]
    return Response(
        orjson.dumps(
            {
                "object": "list",
                "data": data,
                "model": embedder.model_name,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            },
            option=orjson.OPT_SERIALIZE_NUMPY,  # the scheduler's vectors stay numpy arrays to the wire
        ),
        media_type="application/json",
    )


async def embed_counted(request: Request, function: str, embedder: Any, texts: list[str]) -> tuple[list[Any], int]:
    """The vectors of ``texts`` through the scheduler (its cache, shared passes, budgets and metering, counted
    against the caller as ``function``) and their input tokens in all (cached texts count their tokens too)."""
    rt: Runtime = request.app.state.require_runtime()
    attribution = _attribute(request, function)
    tokens: list[int] = []
    try:
        vectors = await rt.scheduler.embed_texts(embedder, texts, tokens)
    except SpcsLlmError:
        _count_rows(request, attribution, False, len(texts))
        raise
    _count_rows(request, attribution, True, len(texts))
    return vectors, sum(tokens)


def _base64_floats(vector: np.ndarray) -> str:
    """OpenAI's base64 form: the vector as little-endian float32 bytes."""
    return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()


class TokenizeIn(_Lenient):
    model: str | None = None
    prompt: str | None = None
    content: str | None = None  # llama-server's name for the text


@router.post("/tokenize")
async def tokenize(request: Request) -> Response:
    """vLLM's shape: ``{"model", "prompt"}`` -> ``{"count", "max_model_len"}``. Token ids are not returned: the
    engine interface counts tokens and does not expose them."""
    request.state.wire = "openai"
    rt: Runtime = request.app.state.require_runtime()
    body = _validated(TokenizeIn, await request.body(), "tokenize request")
    text = body.prompt if body.prompt is not None else body.content
    if text is None:
        raise InvalidInput("tokenize request: prompt is required", param="prompt")
    counter = rt.scheduler.engine if body.model is None else rt.token_counter(body.model)
    count = await counter.count_tokens(text)
    window = getattr(counter, "context_window", None) or getattr(counter, "max_input_tokens", None)
    return Response(orjson.dumps({"count": count, "max_model_len": window}), media_type="application/json")


def _validated(model: type[BaseModel], raw: bytes, what: str) -> Any:
    try:
        return model.model_validate(orjson.loads(raw))
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"{what}: body is not JSON: {exc}") from exc
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(map(str, first["loc"])) or "body"
        raise InvalidInput(f"invalid {what}: {where}: {first['msg']}", param=where) from exc
