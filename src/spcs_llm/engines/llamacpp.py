"""llama.cpp in process, through xllamacpp's server (continuous batching over parallel slots).

xllamacpp's ``handle_chat_completions`` blocks until the answer is complete, so calls run on a dedicated
thread pool sized to the engine's concurrency. The same server also listens on an ephemeral loopback port;
we use it only for ``/health`` and ``/tokenize``, which the Python binding does not expose.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import orjson

from ..errors import (
    EngineError,
    EngineUnavailable,
    InvalidInput,
    MaxTokensExceeded,
    SchemaValidationFailed,
    SpcsLlmError,
)
from .base import ChatRequest, ChatResult, Engine, Message, StreamDelta, usage_of
from .labels import NextToken, first_alternatives, prefill_messages
from .openai_http import _json_or_raise, parse_logprobs
from .wire import EngineTransport

_DONE = object()
_JSON = {"content-type": "application/json", "accept": "application/json", "accept-encoding": "identity"}
_TIMEOUTS = {"connect": 10.0, "read": 10.0}  # what the httpx client had: 10 s each


def translate_error(error: Mapping[str, Any], *, had_schema: bool = False) -> SpcsLlmError:
    """Map a llama.cpp server error object (``{"code", "type", "message", ...}``) to the project's tree."""
    kind = error.get("type", "")
    message = str(error.get("message", "llama.cpp error"))
    if kind == "exceed_context_size_error":
        return MaxTokensExceeded(int(error.get("n_ctx", 0)))
    if kind == "invalid_request_error":
        return SchemaValidationFailed() if had_schema and "schema" in message.lower() else InvalidInput(message)
    if kind in {"unavailable_error", "server_error"}:
        return EngineUnavailable(f"llama.cpp: {message}")
    return EngineError(f"llama.cpp {kind or 'error'}: {message}")


@contextmanager
def map_binding_errors(request: ChatRequest) -> Iterator[None]:
    """The binding raises ValueError for requests llama.cpp refuses to parse (e.g. a bad JSON schema)."""
    try:
        yield
    except ValueError as exc:
        if request.json_schema is not None and "schema" in str(exc).lower():
            raise SchemaValidationFailed() from exc
        raise InvalidInput(f"llama.cpp rejected the request: {exc}") from exc
    except RuntimeError as exc:
        raise EngineUnavailable(f"llama.cpp: {exc}") from exc


