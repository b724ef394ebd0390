"""A client that calls the service's SQL functions the way Snowflake does: rows in Snowflake-shaped batches.

Used by the local SQL surface (``spcs_llm.duckdb``) and anything else that must reach the same registry, scheduler
and error policy as a Snowflake query. Two transports:

- ``url``: a running ``spcs-llm serve`` over HTTP;
- in process: the same FastAPI app, started here with its lifespan (engines, scheduler) and called over ASGI, so
  every batch goes through exactly the code a Snowflake batch goes through.

Calls are synchronous (DuckDB calls its UDFs from its own threads); the async work runs on one event loop in a
daemon thread. Like Snowflake, a batch answered 429 or 5xx is sent again with the same batch id, with exponential
back-off, at most ``max_retries`` times; the server's batch memory makes a retry cost no engine work.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import itertools
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from typing import Any

import httpx
import orjson

from .config import Settings

QUERY_ID = "sf-external-function-current-query-id"
BATCH_ID = "sf-external-function-query-batch-id"
RETRIED = {429, 500, 502, 503, 504}


class FunctionError(Exception):
    """A batch failed for good: the message is the service's (Cortex's) error text, as Snowflake would show it."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class ServiceUnreachable(FunctionError):
    """No server answers at the URL."""


def _poll_delays() -> Iterator[float]:
    """Seconds between polling GETs of a batch answered 202: 0.1 s, growing x1.5 up to 2 s."""
    delay = 0.1
    while True:
        yield delay
        delay = min(delay * 1.5, 2.0)


def _poll_request(request: httpx.Request) -> httpx.Request:
    """Snowflake's polling GET: the same URL and headers (the batch id among them), no body."""
    headers = {k: v for k, v in request.headers.items() if k.lower() not in {"content-length", "content-encoding"}}
    return httpx.Request("GET", request.url, headers=headers)


class PollingTransport(httpx.BaseTransport):
    """Plays Snowflake's part of the asynchronous protocol for a synchronous ``httpx.Client``: a POST answered 202
    is polled with GETs (same URL and batch id) until it is answered. For every client of ``/functions/<name>``
    that is not Snowflake itself: the Streamlit app, benchmarks, tests."""

    def __init__(self, inner: httpx.BaseTransport | None = None) -> None:
        self.inner = inner or httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        if request.method != "POST":
            return response
        for delay in _poll_delays():
            if response.status_code != 202:
                return response
            response.close()
            time.sleep(delay)
            response = self.inner.handle_request(_poll_request(request))
        raise AssertionError("unreachable")

    def close(self) -> None:
        self.inner.close()


class AsyncPollingTransport(httpx.AsyncBaseTransport):
    """:class:`PollingTransport` for an ``httpx.AsyncClient``."""

    def __init__(self, inner: httpx.AsyncBaseTransport | None = None) -> None:
        self.inner = inner or httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        if request.method != "POST":
            return response
        for delay in _poll_delays():
            if response.status_code != 202:
                return response
            await response.aclose()
            await asyncio.sleep(delay)
            response = await self.inner.handle_async_request(_poll_request(request))
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        await self.inner.aclose()


