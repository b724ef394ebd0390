"""Any OpenAI-compatible server as the engine: vLLM, SGLang, llama.cpp's ``llama-server``, Ollama, or another
spcs-llm's ``/v1``.

One pooled ``httpx.AsyncClient`` per engine, requests bounded by ``max_concurrency``, and one function,
:func:`upstream_error`, that turns every upstream failure into the project's error tree: a refused connection
or a 5xx is 503 (Snowflake retries), a timeout is 503 too, 429 stays 429, a context-length 400 is
``max tokens of <n> exceeded``, any other 400 is a row error naming the upstream's message.

Output that does not fit is clamped, on every upstream (vLLM 0.10-0.31 answer 400 when prompt + ``max_tokens``
is over ``max_model_len`` instead of stopping where the context is full): the request is sent as asked; when the
upstream refuses it with a context error that names the prompt's token count, it is sent once more with
``max_tokens = context - prompt`` and the answer ends with ``finish_reason = "length"`` where the output ran out.
Only a prompt that alone fills the context is ``max tokens of <n> exceeded``. Rows that fit pay nothing; a row
that does not pays one refused round trip (``bench/bench_clamp.py``).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import math
import os
import re
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from typing import Any, Literal

import httpx
import numpy as np
import orjson

from .. import __version__
from ..errors import (
    EngineError,
    EngineTimeout,
    EngineUnavailable,
    InvalidInput,
    MaxTokensExceeded,
    Overloaded,
    RowError,
    SchemaValidationFailed,
    SpcsLlmError,
)
from ..models.catalog import catalog_entry
from .base import ChatRequest, ChatResult, Embedded, Embedder, Engine, Message, StreamDelta, TokenLogprob, usage_of
from .labels import NextToken, first_alternatives, prefill_messages
from .wire import Answer, EngineTransport

StructuredField = Literal["structured_outputs", "response_format"]
DEFAULT_CONTEXT_WINDOW = 4096

# "maximum context length is 2048 tokens" (vLLM, OpenAI), "maximum model length of 4096" (vLLM's prompt check),
# "max tokens of 2048 exceeded" (spcs-llm), "context size (2048)" and friends (llama-server).
_CONTEXT_LIMIT = re.compile(
    r"maximum context length is (\d+)|maximum model length (?:of |is )?(\d+)|max tokens of (\d+) exceeded"
    r"|context (?:size|window|length)\D{0,20}(\d+)",
    re.IGNORECASE,
)
_CONTEXT_WORDS = ("context length", "context size", "context window", "maximum model length", "max tokens of")
# The prompt's token count in a context error: vLLM 0.10-0.17 "your request has M input tokens"
# (0.11.0:vllm/entrypoints/openai/serving_engine.py:674-688), 0.18-0.31 "your prompt contains [at least] M input
# tokens" (0.18.0:vllm/renderers/params.py:412-430), OpenAI's older "(M in the messages, X in the completion)".
_PROMPT_TOKENS = re.compile(
    r"your request has (\d+) input tokens|your prompt contains (?:at least )?(\d+) input tokens"
    r"|\((\d+) in the messages",
    re.IGNORECASE,
)
# vLLM's structured-output refusals (0.11.0:vllm/v1/structured_output/backend_guidance.py:243-245,
# backend_xgrammar.py:284-293): "Grammar error: ...", "Failed to transform json schema into a grammar: ...".
_SCHEMA_WORDS = ("schema", "grammar")
# What vLLM 0.11.0 sends as a stream event when its engine core dies mid-stream, with "code": 400
# (0.11.0:vllm/v1/engine/exceptions.py:12, serving_chat.py:1143-1149).
ENGINE_DEAD_MESSAGE = "EngineCore encountered an issue. See stack trace (above) for the root cause."
MIN_VLLM = (0, 11, 0)


class OutputDoesNotFit(MaxTokensExceeded):
    """A context error that names the prompt's size: the output budget can be clamped to ``room`` tokens."""

    def __init__(self, limit: int, prompt_tokens: int) -> None:
        super().__init__(limit)
        self.prompt_tokens = prompt_tokens

    @property
    def room(self) -> int:
        return self.limit - self.prompt_tokens


