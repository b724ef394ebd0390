"""The engine hop's HTTP: httpx's requests carried over aiohttp's connection pool, and the per-row POST over a
leaner one.

Every COMPLETE row and every label step is one request from the gateway to vLLM on loopback, so the client's CPU
per request is a per-row cost of the gateway's single event loop. With httpx's own transport (httpcore) and client
that cost was ~0.7 ms a request alone and ~1.0-1.2 ms with 64 in flight: httpcore's pool checks every connection's
socket for each request it places (``_assign_requests_to_connections``), and the client parses URLs and runs a
cookie jar per request. aiohttp's pool takes an idle connection without a scan (~0.11-0.16 ms a request with 64 in
flight); the engines' per-row POST to a plain ``http://`` upstream skips aiohttp's request machinery too and goes
over :class:`~spcs_llm.engines.h1.H1Pool` (:meth:`EngineTransport.post`; ``bench/bench_engine_hop.py``,
docs/bench-gateway.md "The engine hop"). The code above keeps httpx's interface, its timeouts and its exceptions:
aiohttp's failures become the httpx exceptions that :func:`~spcs_llm.engines.openai_http.upstream_error` already
translates, and tests may still hand the engines an ``httpx.MockTransport`` instead.
"""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
import httpx

from .h1 import H1Pool, serves

# uvicorn (vLLM's API server, spcs-llm, llama-server behind xllamacpp's) closes a connection idle for 5 s by
# default (--timeout-keep-alive); a connection kept longer than that could be reused just as the server closes it.
KEEPALIVE_S = 4.0


@dataclass(frozen=True, slots=True)
class Answer:
    """An upstream's answer to the engines' per-row POST, read whole: what they read of an ``httpx.Response``
    (status, body, its JSON or text) without building one (~11 µs a response: a headers object and a byte stream,
    on every row's request)."""

    status_code: int
    content: bytes

    def json(self) -> Any:
        return json.loads(self.content)

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")


@contextmanager
def httpx_errors() -> Iterator[None]:
    """aiohttp's failures as the httpx exceptions of the same meaning (most specific first): a refused or
    unresolvable connection is ``ConnectError``, a connect or read timeout ``ConnectTimeout`` / ``ReadTimeout``, a
    server that closed the connection or broke the protocol ``RemoteProtocolError``, a failed read ``ReadError``."""
    try:
        yield
    except aiohttp.ConnectionTimeoutError as exc:
        raise httpx.ConnectTimeout(str(exc) or "connect timed out") from exc
    except aiohttp.ServerTimeoutError as exc:  # SocketTimeoutError: no byte within the read timeout
        raise httpx.ReadTimeout(str(exc) or "read timed out") from exc
    except aiohttp.ClientConnectorError as exc:
        raise httpx.ConnectError(str(exc)) from exc
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientResponseError, aiohttp.ClientPayloadError) as exc:
        raise httpx.RemoteProtocolError(str(exc) or type(exc).__name__) from exc
    except aiohttp.ClientError as exc:  # ClientOSError (a reset), and whatever else aiohttp raises
        raise httpx.ReadError(str(exc) or type(exc).__name__) from exc
    except TimeoutError as exc:  # no total timeout is set; aiohttp may still raise the plain one
        raise httpx.ReadTimeout("timed out") from exc


class _Body(httpx.AsyncByteStream):
    """A response body read from aiohttp as it arrives; closing it gives the connection back to the pool (or
    drops it when the body was not read to its end)."""

    def __init__(self, response: aiohttp.ClientResponse, owner: aiohttp.ClientSession | None = None) -> None:
        self._response, self._owner = response, owner

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with httpx_errors():
            async for chunk in self._response.content.iter_any():
                yield chunk

    async def aclose(self) -> None:
        self._response.release()
        if self._owner is not None:  # a late request's own session (EngineTransport after aclose)
            await self._owner.close()


def environment_proxy(url: str) -> str | None:
    """The proxy that ``HTTP_PROXY``/``HTTPS_PROXY``/``ALL_PROXY`` name for ``url``, unless ``NO_PROXY`` exempts its
    host (urllib's reading of the environment, which httpx's and aiohttp's follow); a bare ``host:port`` gets
    ``http://``, as httpx reads it."""
    parts = urllib.parse.urlsplit(url)
    proxies = urllib.request.getproxies()
    proxy = proxies.get(parts.scheme) or proxies.get("all")
    if not proxy or urllib.request.proxy_bypass(parts.netloc):
        return None
    return proxy if "://" in proxy else f"http://{proxy}"