class _Loop:
    """One asyncio loop in a daemon thread; ``run`` submits a coroutine from any thread and waits for it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="spcs-llm-client", daemon=True)
        self.thread.start()

    def submit(self, coro: Any) -> Future[Any]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Any) -> Any:
        return self.submit(coro).result()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


class BatchClient:
    """Calls ``/functions/<name>`` with Snowflake batches. ``url=None`` runs the service in process from
    ``settings`` (default: the packaged model), or around the given ``app`` (a ``create_app`` result)."""

    def __init__(
        self,
        url: str | None = None,
        *,
        settings: Settings | None = None,
        app: Any = None,
        max_batch_rows: int = 64,
        max_batches_in_flight: int = 32,
        max_retries: int = 3,
        backoff_s: float = 1.0,
        timeout_s: float = 3600.0,
        ready_timeout_s: float = 600.0,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.url = url.rstrip("/") if url else None
        self.max_batch_rows = max_batch_rows
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.query_id = f"local-{uuid.uuid4().hex[:16]}"
        self._batch_numbers = itertools.count()
        self._headers = {
            QUERY_ID: self.query_id,
            "sf-context-current-user": getpass.getuser(),
            "sf-context-current-role": "LOCAL",
            **(headers or {}),
        }  # e.g. Authorization
        self._on_rows: list[Callable[[int], None]] = []
        self._loop = _Loop()
        self._lifespan_stop: asyncio.Event | None = None
        self._lifespan_task: asyncio.Future[Any] | None = None
        try:
            self._loop.run(self._open(settings, app, max_batches_in_flight, timeout_s, ready_timeout_s))
        except BaseException:
            self.close()
            raise

    async def _open(
        self, settings: Settings | None, app: Any, in_flight: int, timeout_s: float, ready_timeout_s: float
    ) -> None:
        self._limit = asyncio.Semaphore(in_flight)
        timeout = httpx.Timeout(timeout_s, connect=10.0)
        if self.url is not None:
            self._http = httpx.AsyncClient(base_url=self.url, timeout=timeout, transport=AsyncPollingTransport())
            try:
                await self._http.get("/health")  # fail fast, with the URL, when nothing listens there
            except httpx.TransportError as exc:
                raise _unreachable(self.url, exc) from exc
            return
        if app is None:
            from .models.resolve import prepare_models
            from .server import create_app

            settings = await asyncio.to_thread(prepare_models, settings or Settings())
            app = create_app(settings)
        self.app = app
        started = asyncio.Event()
        self._lifespan_stop = asyncio.Event()

        async def lifespan() -> None:
            async with app.router.lifespan_context(app):
                started.set()
                await self._lifespan_stop.wait()  # type: ignore[union-attr]

        self._lifespan_task = asyncio.ensure_future(lifespan())
        await started.wait()
        self._http = httpx.AsyncClient(
            transport=AsyncPollingTransport(httpx.ASGITransport(app)), base_url="http://in-process", timeout=timeout
        )
        await self._wait_ready(ready_timeout_s)

    async def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            health = await self._http.get("/health")
            if health.status_code == 200:
                return
            if self.app.state.startup_error or time.monotonic() > deadline:
                raise FunctionError(f"the in-process engine did not start: {health.text}", 503)
            await asyncio.sleep(0.05)

    def on_rows(self, callback: Callable[[int], None]) -> None:
        """Call ``callback(n)`` each time a batch of ``n`` rows has been answered (for progress bars)."""
        self._on_rows.append(callback)

    @property
    def where(self) -> str:
        return self.url or "the in-process engine"

    def call(self, function: str, rows: Sequence[Sequence[Any]]) -> list[Any]:
        """The value of each row (``rows[i]`` holds the function's arguments), in order. The rows go out in batches
        of at most ``max_batch_rows``, all at once; the first batch that fails for good raises FunctionError."""
        return self._loop.run(self.acall(function, rows))

    async def acall(self, function: str, rows: Sequence[Sequence[Any]]) -> list[Any]:
        size = self.max_batch_rows
        chunks = [rows[i : i + size] for i in range(0, len(rows), size)]
        answers = await asyncio.gather(
            *(self._batch(function, start * size, chunk) for start, chunk in enumerate(chunks))
        )
        return [value for answer in answers for value in answer]

    async def _batch(self, function: str, first: int, rows: Sequence[Sequence[Any]]) -> list[Any]:
        body = orjson.dumps({"data": [[first + i, *args] for i, args in enumerate(rows)]})
        path = "/v1/chat/completions" if function == "qwen_complete" else f"/functions/{function}"
        headers = {
            **self._headers,
            BATCH_ID: f"{self.query_id}:{next(self._batch_numbers)}",
            "content-type": "application/json",
        }
        async with self._limit:
            response = await self._send(path, body, headers)
        data = orjson.loads(response.content)["data"]
        if [r[0] for r in data] != list(range(first, first + len(rows))):
            raise FunctionError(f"{function}: the answer's rows do not match the batch's", 500)
        for callback in self._on_rows:
            callback(len(rows))
        return [r[1] for r in data]

    async def _send(self, path: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
        """POST the batch; on 429/5xx send it again with the same batch id, as Snowflake does; on 202 poll."""
        for attempt in itertools.count():
            try:
                response = await self._http.post(path, content=body, headers=headers)  # 202s polled by the transport
            except httpx.TransportError as exc:
                raise _unreachable(self.where, exc) from exc
            if response.status_code == 200:
                return response
            if response.status_code not in RETRIED or attempt >= self.max_retries:
                raise FunctionError(_message(response), response.status_code)
            await asyncio.sleep(self.backoff_s * 2**attempt)
        raise AssertionError("unreachable")

    def close(self) -> None:
        """Close the HTTP client and, in process, run the app's shutdown (engines closed)."""
        if self._loop.thread.is_alive():
            with contextlib.suppress(Exception):
                self._loop.submit(self._shutdown()).result(timeout=60)
            self._loop.stop()

    async def _shutdown(self) -> None:
        if hasattr(self, "_http"):
            await self._http.aclose()
        if self._lifespan_task is not None and self._lifespan_stop is not None:
            self._lifespan_stop.set()
            await self._lifespan_task

    def __enter__(self) -> BatchClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _unreachable(where: str, exc: Exception) -> ServiceUnreachable:
    return ServiceUnreachable(
        f"cannot reach the spcs-llm service at {where} ({type(exc).__name__}: {exc}); start it with "
        "`spcs-llm serve` (or `make serve`), or leave out the URL to run the engine in process",
        503,
    )


def _message(response: httpx.Response) -> str:
    """The error text of a Snowflake-route answer (plain text) or an OpenAI-route one (``error.message``)."""
    text = response.text
    with contextlib.suppress(orjson.JSONDecodeError, TypeError, KeyError):
        return str(orjson.loads(text)["error"]["message"])
    return text or f"HTTP {response.status_code}"


@contextlib.contextmanager
def progress(client: BatchClient, enabled: bool = True) -> Iterator[None]:
    """A tqdm bar on stderr counting rows answered; it appears only on queries longer than a second."""
    if not enabled:
        yield
        return
    from tqdm import tqdm

    bar = tqdm(unit=" rows", desc="rows answered", delay=1.0, leave=False)
    lock = threading.Lock()

    def update(n: int) -> None:
        with lock:
            bar.update(n)

    client.on_rows(update)
    try:
        yield
    finally:
        client._on_rows.remove(update)
        bar.close()