def clamped(body: Mapping[str, Any], exc: OutputDoesNotFit) -> dict[str, Any]:
    """``body`` with ``max_tokens`` cut to what the context leaves after the prompt; ``max tokens of <n>
    exceeded`` when the prompt alone fills it (or the upstream refused a budget that already fitted)."""
    if exc.room < 1 or exc.room >= int(body.get("max_tokens") or 0):
        raise MaxTokensExceeded(exc.limit) from exc
    return {**body, "max_tokens": exc.room}


def _error_object(body: Any) -> tuple[str, str, dict[str, Any]]:
    """(message, type, the error object) from any of the shapes servers use: OpenAI's ``{"error": {...}}``,
    vLLM's older flat ``{"object": "error", "message": ...}``, Ollama's ``{"error": "text"}``, FastAPI's
    ``{"detail": ...}``, or plain text."""
    if isinstance(body, Mapping):
        err = body.get("error", body)
        if isinstance(err, str):
            return err, "", {}
        if isinstance(err, Mapping):
            message = err.get("message", err.get("detail", ""))
            return str(message if message != "" else json.dumps(err)[:500]), str(err.get("type") or ""), dict(err)
    return str(body)[:500], "", {}


def _context_limit(message: str, err: Mapping[str, Any], fallback: int) -> int | None:
    """The context window named by a context-length error, ``fallback`` when the message names none, or None
    when the error is not about context length."""
    if err.get("type") == "exceed_context_size_error" and isinstance(err.get("n_ctx"), int):
        return int(err["n_ctx"])  # llama-server says it as data
    if err.get("type") == "max_tokens_exceeded" or any(w in message.lower() for w in _CONTEXT_WORDS):
        match = _CONTEXT_LIMIT.search(message)
        return int(next(g for g in match.groups() if g)) if match else fallback
    return None


def upstream_error(
    *,
    status: int | None = None,
    body: Any = None,
    exc: BaseException | None = None,
    context_window: int = DEFAULT_CONTEXT_WINDOW,
    had_schema: bool = False,
) -> SpcsLlmError:
    """The one translation of an upstream failure (a transport exception, or an HTTP status with its body)."""
    if exc is not None:
        if isinstance(exc, httpx.TimeoutException):
            return EngineTimeout(f"upstream did not answer in time ({type(exc).__name__})")
        return EngineUnavailable(f"upstream unreachable: {type(exc).__name__}: {exc}")
    message, kind, err = _error_object(body)
    status = status or 500
    if status == 429 or kind == "overloaded":
        return Overloaded("upstream is overloaded")
    if status == 504 or kind == "engine_timeout":
        return EngineTimeout(f"upstream timed out: {message}")
    if status >= 500:
        return EngineUnavailable(f"upstream failed (HTTP {status}): {message}")
    if status in (401, 403):
        return EngineUnavailable(f"upstream refused our credentials (HTTP {status})")
    if status == 404 or kind == "unknown_model":  # our model is resolved locally: this is a configuration error
        return EngineUnavailable(f"upstream does not serve the configured model (HTTP {status}): {message}")
    limit = _context_limit(message, err, context_window)
    if limit is not None:
        prompt = _PROMPT_TOKENS.search(message)
        if prompt is not None:
            return OutputDoesNotFit(limit, int(next(g for g in prompt.groups() if g)))
        return MaxTokensExceeded(limit)
    if had_schema and (kind == "schema_validation_failed" or any(w in message.lower() for w in _SCHEMA_WORDS)):
        return SchemaValidationFailed()
    return InvalidInput(f"upstream rejected the request: {message}")


@contextmanager
def transport_errors() -> Iterator[None]:
    """Transport exceptions (refused, reset, timed out) become engine errors, through :func:`upstream_error`."""
    try:
        yield
    except httpx.HTTPError as exc:
        raise upstream_error(exc=exc) from exc


def stream_error(chunk: Mapping[str, Any], **translate: Any) -> SpcsLlmError:
    """An error event inside a stream. vLLM 0.11.0 labels every one ``code: 400``, its engine's death included
    (``serving_chat.py:1143-1149``): that one, or an event without a message, is a retryable 503."""
    raw = chunk.get("error")
    said = str((raw.get("message") if isinstance(raw, Mapping) else raw) or "").strip()
    if not said or ENGINE_DEAD_MESSAGE.split(".")[0] in said:
        return EngineUnavailable(f"upstream engine failed mid-stream: {said or 'no message'}")
    code = raw.get("code") if isinstance(raw, Mapping) else None
    return upstream_error(status=code if isinstance(code, int) else 500, body=chunk, **translate)