class EngineTransport(httpx.AsyncBaseTransport):
    """An httpx transport over one aiohttp session with up to ``max_connections`` connections (the engines bound
    their requests in flight to the same number), and the engines' per-row POST (:meth:`post`) over an
    :class:`~spcs_llm.engines.h1.H1Pool` of as many when it goes to a plain ``http://`` upstream with no proxy.
    Both are made on the first request, in the running loop; the body is passed on as sent, compressed or not
    (httpx decodes it).

    Proxies from the environment are honoured as httpx honours them, looked up once per URL
    (:func:`environment_proxy`). aiohttp's own ``trust_env`` stays off: it would look the proxy up again on a worker
    thread for every request, and read ``~/.netrc`` too, adding Basic credentials (or refusing, beside our bearer
    token) that httpx never sent. No write timeout: aiohttp has none (a request body is sent before the read
    timeout starts); the engines' bodies are small and the upstream is on loopback."""

    def __init__(self, max_connections: int) -> None:
        self.max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None
        self._timeouts: dict[tuple[Any, ...], aiohttp.ClientTimeout] = {}
        self._routes: dict[str, tuple[str | None, bool]] = {}
        self._h1: H1Pool | None = None
        self._closed = False

    def _open(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(limit=self.max_connections, keepalive_timeout=KEEPALIVE_S)
        self._session = aiohttp.ClientSession(connector=connector, trust_env=False, auto_decompress=False)
        return self._session

    def _session_for(self) -> tuple[aiohttp.ClientSession, bool]:
        """The pool's session, or after :meth:`aclose` a session of the request's own (True: the caller closes it
        when the request ends): a row still running when the engine closes is answered, and the closed transport
        keeps no connection and leaves no session open (opening the pool's again would leak it)."""
        if not self._closed:
            return self._session or self._open(), False
        connector = aiohttp.TCPConnector(limit=1, force_close=True)
        return aiohttp.ClientSession(connector=connector, trust_env=False, auto_decompress=False), True

    def _route(self, url: str) -> tuple[str | None, bool]:
        """The proxy for ``url`` (:func:`environment_proxy`), and whether its POSTs may take the H1Pool (no proxy,
        and :func:`~spcs_llm.engines.h1.serves`), looked up once per URL."""
        found = self._routes.get(url)
        if found is None:
            if len(self._routes) >= 256:  # an upstream's few paths; bounded all the same
                self._routes.clear()
            try:
                proxy = environment_proxy(url)
            except ValueError as exc:  # a URL that cannot be parsed (an unclosed IPv6 bracket)
                raise httpx.UnsupportedProtocol(f"cannot use {url!r}: {exc}") from exc
            found = self._routes[url] = (proxy, proxy is None and serves(url))
        return found

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        session, owned = self._session_for()
        timeout, url = request.extensions.get("timeout", {}), str(request.url)
        try:
            with httpx_errors():
                response = await session.request(
                    request.method,
                    url,
                    headers=request.headers.multi_items(),
                    data=await request.aread() or None,
                    allow_redirects=False,
                    timeout=self._timeout(timeout),
                    proxy=self._route(url)[0],
                )
        except BaseException:
            if owned:
                await session.close()
            raise
        body = _Body(response, session if owned else None)
        return httpx.Response(response.status, headers=response.raw_headers, stream=body, request=request)

    async def post(self, url: str, headers: Mapping[str, str], body: bytes, timeout: Mapping[str, Any]) -> Answer:
        """A POST answered whole, without httpx's request object and response: the engines' per-row request
        (``_Upstream.send``). The same request as through :meth:`handle_async_request`. To an ``http://`` upstream
        with no proxy it goes over :class:`~spcs_llm.engines.h1.H1Pool` (half the CPU of aiohttp's request);
        otherwise over aiohttp."""
        proxy, lean = self._route(url)
        if lean:
            status, content = await (self._h1 or self._open_h1()).post(url, headers, body, timeout)
            return Answer(status, content)
        session, owned = self._session_for()
        try:
            with httpx_errors():
                async with session.post(
                    url,
                    data=body,
                    headers=headers,
                    allow_redirects=False,
                    timeout=self._timeout(timeout),
                    proxy=proxy,
                ) as response:
                    return Answer(response.status, await response.read())
        finally:
            if owned:
                await session.close()

    def _open_h1(self) -> H1Pool:
        self._h1 = H1Pool(self.max_connections, KEEPALIVE_S)
        return self._h1

    def _timeout(self, timeout: Mapping[str, Any]) -> aiohttp.ClientTimeout:
        """httpx's timeouts as aiohttp's: pool (aiohttp's ``connect`` is the wait for a pooled connection, a new
        one's set-up included), connect, and read (no byte for that long); none for the whole request."""
        key = (timeout.get("pool"), timeout.get("connect"), timeout.get("read"))
        found = self._timeouts.get(key)
        if found is None:
            found = self._timeouts[key] = aiohttp.ClientTimeout(
                total=None, connect=key[0], sock_connect=key[1], sock_read=key[2]
            )
        return found

    async def aclose(self) -> None:
        self._closed = True
        # kept, closed (made closed when none was open): a row still running closes its connection when done
        (self._h1 or self._open_h1()).close()
        if self._session is not None:
            await self._session.close()
            self._session = None
