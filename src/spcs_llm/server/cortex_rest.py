"""The Cortex REST wire format (snowflake-contract.md §5): what snowflake-ml-python's ``complete()`` and other Cortex
REST clients call.

- ``POST /api/v2/cortex/inference:complete``: ``{"model", "messages", "temperature", "top_p", "max_tokens",
  "response_format", "guardrails", "stream"}``. Streamed (the default, as Cortex) as server-sent events, one per
  piece of text: ``{"id", "created", "model", "choices": [{"delta": {"content", "content_list"}}], "usage"}``; the
  usage object is ``{}`` until the last event, which carries the totals and ``finish_reason``. No ``[DONE]`` line:
  snowflake-ml-python parses every event as JSON. ``"stream": false`` answers one JSON object instead.
- ``POST /api/v2/cortex/inference:embed``: ``{"text": [...], "model"}`` → ``{"data": [{"object": "embedding",
  "index": i, "embedding": [[...]]}], "model", "usage": {"total_tokens"}}``.
- ``POST /api/v2/cortex/v1/chat/completions``: the OpenAI-compatible route, answered by ``server/openai.py``.

Errors: the status of the project's exception tree (400 unknown model / invalid options, 429 too many requests,
503 inference timed out) with a JSON body ``{"message", "code", "request_id"}``; an error after the stream began is
an event ``{"error": {"message", "code"}}``, which snowflake-ml-python raises as ``MidStreamException``.

The Cortex semantics (model names, option ranges, the output cap) are those of ``functions/complete.py`` and
``functions/embed.py``; the engine work goes through the scheduler like every other route.
"""

from __future__ import annotations

import hmac
import os
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, cast

import orjson
from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import StreamingResponse

from ..engines.base import ChatRequest, StreamDelta, Usage
from ..errors import InvalidInput, InvalidOptions, InvalidPrompt, SpcsLlmError
from ..functions import Runtime
from ..functions.complete import chat_request, parse_messages, parse_options
from . import openai

PREFIX = "/api/v2/cortex"
REQUEST_ID = "X-Snowflake-Request-Id"
MAX_EMBED_TEXTS = 1280  # Cortex's limits for one inference:embed call
MAX_EMBED_CHARS = 4096
OPTION_FIELDS = ("temperature", "top_p", "max_tokens", "response_format")


class NotAuthorized(SpcsLlmError):
    """A REST call without the configured API key (Cortex answers ``Not Authorized``)."""

    kind = "not_authorized"

    def __init__(self, status: int) -> None:
        super().__init__("Not Authorized")
        self.status = status


def authorization_token(header: str | None) -> str | None:
    """The credential in an ``Authorization`` header, in either form Snowflake clients send:
    ``Bearer <token>`` (REST docs, PATs, the OpenAI SDK) or ``Snowflake Token="<token>"`` (snowflake-ml-python).
    None when the header is absent or in neither form."""
    if not header:
        return None
    scheme, _, rest = header.strip().partition(" ")
    rest = rest.strip()
    if scheme.lower() == "bearer" and rest:
        return rest
    if scheme.lower() == "snowflake":
        name, _, value = rest.partition("=")
        value = value.strip()
        if name.strip().lower() == "token" and len(value) >= 2 and value[0] == value[-1] == '"':
            return value[1:-1] or None
    return None


def configured_key(request: Request) -> str | None:
    """The API key REST callers must present, or None when none is configured (then, as behind SPCS ingress, which
    authenticates callers itself, any caller is accepted). Read from ``settings.server.api_key`` when the settings
    have it, else from ``SPCS_LLM_API_KEY``."""
    server = getattr(request.app.state.settings, "server", None)
    return getattr(server, "api_key", None) or os.environ.get("SPCS_LLM_API_KEY") or None


async def check_authorization(request: Request) -> None:
    """Every Cortex REST route: the key, when one is configured (401 none given, 403 another). The error body's
    format follows the path (``app._wire``): Cortex's under /api/v2/cortex, OpenAI's under /api/v2/cortex/v1."""
    key = configured_key(request)
    if key is None:
        return
    token = authorization_token(request.headers.get("authorization"))
    if token is None:
        raise NotAuthorized(401)
    if not hmac.compare_digest(token.encode(), key.encode()):
        raise NotAuthorized(403)


router = APIRouter(prefix=PREFIX, dependencies=[Depends(check_authorization)])
router.add_api_route("/v1/chat/completions", openai.chat_completions, methods=["POST"])


def error_body(exc: SpcsLlmError, request_id: str) -> dict[str, Any]:
    """The one Cortex REST error body."""
    return {"message": exc.message, "code": exc.kind, "request_id": request_id}


def error_response(exc: SpcsLlmError) -> Response:
    request_id = uuid.uuid4().hex
    headers = {REQUEST_ID: request_id}
    if exc.status == 429:
        headers["Retry-After"] = "1"
    return Response(
        orjson.dumps(error_body(exc, request_id)),
        status_code=exc.status,
        media_type="application/json",
        headers=headers,
    )


async def _json_body(request: Request) -> dict[str, Any]:
    try:
        body = orjson.loads(await request.body())
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"request body is not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise InvalidInput("request body must be a JSON object")
    return body