def parse_logprobs(choice: Mapping[str, Any]) -> tuple[TokenLogprob, ...]:
    """OpenAI's ``choices[i].logprobs.content`` (as vLLM, llama.cpp and spcs-llm return it) as TokenLogprobs."""
    content = (choice.get("logprobs") or {}).get("content") or ()
    return tuple(
        TokenLogprob(
            str(t.get("token", "")),
            float(t.get("logprob", -math.inf)),
            tuple((str(a.get("token", "")), float(a.get("logprob", -math.inf))) for a in t.get("top_logprobs") or ()),
        )
        for t in content
    )


def chat_body(
    request: ChatRequest, model: str | None, structured: StructuredField, *, stream: bool = False
) -> dict[str, Any]:
    """An OpenAI chat-completions body for ``request``; the JSON schema goes where the upstream reads it."""
    body: dict[str, Any] = {
        "messages": [{"role": m.role, "content": m.content} for m in request.messages],
        "max_tokens": request.max_tokens,
        "temperature": request.temperature,
        "top_p": request.top_p,
    }
    if model is not None:
        body["model"] = model
    if request.stop:
        body["stop"] = list(request.stop)
    if request.seed is not None:
        body["seed"] = request.seed
    if request.top_logprobs > 0:
        body["logprobs"] = True
        body["top_logprobs"] = request.top_logprobs
    if request.json_schema is not None:
        schema = _parsed_schema(request.json_schema)
        if structured == "structured_outputs":
            body["structured_outputs"] = {"json": schema}
        else:
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "output", "schema": schema, "strict": True},
            }
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body


def _parsed_schema(text: str) -> Any:
    """A schema's canonical JSON, parsed once for the rows of a query that all send it (read only: the body is
    serialised, never changed)."""
    schema = _SCHEMAS.get(text)
    if schema is None:
        if len(_SCHEMAS) >= 256:
            _SCHEMAS.clear()
        schema = _SCHEMAS[text] = json.loads(text)
    return schema


_SCHEMAS: dict[str, Any] = {}


def json_bytes(body: Mapping[str, Any]) -> bytes:
    """A request body as JSON: orjson (several times faster than json), or json for what orjson refuses (an
    integer beyond 64 bits in a user's schema)."""
    try:
        return orjson.dumps(body)
    except TypeError:
        return json.dumps(body).encode()


def server_root(upstream: str) -> str:
    """The server's root: vLLM and llama-server serve /health and /tokenize there, not under /v1."""
    base = upstream.rstrip("/")
    return base[: -len("/v1")] if base.endswith("/v1") else base