def _check_gguf(path: Path) -> None:
    """Refuse at once what llama.cpp would refuse with a vague message: a missing file or one that is not GGUF."""
    if not path.is_file():
        raise EngineUnavailable(f"model file not found: {path}")
    with path.open("rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise EngineUnavailable(f"{path} is not a GGUF file (it does not start with the GGUF magic bytes)")


class LlamaCppEngine(Engine):
    kind = "llamacpp"

    def __init__(
        self,
        model_path: Path,
        model_name: str,
        *,
        n_parallel: int = 8,
        ctx_per_slot: int = 2048,
        threads: int | None = None,
    ) -> None:
        self.model_path = Path(model_path)
        self.model_name = model_name
        self.n_parallel = n_parallel
        self.context_window = ctx_per_slot
        self.threads = threads or os.cpu_count() or 1
        # Two requests per slot: while one slot's answer travels back, the next prompt is already queued.
        self.max_concurrency = 2 * n_parallel
        self._server: Any = None
        self._pool = ThreadPoolExecutor(self.max_concurrency + 1, thread_name_prefix="llamacpp")
        self._http: httpx.AsyncClient | None = None
        self._transport: EngineTransport | None = None
        # /tokenize requests in flight: a COUNT_TOKENS batch asks for all its rows at once, and llama-server gives
        # each connection one of its few HTTP threads (n_parallel + 2 or so) and keeps it for its keep-alive
        self._tokenize_slots = asyncio.Semaphore(n_parallel)
        self._pieces: dict[str, list[str]] = {}

    async def start(self) -> None:
        _check_gguf(self.model_path)
        loop = asyncio.get_running_loop()
        try:
            self._server = await loop.run_in_executor(self._pool, self._load)
        except RuntimeError as exc:  # the binding says only "Failed to init server"; llama.cpp's log says why
            raise EngineUnavailable(f"llama.cpp could not load {self.model_path}: {exc}") from exc
        self._transport = EngineTransport(self.n_parallel)
        self._http = httpx.AsyncClient(base_url=self.http_url, timeout=10.0, transport=self._transport)
        props = (await self._http.get("/props")).json()
        # What one slot really holds: the per-request limit we advertise must be this, not n_ctx.
        self.context_window = int(props["default_generation_settings"]["n_ctx"])

    def _load(self) -> Any:
        import xllamacpp

        p = xllamacpp.CommonParams()
        p.model.path = str(self.model_path)
        p.n_parallel = self.n_parallel
        p.n_ctx = self.context_window * self.n_parallel
        p.cpuparams.n_threads = self.threads
        p.cpuparams_batch.n_threads = self.threads
        p.endpoint_metrics = True
        p.verbosity = -1  # llama.cpp's own log is quiet; it never prints prompts at this level
        p.warmup = False
        return xllamacpp.Server(p)

    @property
    def http_url(self) -> str:
        """The in-process llama.cpp server's own loopback address (its OpenAI endpoints live under it)."""
        return str(self._require_server().listening_address)

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()
        # Let running calls finish before the server (and its model) is freed.
        await asyncio.to_thread(self._pool.shutdown, wait=True, cancel_futures=True)
        self._server = None

    async def health(self) -> bool:
        if self._server is None or self._http is None:
            return False
        try:
            return (await self._http.get("/health")).status_code == 200
        except httpx.HTTPError:
            return False

    def _body(self, request: ChatRequest, *, stream: bool = False) -> dict[str, Any]:
        body: dict[str, Any] = {
            "messages": [{"role": m.role, "content": m.content} for m in request.messages],
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "top_p": request.top_p,
        }
        if request.stop:
            body["stop"] = list(request.stop)
        if request.seed is not None:
            body["seed"] = request.seed
        if request.top_logprobs > 0:
            body["logprobs"] = True
            body["top_logprobs"] = request.top_logprobs
        if request.json_schema is not None:
            schema = json.loads(request.json_schema)
            body["response_format"] = {"type": "json_schema", "json_schema": {"schema": schema}}
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        return body

    def _require_server(self) -> Any:
        if self._server is None:
            raise EngineUnavailable("llama.cpp engine is not started")
        return self._server

    async def chat(self, request: ChatRequest) -> ChatResult:
        server = self._require_server()
        body = self._body(request)
        loop = asyncio.get_running_loop()
        with map_binding_errors(request):
            out = await loop.run_in_executor(self._pool, server.handle_chat_completions, body)
        if "error" in out:
            raise translate_error(out["error"], had_schema=request.json_schema is not None)
        if "choices" not in out:  # the binding's own wrapper when the answer was not JSON
            raise translate_error(out)
        choice, usage = out["choices"][0], out.get("usage", {})
        return ChatResult(
            text=choice["message"].get("content") or "",
            finish_reason=choice.get("finish_reason") or "stop",
            usage=usage_of(usage),
            logprobs=parse_logprobs(choice),  # llama.cpp answers in OpenAI's shape: choices[0].logprobs.content
        )

    async def chat_stream(self, request: ChatRequest) -> AsyncIterator[StreamDelta]:
        server = self._require_server()
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        cancelled = False

        def on_chunk(chunk: dict[str, Any]) -> bool:  # runs on the llama.cpp thread
            loop.call_soon_threadsafe(queue.put_nowait, chunk)
            return cancelled  # True tells llama.cpp to stop generating

        def run() -> None:
            try:
                with map_binding_errors(request):
                    server.handle_chat_completions(self._body(request, stream=True), on_chunk)
            except SpcsLlmError as exc:
                loop.call_soon_threadsafe(queue.put_nowait, exc)
            finally:
                loop.call_soon_threadsafe(queue.put_nowait, _DONE)

        task = loop.run_in_executor(self._pool, run)
        try:
            while (item := await queue.get()) is not _DONE:
                for delta in self._deltas(item, request):
                    yield delta
        finally:
            cancelled = True
            await task

    def _deltas(self, item: Any, request: ChatRequest) -> Iterator[StreamDelta]:
        if isinstance(item, SpcsLlmError):
            raise item
        if "error" in item or "choices" not in item:
            raise translate_error(item.get("error", item), had_schema=request.json_schema is not None)
        usage = item.get("usage")
        for choice in item["choices"]:
            text = (choice.get("delta") or {}).get("content") or ""
            if text or choice.get("finish_reason"):
                yield StreamDelta(text=text, finish_reason=choice.get("finish_reason"))
        if usage:
            yield StreamDelta(usage=usage_of(usage))

    async def count_tokens(self, text: str) -> int:
        return len((await self._tokenize({"content": text}))["tokens"])

    async def _tokenize(self, body: dict[str, Any]) -> Any:
        """llama-server's /tokenize on its loopback address: one POST a row for COUNT_TOKENS, so over the engines'
        per-row path (engines/h1.py), not httpx's client (~0.2 ms against ~1 ms a request)."""
        self._require_server()
        assert self._transport is not None
        try:
            async with self._tokenize_slots:
                answer = await self._transport.post(f"{self.http_url}/tokenize", _JSON, orjson.dumps(body), _TIMEOUTS)
        except httpx.HTTPError as exc:
            raise EngineUnavailable(f"llama.cpp tokenize: {exc}") from exc
        out = _json_or_raise(answer)  # an error status or a body that is not JSON: the engine's error, translated
        if not isinstance(out.get("tokens"), list):
            raise EngineUnavailable("llama.cpp tokenize answered without tokens")
        return out

    def metrics_text(self) -> str:
        if self._server is None:
            return ""
        text = self._server.handle_metrics()
        return text if isinstance(text, str) and text.startswith("#") else ""

    # -- label scoring (engines/labels.py) -----------------------------------------------------------------------

    async def next_token(self, messages: Sequence[Message], prefix: str, top: int) -> NextToken | None:
        """One forward step after the assistant's answer begins with ``prefix``: llama.cpp continues a final
        assistant message (its prefill), and ``top_logprobs`` are the raw model probabilities at that position."""
        server = self._require_server()
        # ignore_eos: were the end of the turn the likeliest token, llama.cpp would report no token and so no
        # alternatives; it bans it from the sample only, the alternatives are the raw probabilities all the same.
        body = {
            "messages": prefill_messages(messages, prefix),
            "max_tokens": 1,
            "temperature": 0.0,
            "logprobs": True,
            "top_logprobs": top,
            "ignore_eos": True,
        }
        request = ChatRequest(tuple(messages), max_tokens=1)
        loop = asyncio.get_running_loop()
        with map_binding_errors(request):
            out = await loop.run_in_executor(self._pool, server.handle_chat_completions, body)
        if "error" in out or "choices" not in out:
            raise translate_error(out.get("error", out))
        return NextToken(first_alternatives(parse_logprobs(out["choices"][0])), usage_of(out.get("usage")))

    async def token_pieces(self, text: str) -> list[str] | None:
        """The token texts of ``text`` from llama.cpp's /tokenize (``with_pieces``); cached, as label sets repeat
        on every row of a query."""
        if text not in self._pieces:
            out = await self._tokenize({"content": text, "with_pieces": True})
            pieces = [t["piece"] for t in out["tokens"] if isinstance(t, dict)]
            if len(self._pieces) >= 10_000:
                self._pieces.clear()
            self._pieces[text] = pieces if all(isinstance(p, str) for p in pieces) else []
        return self._pieces[text] or None