def _message_text(message: Any) -> Any:
    """A Cortex message's ``content``, or the text items of its ``content_list`` joined."""
    if isinstance(message, dict) and "content" not in message and isinstance(message.get("content_list"), list):
        parts = message["content_list"]
        if any(not isinstance(p, dict) or p.get("type") != "text" for p in parts):
            raise InvalidPrompt("content_list items other than text are not supported")
        return {**message, "content": "".join(str(p.get("text", "")) for p in parts)}
    return message


def to_request(body: dict[str, Any], rt: Runtime) -> ChatRequest:
    """The engine request for an inference:complete body, validated as COMPLETE validates its arguments."""
    if body.get("tools") or body.get("tool_choice"):
        raise InvalidOptions("tools are not supported")
    guardrails = body.get("guardrails")
    if isinstance(guardrails, dict) and guardrails.get("enabled"):
        raise InvalidOptions("guardrails must be disabled: this service runs no guard model")
    if body.get("max_output_tokens") is not None and body.get("max_tokens") is None:
        body = {**body, "max_tokens": body["max_output_tokens"]}
    options = parse_options({k: body[k] for k in OPTION_FIELDS if body.get(k) is not None})
    return chat_request(rt, parse_messages([_message_text(m) for m in body.get("messages") or []]), options)


@router.post("/inference:complete")
async def complete(request: Request) -> Response:
    rt: Runtime = request.app.state.require_runtime()
    body = await _json_body(request)
    served = rt.models.resolve(body.get("model"))
    chat = to_request(body, rt)
    request_id = uuid.uuid4().hex
    base = {"id": request_id, "created": int(time.time()), "model": served}
    headers = {REQUEST_ID: request_id}
    attribution = openai._attribute(request, "inference:complete")  # usage: the API key's name, else anonymous
    if body.get("stream", True) is False:
        ok = False
        try:
            result = await rt.scheduler.chat(chat)
            ok = True
        finally:
            openai._count_rows(request, attribution, ok)
        choice = {
            "message": {"content": result.text, "content_list": [{"type": "text", "text": result.text}]},
            "finish_reason": result.finish_reason,
        }
        return Response(
            orjson.dumps({**base, "choices": [choice], "usage": _usage(result.usage)}),
            media_type="application/json",
            headers=headers,
        )
    deltas = cast(AsyncGenerator[StreamDelta], rt.scheduler.stream(chat))  # an async generator function
    try:  # an error before the first token (unknown model, too long, overload, budget) gets its own status
        first = await anext(deltas)
    except StopAsyncIteration:
        first = StreamDelta(finish_reason="stop")
    except SpcsLlmError:
        openai._count_rows(request, attribution, False)
        raise
    openai._count_rows(request, attribution, True)
    # exactly text/event-stream: snowflake-ml-python compares the Content-Type verbatim (no "; charset=")
    return StreamingResponse(_events(first, deltas, base), headers={**headers, "Content-Type": "text/event-stream"})


def _usage(u: Usage) -> dict[str, int]:
    return {"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens, "total_tokens": u.total_tokens}


async def _chain(first: StreamDelta, rest: AsyncGenerator[StreamDelta]) -> AsyncIterator[StreamDelta]:
    yield first
    async for delta in rest:
        yield delta


async def _events(first: StreamDelta, rest: AsyncGenerator[StreamDelta], base: dict[str, Any]) -> AsyncIterator[bytes]:
    def event(obj: dict[str, Any]) -> bytes:
        return b"data: " + orjson.dumps(obj) + b"\n\n"

    try:
        async for delta in _chain(first, rest):
            if not (delta.text or delta.finish_reason or delta.usage):
                continue
            choice: dict[str, Any] = {
                "delta": {"content": delta.text, "content_list": [{"type": "text", "text": delta.text}]}
            }
            if delta.finish_reason:
                choice["finish_reason"] = delta.finish_reason
            usage = _usage(delta.usage) if delta.usage is not None else {}
            yield event({**base, "choices": [choice], "usage": usage})
    except SpcsLlmError as exc:  # the status line is sent already: report the error in the stream
        yield event({"error": {"message": exc.message, "code": exc.kind}})
    finally:  # a client that went away mid-stream: give the engine place back now, not at garbage collection
        await rest.aclose()


@router.post("/inference:embed")
async def embed(request: Request) -> Response:
    rt: Runtime = request.app.state.require_runtime()
    body = await _json_body(request)
    embedder = rt.embedders.resolve(body.get("model"))
    texts = body.get("text")
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise InvalidInput("text must be a non-empty array of strings", param="text")
    if len(texts) > MAX_EMBED_TEXTS:
        raise InvalidInput(f"text has {len(texts)} entries; at most {MAX_EMBED_TEXTS} are allowed", param="text")
    if any(len(t) > MAX_EMBED_CHARS for t in texts):
        raise InvalidInput(f"a text is longer than {MAX_EMBED_CHARS} characters", param="text")
    vectors, tokens = await openai.embed_counted(request, "inference:embed", embedder, texts)
    data = [{"object": "embedding", "index": i, "embedding": [v]} for i, v in enumerate(vectors)]
    return Response(
        orjson.dumps(
            {"data": data, "model": embedder.model_name, "usage": {"total_tokens": tokens}},
            option=orjson.OPT_SERIALIZE_NUMPY,
        ),  # the scheduler's vectors stay numpy arrays to the wire
        media_type="application/json",
        headers={REQUEST_ID: uuid.uuid4().hex},
    )