class _Upstream:
    """The pooled client, the concurrency bound and the request helpers shared by the engine and the embedder."""

    def __init__(
        self,
        upstream: str,
        *,
        concurrency: int,
        request_timeout: float,
        connect_timeout: float,
        api_key: str | None,
        transport: httpx.AsyncBaseTransport | None,
    ) -> None:
        self.url = upstream.rstrip("/")
        self.root = server_root(upstream)
        key = api_key or os.environ.get("SPCS_LLM_UPSTREAM_API_KEY")
        if key and any(c in key for c in "\r\n\0"):  # it would not be one header line; no client sends it
            raise EngineUnavailable(
                "the upstream API key holds a line break or NUL (read from a file with its newline?)"
            )
        timeout = httpx.Timeout(request_timeout, connect=connect_timeout, pool=None)
        auth = {"authorization": f"Bearer {key}"} if key else {}
        self.transport = transport or EngineTransport(concurrency)
        self.client = httpx.AsyncClient(
            base_url=self.url + "/", timeout=timeout, headers=auth, transport=self.transport
        )
        self.slots = asyncio.Semaphore(concurrency)
        self.tokenize_missing = False
        self._post_headers = {
            **auth,
            "accept": "application/json",
            "accept-encoding": "identity",  # nothing to decompress on loopback
            "content-type": "application/json",
            "user-agent": f"spcs-llm/{__version__}",
        }
        self._timeouts = timeout.as_dict()
        self._extensions = {"timeout": self._timeouts}

    async def send(self, path: str, body: Mapping[str, Any]) -> httpx.Response | Answer:
        """POST ``body`` as JSON to ``path`` (relative to /v1, or an absolute URL): the response, read and closed.

        The engine's per-row requests (a chat, a label step, a batch of texts to embed, a text to count) go to the
        transport itself, not through ``httpx.AsyncClient``: the client's URL merging, cookie jar, auth and
        redirect steps cost ~0.2 ms a request (bench/bench_engine_hop.py) and do nothing here (one fixed upstream,
        no cookies, no redirects followed). The request carries the client's credentials and timeouts. On the
        engines' own transport (every engine's but a test's) it skips httpx's request and response streams too,
        and to a plain ``http://`` upstream (vLLM beside us) aiohttp's request as well (engines/h1.py)."""
        url, content = path if "://" in path else f"{self.url}/{path}", json_bytes(body)
        async with self.slots:
            with transport_errors():
                if isinstance(self.transport, EngineTransport):  # without httpx's request and response streams
                    return await self.transport.post(url, self._post_headers, content, self._timeouts)
                headers, extensions = self._post_headers, self._extensions
                request = httpx.Request("POST", url, headers=headers, content=content, extensions=extensions)
                response = await self.transport.handle_async_request(request)  # another transport (tests' mocks)
                try:
                    await response.aread()
                finally:
                    await response.aclose()
        return response

    async def post(self, path: str, body: Mapping[str, Any], **translate: Any) -> Any:
        """:meth:`send`, and the answer's JSON, or the translated error."""
        return _json_or_raise(await self.send(path, body), **translate)

    async def models(self) -> list[dict[str, Any]]:
        with transport_errors():
            response = await self.client.get("models")
        return list(_json_or_raise(response).get("data") or [])

    async def wait_ready(self, timeout_s: float, what: str) -> list[dict[str, Any]]:
        """Poll /v1/models until the upstream answers (it may be starting beside us), or fail after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                return await self.models()
            except EngineError as exc:
                if time.monotonic() >= deadline:
                    raise EngineUnavailable(
                        f"{what} at {self.url} is not ready after {timeout_s:.0f}s: {exc.message}"
                    ) from exc
            await asyncio.sleep(0.5)

    async def count_tokens(self, model: str, text: str) -> int | None:
        """vLLM's /tokenize (``prompt`` -> ``count``) or llama-server's (``content`` -> ``tokens``), at the root;
        None when the upstream has no /tokenize (Ollama, SGLang)."""
        if self.tokenize_missing:
            return None
        response = await self.send(f"{self.root}/tokenize", {"model": model, "prompt": text, "content": text})
        if response.status_code in (404, 405):
            self.tokenize_missing = True
            return None
        out = _json_or_raise(response)
        return int(out["count"]) if "count" in out else len(out.get("tokens") or ())

    async def vllm_version(self, models: Sequence[Mapping[str, Any]]) -> str | None:
        """The version of a vLLM upstream (its /v1/models entries say ``owned_by: "vllm"``, and ``GET /version``
        answers ``{"version": ...}``: 0.11.0:vllm/entrypoints/openai/api_server.py:475-478); None for others."""
        if not any(m.get("owned_by") == "vllm" for m in models):
            return None
        try:
            response = await self.client.get(f"{self.root}/version", timeout=5.0)
            version = response.json().get("version") if response.status_code == 200 else None
        except (httpx.HTTPError, ValueError, AttributeError):
            return None
        return str(version) if version else None

    async def healthy(self) -> bool:
        """/health at the root (vLLM, llama-server, spcs-llm); where there is none (Ollama), /v1/models."""
        try:
            response = await self.client.get(f"{self.root}/health", timeout=5.0)
            if response.status_code == 404:
                response = await self.client.get("models", timeout=5.0)
            return response.status_code == 200
        except httpx.HTTPError:
            return False


def version_tuple(version: str) -> tuple[int, int, int] | None:
    """(major, minor, patch) from a version string such as ``0.11.1rc2.dev3+g1234``; None if it has none."""
    match = re.match(r"v?(\d+)\.(\d+)(?:\.(\d+))?", version.strip())
    return (int(match[1]), int(match[2]), int(match[3] or 0)) if match else None


def check_vllm_version(version: str | None, where: str) -> None:
    """Refuse vLLM older than 0.11.0: before it, ``structured_outputs`` is silently ignored (HTTP 200 with
    unconstrained output; 0.10.2:vllm/entrypoints/openai/protocol.py:57-59 ``extra="allow"``)."""
    parsed = version_tuple(version) if version else None
    if parsed is not None and parsed < MIN_VLLM:
        raise EngineUnavailable(
            f"{where} runs vLLM {version}; spcs-llm needs vLLM 0.11.0 or later (older versions silently ignore "
            f"structured_outputs, so COMPLETE with a response_format would return unconstrained text)"
        )


def _json_or_raise(response: httpx.Response | Answer, **translate: Any) -> Any:
    try:
        body = orjson.loads(response.content)  # several times faster than json on long lists of floats
    except orjson.JSONDecodeError:
        try:
            body = response.json()  # what orjson refuses and json takes: NaN, Infinity
        except ValueError:
            body = response.text
    if response.status_code >= 400:
        raise upstream_error(status=response.status_code, body=body, **translate)
    if not isinstance(body, dict):
        raise EngineUnavailable(f"upstream answered HTTP {response.status_code} with a non-JSON body")
    return body


class _LabelScoring:
    """Label scoring against an OpenAI-compatible upstream (engines/labels.py), mixed into the engine below.

    The last message is the start of the assistant's answer; vLLM continues it when the request says
    ``continue_final_message`` (with ``add_generation_prompt`` false); llama-server and spcs-llm continue a final
    assistant message by default and ignore those fields. An upstream that refuses the request (a 400, e.g. one
    that rejects unknown fields) turns scoring off for this engine: label functions then generate as before."""

    _up: _Upstream
    upstream_model: str
    context_window: int
    label_scoring: bool

    async def next_token(self, messages: Sequence[Message], prefix: str, top: int) -> NextToken | None:
        body = {
            "model": self.upstream_model,
            "messages": prefill_messages(messages, prefix),
            "max_tokens": 1,
            "temperature": 0.0,
            "logprobs": True,
            "top_logprobs": top,
            "continue_final_message": True,
            "add_generation_prompt": False,
            "ignore_eos": True,
        }
        try:
            out = await self._up.post("chat/completions", body, context_window=self.context_window)
        except InvalidInput:
            self.label_scoring = False
            return None
        try:
            choice = out["choices"][0]
        except (KeyError, IndexError, TypeError) as exc:
            raise EngineUnavailable("upstream answered without choices") from exc
        return NextToken(first_alternatives(parse_logprobs(choice)), usage_of(out.get("usage")))

    async def token_pieces(self, text: str) -> list[str] | None:
        """llama-server's /tokenize gives each token's text (``with_pieces``); vLLM's gives ids only: None."""
        pieces: dict[str, list[str] | None] = self.__dict__.setdefault("_pieces", {})
        if text not in pieces:
            with transport_errors():
                response = await self._up.client.post(
                    f"{self._up.root}/tokenize",
                    json={
                        "model": self.upstream_model,
                        "content": text,
                        "prompt": text,
                        "with_pieces": True,
                        "add_special_tokens": False,
                    },
                )
            try:
                tokens = response.json().get("tokens") if response.status_code == 200 else None
            except (ValueError, AttributeError):  # not a JSON object: no pieces from this upstream
                tokens = None
            found: list[Any] = [t.get("piece") for t in tokens or () if isinstance(t, dict)]
            if len(pieces) >= 10_000:
                pieces.clear()
            pieces[text] = found if found and all(isinstance(p, str) for p in found) else None
        return pieces[text]


class OpenAIHttpEngine(_LabelScoring, Engine):
    """Chat, streaming, logprobs, structured output and token counting against an OpenAI-compatible server.

    ``model`` is the upstream's served name ("default": the first model it lists); ``model_name`` is the name we
    serve it under (default: the same). ``context_window``: as configured, else the upstream's ``max_model_len``,
    else the catalogue's, else 4096.
    """

    kind = "openai"

    def __init__(
        self,
        upstream: str,
        model: str = "default",
        *,
        model_name: str | None = None,
        context_window: int | None = None,
        max_concurrency: int = 64,
        structured_output: StructuredField = "response_format",
        request_timeout_s: float = 600.0,
        connect_timeout_s: float = 10.0,
        startup_timeout_s: float = 900.0,
        api_key: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.upstream_model = model
        self.model_name = model_name or model
        self._configured_context = context_window
        self.context_window = context_window or DEFAULT_CONTEXT_WINDOW
        self.max_concurrency = max_concurrency
        self.structured_output = structured_output
        self.startup_timeout_s = startup_timeout_s
        self.vllm_version: str | None = None  # set by start() when the upstream is vLLM
        self._up = _Upstream(
            upstream,
            concurrency=max_concurrency,
            request_timeout=request_timeout_s,
            connect_timeout=connect_timeout_s,
            api_key=api_key,
            transport=transport,
        )

    @property
    def upstream(self) -> str:
        return self._up.url

    async def start(self) -> None:
        models = await self._up.wait_ready(self.startup_timeout_s, "the OpenAI-compatible upstream")
        ids = [str(m.get("id")) for m in models]
        if self.upstream_model == "default":
            if not ids:
                raise EngineUnavailable(f"upstream {self.upstream} lists no models")
            self.upstream_model = ids[0]
            self.model_name = self.model_name if self.model_name != "default" else ids[0]
        elif self.upstream_model not in ids:
            raise EngineUnavailable(
                f"upstream {self.upstream} does not serve {self.upstream_model!r}; it serves "
                f"{', '.join(ids) or 'nothing'}"
            )
        listed = next(m for m in models if m.get("id") == self.upstream_model)
        self.context_window = self._configured_context or await self._discover_context(listed)
        self.vllm_version = await self._up.vllm_version(models)
        if self.structured_output == "structured_outputs":
            check_vllm_version(self.vllm_version, f"the upstream {self.upstream}")

    async def _discover_context(self, listed: Mapping[str, Any]) -> int:
        if isinstance(listed.get("max_model_len"), int):  # vLLM, spcs-llm
            return int(listed["max_model_len"])
        try:  # llama-server: what one slot holds
            props = (await self._up.client.get(f"{self._up.root}/props", timeout=5.0)).json()
            return int(props["default_generation_settings"]["n_ctx"])
        except (httpx.HTTPError, ValueError, KeyError, TypeError):
            pass
        entry = catalog_entry(self.upstream_model) or catalog_entry(self.model_name)
        return entry.context_window if entry else DEFAULT_CONTEXT_WINDOW

    async def aclose(self) -> None:
        await self._up.client.aclose()

    async def health(self) -> bool:
        return await self._up.healthy()

    def _translate(self, request: ChatRequest) -> dict[str, Any]:
        return {"context_window": self.context_window, "had_schema": request.json_schema is not None}

    async def chat(self, request: ChatRequest) -> ChatResult:
        body = chat_body(request, self.upstream_model, self.structured_output)
        try:
            out = await self._up.post("chat/completions", body, **self._translate(request))
        except OutputDoesNotFit as exc:  # vLLM <= 0.31: ask again for what fits
            out = await self._up.post("chat/completions", clamped(body, exc), **self._translate(request))
        try:
            choice = out["choices"][0]
            text = (choice.get("message") or {}).get("content") or ""
        except (KeyError, IndexError, TypeError) as exc:
            raise EngineUnavailable("upstream answered without choices") from exc
        return ChatResult(
            text=text,
            finish_reason=choice.get("finish_reason") or "stop",
            usage=usage_of(out.get("usage")),
            logprobs=parse_logprobs(choice),
        )

    async def chat_stream(self, request: ChatRequest) -> AsyncIterator[StreamDelta]:
        body = chat_body(request, self.upstream_model, self.structured_output, stream=True)
        started = False
        try:
            async with self._stream(body, request) as lines:
                started = True
                async for delta in self._events(lines, request):
                    yield delta
        except OutputDoesNotFit as exc:
            if started:
                raise
            async with self._stream(clamped(body, exc), request) as lines:  # refused before it began: ask again
                async for delta in self._events(lines, request):
                    yield delta

    async def _events(self, lines: AsyncIterator[str], request: ChatRequest) -> AsyncIterator[StreamDelta]:
        async for line in lines:
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                return
            try:
                chunk = json.loads(data)
            except ValueError as exc:
                raise EngineUnavailable("upstream sent a stream event that is not JSON") from exc
            for delta in self._deltas(chunk, request):
                yield delta

    @asynccontextmanager
    async def _stream(self, body: dict[str, Any], request: ChatRequest) -> AsyncIterator[AsyncIterator[str]]:
        async with self._up.slots:
            with transport_errors():
                async with self._up.client.stream("POST", "chat/completions", json=body) as response:
                    if response.status_code >= 400:
                        await response.aread()
                        _json_or_raise(response, **self._translate(request))
                    yield response.aiter_lines()

    def _deltas(self, chunk: Mapping[str, Any], request: ChatRequest) -> Iterator[StreamDelta]:
        if "error" in chunk:  # vLLM and spcs-llm report a failure after the status line inside the stream
            raise stream_error(chunk, **self._translate(request))
        for choice in chunk.get("choices") or ():
            text = (choice.get("delta") or {}).get("content") or ""
            if text or choice.get("finish_reason"):
                yield StreamDelta(text=text, finish_reason=choice.get("finish_reason"))
        if chunk.get("usage"):
            yield StreamDelta(usage=usage_of(chunk["usage"]))

    async def count_tokens(self, text: str) -> int:
        count = await self._up.count_tokens(self.upstream_model, text)
        return count if count is not None else await super().count_tokens(text)


class OpenAIEmbedder(Embedder):
    """An embedding model behind an OpenAI-compatible ``/v1/embeddings``. ``start`` embeds one probe text and
    adopts the real dimension (the app refuses to start when it is not the configured one); every later vector
    of another length is an engine error. Vectors are L2-normalised here, whatever the upstream does.

    Texts longer than the model are truncated, as Cortex's embedding functions do, where the upstream can be told
    to: vLLM (``truncate_prompt_tokens: -1``, 0.11.0:vllm/entrypoints/openai/protocol.py:1396, renderer.py:268-288;
    without it vLLM refuses the whole call with 400). ``truncate`` None means: on when the upstream is vLLM, off
    for other servers, which may reject the unknown field. A text the upstream still refuses fails only its own
    row: :meth:`embed_rows` splits a refused call until the refused texts stand alone.

    Vectors travel as base64 float32 bytes where the upstream is vLLM (``encoding_format: "base64"``, 0.11.0:
    vllm/entrypoints/openai/serving_embedding.py ``_get_embedding``: the pooled tensor as float32, native byte
    order): the same values as its float JSON (``tolist()`` of that tensor), at a fraction of the parsing cost
    (``bench/bench_embed_upstream.py``). ``base64`` None means: on for vLLM, off for other servers.
    """

    kind = "openai"
    batch_size = 64

    def __init__(
        self,
        upstream: str,
        model: str,
        *,
        model_name: str | None = None,
        dimension: int = 768,
        max_concurrency: int = 4,
        request_timeout_s: float = 120.0,
        connect_timeout_s: float = 10.0,
        startup_timeout_s: float = 900.0,
        api_key: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        truncate: bool | None = None,
        base64: bool | None = None,
    ) -> None:
        self.upstream_model = model
        self.model_name = model_name or model
        self.dimension = dimension
        self.truncate = truncate
        self.base64 = base64
        self.max_concurrency = max_concurrency
        self.startup_timeout_s = startup_timeout_s
        self._up = _Upstream(
            upstream,
            concurrency=max_concurrency,
            request_timeout=request_timeout_s,
            connect_timeout=connect_timeout_s,
            api_key=api_key,
            transport=transport,
        )

    @classmethod
    def from_settings(cls, settings: Any) -> OpenAIEmbedder:
        if not settings.upstream:
            raise ValueError(f"embeddings: {settings.model}: kind = openai needs upstream = <base URL of /v1>")
        return cls(settings.upstream, settings.model, model_name=settings.model_name, dimension=settings.dimension)

    async def start(self) -> None:
        models = await self._up.wait_ready(self.startup_timeout_s, "the embedding upstream")
        if self.truncate is None:
            self.truncate = any(m.get("owned_by") == "vllm" for m in models)
        if self.base64 is None:
            self.base64 = any(m.get("owned_by") == "vllm" for m in models)
        probe, _ = await self._request(["dimension probe"])
        self.dimension = len(probe[0])

    async def aclose(self) -> None:
        await self._up.client.aclose()

    async def health(self) -> bool:
        return await self._up.healthy()

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        rows = await self.embed_rows(texts)
        for row in rows:
            if isinstance(row, RowError):
                raise row
        return [row.tolist() for row in rows]  # type: ignore[union-attr]

    async def embed_rows(self, texts: Sequence[str]) -> list[np.ndarray | RowError]:
        """One vector per text, or the row error of a text the upstream refuses; its neighbours still embed."""
        return (await self.embed_counted(texts)).vectors

    async def embed_counted(self, texts: Sequence[str]) -> Embedded:
        """:meth:`embed_rows` with each text's input tokens: the upstream's ``usage.prompt_tokens`` of each call,
        shared among its texts in proportion to their lengths (``/v1/embeddings`` reports one total per call; a
        one-text call is exact). A refused text counts 0; an upstream that reports no usage counts 0."""
        chunks = [list(texts[i : i + self.batch_size]) for i in range(0, len(texts), self.batch_size)]
        parts = await asyncio.gather(*(self._isolating(c) for c in chunks))
        rows = [v for part in parts for v in part[0]]
        for v in rows:
            if not isinstance(v, RowError) and len(v) != self.dimension:
                raise EngineError(f"{self.model_name} returned a {len(v)}-d vector; {self.dimension} expected")
        return Embedded(rows, [n for part in parts for n in part[1]])

    async def _isolating(self, texts: list[str]) -> tuple[list[np.ndarray | RowError], list[int]]:
        try:
            vectors, tokens = await self._request(texts)
            return list(vectors), tokens
        except RowError as exc:
            if len(texts) == 1:
                return [exc], [0]
            half = len(texts) // 2
            left, right = await asyncio.gather(self._isolating(texts[:half]), self._isolating(texts[half:]))
            return left[0] + right[0], left[1] + right[1]

    async def _request(self, texts: list[str]) -> tuple[list[np.ndarray], list[int]]:
        body: dict[str, Any] = {"model": self.upstream_model, "input": texts}
        if self.truncate:
            body["truncate_prompt_tokens"] = -1
        if self.base64:
            body["encoding_format"] = "base64"
        out = await self._up.post("embeddings", body)
        rows = sorted(out.get("data") or [], key=lambda d: d.get("index", 0))
        if len(rows) != len(texts):
            raise EngineError(f"{self.model_name} returned {len(rows)} vectors for {len(texts)} texts")
        total = usage_of(out.get("usage")).prompt_tokens
        return [_normalise(_vector(row["embedding"])) for row in rows], share_tokens(total, [len(t) for t in texts])

    async def count_tokens(self, text: str) -> int:
        count = await self._up.count_tokens(self.upstream_model, text)
        return count if count is not None else await super().count_tokens(text)


def share_tokens(total: int, weights: Sequence[int]) -> list[int]:
    """``total`` split in proportion to ``weights`` (largest remainders; the parts sum to ``total``)."""
    whole = sum(weights)
    if not weights:
        return []
    if whole <= 0:
        weights, whole = [1] * len(weights), len(weights)
    parts = [total * w // whole for w in weights]
    by_remainder = sorted(range(len(weights)), key=lambda i: total * weights[i] % whole, reverse=True)
    for i in by_remainder[: total - sum(parts)]:
        parts[i] += 1
    return parts


def _vector(embedding: Any) -> np.ndarray:
    """An upstream's vector as float64: base64 of float32 bytes (vLLM writes its native order: little-endian on
    every host SPCS runs) or a JSON list of numbers."""
    if isinstance(embedding, str):
        try:
            raw = base64.b64decode(embedding, validate=True)
        except binascii.Error as exc:
            raise EngineError(f"the embedding upstream sent a vector that is not base64: {exc}") from exc
        if len(raw) % 4:
            raise EngineError(f"the embedding upstream sent {len(raw)} bytes, not a whole number of float32 values")
        return np.frombuffer(raw, dtype="<f4").astype(np.float64)
    return np.asarray(embedding, dtype=np.float64)


def _normalise(vector: np.ndarray) -> np.ndarray:
    """``vector / ||vector||`` with the squares summed left to right (``np.cumsum`` is sequential), so it is the
    same double for every element as the Python loop it replaced (``sum(x * x for x in v)``, then ``x / norm``)."""
    if not len(vector):
        return vector
    norm = math.sqrt(float(np.cumsum(vector * vector)[-1])) or 1.0
    return vector / norm
